"""The torch-free text search path gives open_clip's results, and a search never loads torch: for a
CLIP text tower and for a Hugging Face one (a tiny XLM-RoBERTa CLIP, searched in Chinese)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cliptool.models.clip import ClipModel, TEXTENC_DIR, TEXTENC_MARKER
from cliptool.models.spec import ModelSpec
from cliptool.index.indexer import index_paths
from cliptool.search.searcher import Searcher

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


def test_onnx_text_path_matches_open_clip(indexed: tuple[Path, ModelSpec]) -> None:
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
    """"numpy" (one query: nothing prepared at start) and "onnxruntime" (weights packed once)
    run the same ONNX tower and give the same vectors."""
    index_dir, _ = indexed
    plain = Searcher(index_dir)
    fast = Searcher(index_dir, text_runtime="onnxruntime")
    for query in QUERIES[:3]:
        v_plain, v_fast = plain.text_vector(query), fast.text_vector(query)
        np.testing.assert_allclose(v_fast, v_plain, atol=1e-6)
    assert plain.exported_text_encoder().runtime == fast.exported_text_encoder().runtime == "onnxruntime"  # type: ignore[union-attr]
    assert not plain.exported_text_encoder().prepacked and fast.exported_text_encoder().prepacked  # type: ignore[union-attr]


def test_an_index_run_replaces_the_numpy_export_of_an_older_cliptool(indexed: tuple[Path, ModelSpec],
                                                                      tmp_path: Path) -> None:
    """An index from before the ONNX text path holds the numpy encoder (textenc/ and its marker):
    search falls back to open_clip until an index run writes the ONNX export, which removes it."""
    import shutil

    index_dir, spec = indexed
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    shutil.rmtree(copy / TEXTENC_DIR)
    (copy / TEXTENC_MARKER).unlink()
    (copy / "textenc").mkdir()
    (copy / "textenc" / "textenc.json").write_text("{}")
    (copy / "textenc-model.json").write_text(json.dumps({"model_identity": spec.resolved().identity()}))
    assert Searcher(copy).exported_text_encoder() is None
    assert ClipModel(spec).export_text_encoder(copy)
    assert not (copy / "textenc").exists() and not (copy / "textenc-model.json").exists()
    assert Searcher(copy).exported_text_encoder() is not None


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


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory: pytest.TempPathFactory, sample_clips: dict[str, Path]) -> tuple[Path, list[str]]:
    """The sample clips indexed by `cliptool index` (in this process, where torch and transformers
    are loaded already) with the tiny XLM-R CLIP (config + weights)."""
    from conftest import data_module, ok, run_here

    root = tmp_path_factory.mktemp("multilingual")
    config, ckpt = data_module("tiny_multilingual").write_tiny_multilingual_model(root / "model")
    model_args = ["--model", str(config), "--pretrained", str(ckpt)]
    index_dir = root / "index"
    ok(run_here(index_dir, "index", *map(str, sample_clips.values()), *model_args))
    return index_dir, model_args


def test_a_hugging_face_text_tower_is_searched_in_chinese_on_the_fast_path(multilingual: tuple[Path, list[str]]) -> None:
    index_dir, model_args = multilingual
    assert json.loads((index_dir / TEXTENC_DIR / "textenc.json").read_text())["tokenizer"]["type"] == "hf"
    query = "公园里的狗"
    code = (
        "import sys\n"
        "from cliptool.cli import app\n"
        "try:\n"
        f"    app(['--index-dir', {str(index_dir)!r}, 'search', {query!r}, '--json'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "heavy = sorted(m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr and "slower path" not in proc.stderr, proc.stderr
    fast_hits = json.loads(proc.stdout)["results"]
    # the same query through open_clip (torch, transformers) ranks the same scenes, equal scores
    fast = Searcher(index_dir)
    slow = Searcher(index_dir)
    slow.use_exported_text_encoder = False
    spec = ModelSpec(model_args[1], model_args[3])
    for text in (query, "a dog in a park", "红色的圆圈"):
        v_fast = fast.text_vector(text)
        np.testing.assert_allclose(v_fast, ClipModel(spec.with_precision("fp32")).encode_text([text])[0], atol=1e-4)
        hits_fast, hits_slow = fast.search(v_fast, top=8), slow.search(slow.text_vector(text), top=8)
        assert [h.scene_id for h in hits_fast] == [h.scene_id for h in hits_slow]
        np.testing.assert_allclose([h.score for h in hits_fast], [h.score for h in hits_slow], atol=1e-4)
    assert [r["scene_id"] for r in fast_hits] == [h.scene_id for h in fast.search(fast.text_vector(query), top=10)]


def test_multilingual_is_a_short_name_for_the_xlm_roberta_model() -> None:
    import open_clip

    from cliptool.api import model_spec

    spec = model_spec("multilingual")
    assert (spec.name, spec.pretrained) == ("xlm-roberta-base-ViT-B-32", "laion5b_s13b_b90k")
    assert spec.pretrained in open_clip.list_pretrained_tags_by_model(spec.name)
    assert "hf_model_name" in open_clip.get_model_config(spec.name)["text_cfg"]  # a Hugging Face text tower
    assert model_spec("multilingual", "/weights/xlmr.bin").pretrained == "/weights/xlmr.bin"
    assert model_spec("ViT-B-32").name == "ViT-B-32"
