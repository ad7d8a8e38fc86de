"""A model that cannot be loaded says why, in one line; loading changes no process-wide state
and asks the network only when weights must be downloaded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cliptool.models.clip import ClipModel
from cliptool.models.spec import ModelSpec
from cliptool.errors import ModelUnavailableError

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, name: str, tiny_model: tuple[Path, Path], **changes: dict) -> Path:
    """A copy of the tiny model's config under a name of its own, with sections updated."""
    cfg = json.loads(tiny_model[0].read_text())
    for section, values in changes.items():
        cfg[section] = {**cfg[section], **values}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def _load_error(spec: ModelSpec) -> str:
    with pytest.raises(ModelUnavailableError) as info:
        ClipModel(spec).wait()
    message = str(info.value)
    assert "\n" not in message and len(message) < 800, message
    return message


def test_a_config_with_a_bad_field_is_named_as_the_cause(tmp_path: Path, tiny_model: tuple[Path, Path]) -> None:
    cfg = _config(tmp_path, "TinyBadFieldCLIP", tiny_model, vision_cfg={"patch_sise": 16})
    message = _load_error(ModelSpec(str(cfg), str(tiny_model[1]), "fp32"))
    assert f"cannot be built from its config {cfg}" in message and "patch_sise" in message, message
    assert "checkpoint" not in message, message  # the weights are fine


def test_a_truncated_checkpoint_is_named_as_the_cause(tmp_path: Path, tiny_model: tuple[Path, Path]) -> None:
    data = tiny_model[1].read_bytes()
    cut = tmp_path / "tiny-cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    message = _load_error(ModelSpec(str(tiny_model[0]), str(cut), "fp32"))
    assert str(cut) in message and "damaged, truncated or not a model checkpoint" in message, message


def test_weights_of_another_model_are_named_as_the_cause(tmp_path: Path, tiny_model: tuple[Path, Path]) -> None:
    import torch

    other = tmp_path / "other.pt"
    torch.save({"some.layer.weight": torch.zeros(3, 3)}, other)
    message = _load_error(ModelSpec(str(tiny_model[0]), str(other), "fp32"))
    assert f"checkpoint {other} does not fit model TinyCLIP" in message and "Missing key" in message, message


def test_an_unknown_tag_or_model_is_named_without_asking_the_network(network: list) -> None:
    message = _load_error(ModelSpec("ViT-B-32", "no_such_tag", "fp32"))
    assert message.startswith("no pretrained weights 'no_such_tag' for ViT-B-32 (known tags: ") and "openai" in message
    assert "unknown model 'NoSuchNet-9'" in _load_error(ModelSpec("NoSuchNet-9", "openai", "fp32"))
    assert network == []  # nothing to download: no probe
    assert "HF_HUB_OFFLINE" not in os.environ


def test_a_missing_package_is_named(monkeypatch: pytest.MonkeyPatch, tiny_model: tuple[Path, Path]) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # `import open_clip` now fails
    message = _load_error(ModelSpec(str(tiny_model[0]), str(tiny_model[1]), "fp32"))
    assert "the Python package 'open_clip' is missing or broken" in message, message
    assert "pip install 'cliptool[torch]'" in message, message


def test_running_out_of_memory_is_named(tmp_path: Path, tiny_model: tuple[Path, Path]) -> None:
    """A text tower of width 2**24 asks for a 3.3 TB embedding; in a child whose address space
    is limited to 16 GiB the allocation is refused at once (nothing is touched)."""
    cfg = _config(tmp_path, "TinyHugeCLIP", tiny_model, text_cfg={"width": 1 << 24})
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (16 << 30, 16 << 30))\n"
        "from cliptool.models.clip import ClipModel\n"
        "from cliptool.models.spec import ModelSpec\n"
        "from cliptool.errors import ModelUnavailableError\n"
        "try:\n"
        "    ClipModel(ModelSpec(sys.argv[1], sys.argv[2], 'fp32')).wait()\n"
        "except ModelUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(cfg), str(tiny_model[1])], capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    message = proc.stdout.strip()
    assert "\n" not in message and "cannot build model TinyHugeCLIP: not enough memory" in message, message


# -- pretrained tags: the local HF cache first, the network only for a download ---------------


@pytest.fixture
def tagged(tmp_path: Path, tiny_model: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(config, HF cache) of a model with two pretrained tags: "cached", whose weights are in
    the HF cache, and "elsewhere", whose weights are not."""
    from huggingface_hub import constants
    from open_clip import pretrained

    cfg = _config(tmp_path, "TinyTagCLIP", tiny_model)
    hub = tmp_path / "hub"
    repo = hub / "models--cliptool--tiny-weights"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123456789abcdef")
    snapshot = repo / "snapshots" / "0123456789abcdef"
    snapshot.mkdir(parents=True)
    shutil.copyfile(tiny_model[1], snapshot / "open_clip_pytorch_model.bin")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setitem(pretrained._PRETRAINED, "TinyTagCLIP", {
        "cached": {"url": "", "hf_hub": "cliptool/tiny-weights/", "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)},
        "elsewhere": {"url": "", "hf_hub": "cliptool/not-downloaded/"},
    })
    return cfg, hub


def test_cached_tag_weights_load_without_the_network(tagged: tuple[Path, Path], network: list,
                                                     tiny_model: tuple[Path, Path]) -> None:
    import numpy as np

    cfg, _ = tagged
    model = ClipModel(ModelSpec(str(cfg), "cached", "fp32")).wait()
    assert network == []  # weights in the cache: no probe, no download
    assert "HF_HUB_OFFLINE" not in os.environ
    np.testing.assert_allclose(model._mean, 0.5)  # the tag's preprocessing, as open_clip applies it
    np.testing.assert_allclose(model._std, 0.25)
    same_weights = ClipModel(ModelSpec(str(tiny_model[0]), str(tiny_model[1]), "fp32"))
    np.testing.assert_allclose(model.encode_text(["a red circle"]), same_weights.encode_text(["a red circle"]),
                               atol=1e-6)


def test_uncached_tag_weights_say_the_network_is_unreachable(tagged: tuple[Path, Path], network: list) -> None:
    cfg, _ = tagged
    message = _load_error(ModelSpec(str(cfg), "elsewhere", "fp32"))
    assert message.startswith("pretrained weights TinyTagCLIP/elsewhere are not in the local cache and "
                              "huggingface.co cannot be reached (no network?)"), message
    assert "--pretrained" in message
    assert network == [("huggingface.co", 443)]  # asked once, because a download was needed
    assert "HF_HUB_OFFLINE" not in os.environ


def test_uncached_tag_weights_in_offline_mode_say_so(tagged: tuple[Path, Path], network: list,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _ = tagged
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = _load_error(ModelSpec(str(cfg), "elsewhere", "fp32"))
    assert "are not in the local cache and HF_HUB_OFFLINE is set" in message, message
    assert network == []


def test_loading_leaves_process_settings_as_they_were(tiny_model: tuple[Path, Path]) -> None:
    import logging

    root = logging.getLogger()
    before = (root.level, list(root.handlers), sys.getswitchinterval(), os.environ.get("OMP_WAIT_POLICY"),
              os.environ.get("HF_HUB_OFFLINE"))
    model = ClipModel(ModelSpec(str(tiny_model[0]), str(tiny_model[1]), "fp32"), background=True).wait()
    model.encode_text(["a dog"])
    assert (root.level, list(root.handlers), sys.getswitchinterval(), os.environ.get("OMP_WAIT_POLICY"),
            os.environ.get("HF_HUB_OFFLINE")) == before


# -- the command line ---------------------------------------------------------------------------


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == ModelUnavailableError.exit_code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("cliptool: error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_index_with_a_bad_config_exits_with_one_line(cli_here, tmp_path: Path, sample_clips: dict[str, Path],
                                                      tiny_model: tuple[Path, Path]) -> None:
    """Through the CLI in this process (open_clip is loaded here once; the next test's command
    runs in a new process)."""
    cfg = _config(tmp_path, "TinyBadFieldCLIP", tiny_model, vision_cfg={"patch_sise": 16})
    clip = next(iter(sample_clips.values()))
    proc = cli_here("index", clip, "--model", cfg, "--pretrained", tiny_model[1], "--precision", "fp32")
    assert "cannot be built from its config" in _one_line_error(proc)


def test_index_with_a_missing_package_exits_with_one_line(cli, tmp_path: Path, sample_clips: dict[str, Path],
                                                          tiny_model: tuple[Path, Path]) -> None:
    """A dependency of open_clip (ftfy) that is not installed: a module on the path that
    raises what Python raises for a missing module."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "ftfy.py").write_text('raise ModuleNotFoundError("No module named \'ftfy\'", name="ftfy")\n')
    clip = next(iter(sample_clips.values()))
    env = {"PYTHONPATH": os.pathsep.join([str(shadow), str(REPO)]), "CLIPTOOL_CACHE_DIR": str(tmp_path / "cache")}
    proc = cli("index", clip, "--model", tiny_model[0], "--pretrained", tiny_model[1], env=env)
    line = _one_line_error(proc)
    assert "the Python package 'ftfy' is missing or broken" in line and "pip install ftfy" in line, line
