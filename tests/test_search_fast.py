"""The torch-free text search path gives open_clip's results, and a search never loads torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cliptool.embed import TEXTENC_DIR, TEXTENC_MARKER, ClipModel, ModelSpec
from cliptool.indexer import index_paths
from cliptool.search import Searcher

QUERIES = ["a red circle", "blue sky over the sea", "Title card: THE END!", "x", "a photo of a cat " * 20]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, sample_clips: dict[str, Path],
            tiny_model: tuple[Path, Path]) -> tuple[Path, ModelSpec]:
    index_dir = tmp_path_factory.mktemp("fast") / "index"
    spec = ModelSpec(str(tiny_model[0]), str(tiny_model[1]))
    summary = index_paths(list(sample_clips.values()), index_dir, spec, report=lambda m: None, progress=False)
    assert summary.added == len(sample_clips) and not summary.failed
    return index_dir, spec


def test_index_exports_the_text_encoder(indexed: tuple[Path, ModelSpec]) -> None:
    index_dir, _ = indexed
    assert (index_dir / TEXTENC_DIR / "textenc.json").is_file()
    marker = json.loads((index_dir / TEXTENC_MARKER).read_text())
    searcher = Searcher(index_dir)
    assert marker["model_identity"] == searcher.vectors.meta["model_identity"]
    assert searcher.exported_text_encoder() is not None


def test_numpy_text_path_matches_open_clip(indexed: tuple[Path, ModelSpec]) -> None:
    index_dir, spec = indexed
    fast = Searcher(index_dir)
    slow = Searcher(index_dir)
    slow.use_exported_text_encoder = False
    reference = ClipModel(spec)
    for query in QUERIES:
        v_fast = fast.text_vector(query)
        v_ref = reference.encode_text([query.strip()])[0]
        assert v_fast.dtype == np.float32 and v_fast.shape == v_ref.shape
        np.testing.assert_allclose(v_fast, v_ref, atol=1e-4)
        hits_fast = fast.search(v_fast, top=8)
        hits_slow = slow.search(slow.text_vector(query), top=8)
        assert [h.scene_id for h in hits_fast] == [h.scene_id for h in hits_slow]
        np.testing.assert_allclose([h.score for h in hits_fast], [h.score for h in hits_slow], atol=1e-4)
        assert [h.best_time for h in hits_fast] == [h.best_time for h in hits_slow]


def test_the_text_runtime_is_the_searchers_choice(indexed: tuple[Path, ModelSpec]) -> None:
    """numpy stays numpy however many queries; ONNX Runtime runs from the first query; both give
    the same vectors and hits."""
    index_dir, _ = indexed
    plain = Searcher(index_dir)
    fast = Searcher(index_dir, text_runtime="onnxruntime")
    for query in QUERIES[:3]:
        v_plain, v_fast = plain.text_vector(query), fast.text_vector(query)
        np.testing.assert_allclose(v_fast, v_plain, atol=1e-5)
        assert [h.scene_id for h in fast.search(v_fast, top=8)] == [h.scene_id for h in plain.search(v_plain, top=8)]
    assert plain.exported_text_encoder().runtime == "numpy"  # type: ignore[union-attr]
    assert fast.exported_text_encoder().runtime == "onnxruntime"  # type: ignore[union-attr]


def test_search_falls_back_to_open_clip_without_a_usable_export(indexed: tuple[Path, ModelSpec], tmp_path: Path) -> None:
    import shutil

    index_dir, _ = indexed
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    expected = [h.scene_id for h in Searcher(copy).search(Searcher(copy).text_vector("a red circle"), top=5)]
    (copy / TEXTENC_MARKER).write_text(json.dumps({"model_identity": "another model"}))
    searcher = Searcher(copy)
    assert searcher.exported_text_encoder() is None
    assert [h.scene_id for h in searcher.search(searcher.text_vector("a red circle"), top=5)] == expected


def test_text_search_in_a_new_process_does_not_import_torch(indexed: tuple[Path, ModelSpec]) -> None:
    index_dir, _ = indexed
    code = (
        "import sys\n"
        "from cliptool.cli import app\n"
        "try:\n"
        f"    app(['--index-dir', {str(index_dir)!r}, 'search', 'a red circle', '--json'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'cv2', 'av', 'plyvel') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert results and results[0]["rank"] == 1
