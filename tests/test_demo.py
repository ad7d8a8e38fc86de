"""`make demo` as a newcomer meets it, offline (the toy CLIP): every step runs, a picture search
among them, and it ends with the exact commands to go on with, which work when pasted."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def test_the_offline_demo_ends_with_commands_that_work(tmp_path: Path) -> None:
    if not (REPO / "data" / "toy-clip" / "weights.safetensors").is_file():
        pytest.skip("the toy CLIP is not in data/toy-clip")
    samples, index_dir = tmp_path / "samples", tmp_path / "demo-index"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, REPO / "data" / "make_samples.py", samples], check=True, capture_output=True,
                   env=env)
    proc = subprocess.run([sys.executable, REPO / "data" / "demo.py", samples, index_dir], capture_output=True,
                          text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    offline = tmp_path / "demo-index-offline"
    assert "using the toy CLIP" in out and offline.is_dir()
    echoed = [line[2:] for line in out.splitlines() if line.startswith("$ ")]
    assert any(" search --image " in line for line in echoed), echoed  # a picture search, offline too
    assert all(f"--index-dir {shlex.quote(str(offline))}" in line for line in echoed[1:]), echoed
    tail = out[out.index("The demo's index is"):]
    assert str(offline) in tail.splitlines()[0]
    pasted = [line.strip().split("  #")[0] for line in tail.splitlines()[1:] if " search " in line]
    assert len(pasted) == 1 and "'a yellow star'" in pasted[0]
    argv = shlex.split(pasted[0])
    cmd = [sys.executable, "-m", "cliptool", *argv[1:]] if argv[0].endswith("cliptool") else argv
    found = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert found.returncode == 0 and "garden-shapes.mp4" in found.stdout.splitlines()[1], found.stdout + found.stderr
