"""Shared fixtures: the seeded tiny open_clip model, synthetic clips, real test media, a CLI runner."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# A test run started in the background by a shell without job control inherits SIGINT ignored,
# and so would every cliptool it starts (Python installs its Ctrl-C handler only where SIGINT is
# not ignored): the tests that press Ctrl-C need it delivered.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "testdata"


def data_module(name: str) -> Any:
    """A script module of data/ (make_samples, toy_world, toy_videos), loaded once by file."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "data" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


make_samples = data_module("make_samples")


def shared(*parts: str) -> Path:
    """A file of ../shared/testdata; skips the test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not present: {path}")
    return path


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """A cache directory of the test session's own (exported int8 image towers), for every
    cliptool call, in-process or in a subprocess."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("CLIPTOOL_CACHE_DIR")
    os.environ["CLIPTOOL_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CLIPTOOL_CACHE_DIR", None)
    else:
        os.environ["CLIPTOOL_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(config JSON, checkpoint) of a small CLIP with seeded random weights, loaded like user weights."""
    return make_samples.write_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def model_args(tiny_model: tuple[Path, Path]) -> list[str]:
    config, ckpt = tiny_model
    return ["--model", str(config), "--pretrained", str(ckpt)]


@pytest.fixture(scope="session")
def sample_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The quick start's synthetic sample clips (known content and cuts)."""
    out = tmp_path_factory.mktemp("samples")
    clips = {}
    for name, segments in make_samples.SAMPLES.items():
        clips[name] = out / name
        make_samples.write_clip(clips[name], segments)
    return clips


@pytest.fixture
def folder(tmp_path: Path, sample_clips: dict[str, Path]) -> Path:
    """A fresh copy of the synthetic sample clips."""
    out = tmp_path / "videos"
    out.mkdir()
    for name, src in sample_clips.items():
        shutil.copy2(src, out / name)
    return out


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return tmp_path / "index"


CliRun = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def cli(index_dir: Path) -> CliRun:
    """Runs `python -m cliptool ARGS` in a fresh process against the test's index directory."""

    def run(*args: str, check: bool = False, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        full_env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1", **(env or {})}
        proc = subprocess.run(
            [sys.executable, "-m", "cliptool", *map(str, args)],
            capture_output=True, text=True, timeout=timeout, env=full_env,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"cliptool {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
        return proc

    return run


@pytest.fixture
def cli_here(index_dir: Path) -> CliRun:
    """`cliptool ARGS` against the test's index directory through the CLI app in this process
    (`run_here`): open_clip and torch, loaded here once, are not loaded again per command."""

    def run(*args: object) -> subprocess.CompletedProcess:
        return run_here(index_dir, *args)

    return run


def run(index_dir: Path, *args: object) -> subprocess.CompletedProcess:
    """`python -m cliptool ARGS` in a fresh process against `index_dir`."""
    return subprocess.run([sys.executable, "-m", "cliptool", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1"})


def run_here(index_dir: Path, *args: object) -> subprocess.CompletedProcess:
    """`cliptool --index-dir INDEX_DIR ARGS` through the same command-line app, in this process:
    the exit code, stdout and stderr as `run` gives them, without an interpreter start-up and
    its imports per call. For many quick commands on one index (searches, their usage errors);
    what only a fresh process shows (imports, signals, start-up) stays with `run`. The
    environment a command sets for its process (--text-precision, --vector-store) is put back
    afterwards, as the end of a real process would drop it."""
    from cliptool.cli import app

    argv = ["--index-dir", str(index_dir), *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                app(argv, prog_name="cliptool")
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(["cliptool", *argv], code, out.getvalue(), err.getvalue())


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr
    return proc


def one_line_error(proc: subprocess.CompletedProcess, code: int, needle: str) -> None:
    """Exit `code` with exactly one line on stderr, a cliptool error that mentions `needle`."""
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cliptool: error: ") and needle in lines[0], proc.stderr


def run_json(cli: CliRun, *args: str) -> dict:
    proc = cli(*args, "--json", check=True)
    return json.loads(proc.stdout)


@pytest.fixture
def network(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every connection attempt (host, port); none succeeds. No HF_HUB_OFFLINE in force."""
    import socket

    from huggingface_hub import constants

    attempts: list[tuple[str, int]] = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return attempts


@pytest.fixture(scope="module")
def driver():
    """A headless Chromium (1280x1100) for the real-browser tests; they skip without one."""
    from cliptool.bench.serve import chromium_driver

    try:
        d = chromium_driver(1280, 1100)
    except Exception as exc:  # noqa: BLE001 - a driver that will not start is a missing browser here
        pytest.skip(f"headless Chromium would not start: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    if d is None:
        pytest.skip("no chromium and chromedriver found (apt-get install chromium chromium-driver)")
    d.set_script_timeout(30)
    yield d
    d.quit()
