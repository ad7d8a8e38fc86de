"""A text tower the fast (ONNX) path cannot run is remembered, said once, and not tried again:
a later index run needs neither torch nor open_clip, and search says it uses the slower path."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cliptool.models import text as textenc
from cliptool.models.clip import TEXTENC_MARKER, fast_text_unavailable, warn_slow_text_path
from cliptool.models.spec import ModelSpec

REPO = Path(__file__).resolve().parents[1]
NOTE = "the fast text search path cannot run"


@pytest.fixture(scope="module")
def masked_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config, checkpoint) of the tiny model whose tokenizer picks tokens by a reduction mask:
    open_clip runs it, the exporter rejects it (no torch-free tokenizer does that)."""
    import logging

    import open_clip
    import torch

    from conftest import make_samples

    out = tmp_path_factory.mktemp("reduction-mask")
    cfg = dict(make_samples.TINY_CONFIG)
    cfg["text_cfg"] = {**cfg["text_cfg"], "tokenizer_kwargs": {"reduction_mask": "simple"}}
    config = out / "TinyMaskedCLIP.json"
    config.write_text(json.dumps(cfg))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    logging.disable(logging.WARNING)  # "initialized randomly"
    try:
        model = open_clip.create_model("TinyMaskedCLIP", pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    ckpt = out / "masked.pt"
    torch.save(model.state_dict(), ckpt)
    return config, ckpt


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, masked_model: tuple[Path, Path],
         sample_clips: dict[str, Path]) -> dict:
    """Two index runs, each in a new process, on two indexes sharing a fresh user cache: the
    first exports the int8 image tower and meets the text tower; the second reports which of
    torch and open_clip it imported."""
    root = tmp_path_factory.mktemp("text-export")
    cache = root / "cache"
    env = {**os.environ, "CLIPTOOL_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    clips = sorted(sample_clips.values())
    model = ["--model", str(masked_model[0]), "--pretrained", str(masked_model[1])]
    code = (
        "import sys\n"
        "from cliptool.cli import app\n"
        "try:\n"
        "    app(sys.argv[1:])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "print('IMPORTED', sorted(m for m in ('torch', 'open_clip') if m in sys.modules), file=sys.stderr)\n"
    )
    procs = []
    for n, clip in enumerate(clips[:2]):
        args = ["--index-dir", str(root / f"index{n}"), "index", str(clip), *model]
        procs.append(subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                                    timeout=300, env=env))
        assert procs[-1].returncode == 0, procs[-1].stderr
    return {"root": root, "cache": cache, "env": env, "first": procs[0], "second": procs[1]}


def test_first_run_says_once_why_the_fast_text_path_is_not_available(runs: dict) -> None:
    notes = [line for line in runs["first"].stderr.splitlines() if NOTE in line]
    assert len(notes) == 1, runs["first"].stderr
    assert "TinyMaskedCLIP" in notes[0] and "reduction mask" in notes[0] and "open_clip" in notes[0], notes
    assert not (runs["root"] / "index0" / TEXTENC_MARKER).exists()  # nothing exported


def test_the_rejection_is_recorded_for_the_model_and_the_exporter_version(
        runs: dict, masked_model: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPTOOL_CACHE_DIR", str(runs["cache"]))
    spec = ModelSpec(str(masked_model[0]), str(masked_model[1]))
    reason = fast_text_unavailable(spec)
    assert reason is not None and "reduction mask" in reason
    assert fast_text_unavailable(spec.with_precision("fp32")) == reason  # text is fp32 at every precision
    markers = list((runs["cache"] / "text-towers").glob("*.unsupported.json"))
    assert len(markers) == 1 and json.loads(markers[0].read_text())["exporter_version"] == textenc.EXPORTER_VERSION
    monkeypatch.setattr(textenc, "EXPORTER_VERSION", textenc.EXPORTER_VERSION + 1)
    assert fast_text_unavailable(spec) is None  # a newer exporter tries again


def test_a_later_run_does_not_try_again_nor_load_torch(runs: dict) -> None:
    second = runs["second"].stderr
    assert NOTE not in second, second  # said once, on the run that failed
    assert "IMPORTED []" in second, second  # int8 tower cached, text export skipped: no torch, no open_clip


def test_search_uses_open_clip_and_says_so_once(runs: dict, masked_model: tuple[Path, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    proc = subprocess.run([sys.executable, "-m", "cliptool", "--index-dir", str(runs["root"] / "index1"),
                           "search", "a red circle", "--json"], capture_output=True, text=True, timeout=300,
                          env=runs["env"])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"]
    assert len([line for line in proc.stderr.splitlines() if "slower path" in line]) == 1, proc.stderr
    # the line search says (cliptool.search calls this when it falls back to open_clip)
    monkeypatch.setenv("CLIPTOOL_CACHE_DIR", str(runs["cache"]))
    spec = ModelSpec(str(masked_model[0]), str(masked_model[1]))
    out = io.StringIO()
    warn_slow_text_path(spec, out)
    warn_slow_text_path(spec, out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "slower path" in lines[0] and "reduction mask" in lines[0], lines
