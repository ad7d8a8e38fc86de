"""The fast paths compute what the plain ones do: the pipelined analysis (embedding in a
background thread, model loading in the background, batches of any size), the streamed cache
build, and bf16 and int8 staying close to fp32."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cliptool.durable import VERIFIED_STAMP
from cliptool.analysis.analyse import analyse_video
from cliptool.config import IndexOptions
from cliptool.media.decode import VideoReader, to_rgb
from cliptool.models.clip import ClipModel, TEXTENC_DIR
from cliptool.models.spec import ModelSpec
from cliptool.analysis.sample import SceneCutter


@pytest.fixture(scope="module")
def fp32_model(tiny_model: tuple[Path, Path]) -> ClipModel:
    return ClipModel(ModelSpec(str(tiny_model[0]), str(tiny_model[1]), "fp32"))


def _reference_vectors(path: Path, model: ClipModel, frames: list[int]) -> np.ndarray:
    """Sequential reference: decode every frame, embed each wanted one alone."""
    wanted = set(frames)
    found = {}
    with VideoReader(path) as reader:
        for frame in reader.frames():
            if frame.index in wanted:
                found[frame.index] = model.encode_preprocessed(model.preprocess_views(to_rgb(frame.av_frame)))
    return np.concatenate([found[i] for i in frames])  # each frame's views, in order


@pytest.mark.parametrize("batch_size", [1, 5, 32])
def test_pipelined_analysis_matches_one_by_one_embedding(sample_clips: dict[str, Path], fp32_model: ClipModel,
                                                          batch_size: int) -> None:
    path = next(iter(sample_clips.values()))
    base = analyse_video(path, fp32_model, IndexOptions())
    got = analyse_video(path, fp32_model, replace(IndexOptions(), batch_size=batch_size))
    assert [(s.start_frame, s.end_frame, s.sample_frames) for s in got.scenes] == \
        [(s.start_frame, s.end_frame, s.sample_frames) for s in base.scenes]
    frames = [f for s in got.scenes for f in s.sample_frames]
    ref = _reference_vectors(path, fp32_model, frames)
    mine = np.concatenate([v.frames for v in got.vectors])
    np.testing.assert_allclose(mine, ref, atol=1e-5)
    for v in got.vectors:
        mean = v.frames.mean(axis=0)
        np.testing.assert_allclose(v.scene, mean / np.linalg.norm(mean), atol=1e-6)


def test_int8_vectors_do_not_depend_on_decoding_speed(tmp_path: Path, tiny_model: tuple[Path, Path]) -> None:
    """The int8 tower quantises a batch's activations together, so the batches must not depend
    on how fast frames arrive: a run with a slow decoder gives the same vectors, bit for bit."""
    import time

    from conftest import make_samples

    int8 = ClipModel(ModelSpec(str(tiny_model[0]), str(tiny_model[1]), "int8"))
    colours = [(220, 30, 30), (30, 60, 220), (30, 200, 30), (200, 200, 30), (200, 30, 200), (30, 200, 200)]
    path = tmp_path / "shots.mp4"
    make_samples.write_clip(path, [
        (make_samples.circle(c, (250, 250, 250)) if i % 2 else make_samples.stripes((0, 0, 0), c), 40)
        for i, c in enumerate(colours)], size=(96, 64))  # 6 shots: more sample frames than a batch
    options = replace(IndexOptions(), batch_size=16)
    fast = analyse_video(path, int8, options)
    slow = analyse_video(path, int8, options, on_frame=lambda _t: time.sleep(0.004))  # the queue runs dry
    assert len(fast.vectors) == len(slow.vectors) and sum(len(v.frames) for v in fast.vectors) > 16
    for a, b in zip(fast.vectors, slow.vectors):
        assert np.array_equal(a.frames, b.frames)


def test_background_model_load_gives_the_same_vectors(sample_clips: dict[str, Path], tiny_model: tuple[Path, Path],
                                                      fp32_model: ClipModel) -> None:
    path = next(iter(sample_clips.values()))
    spec = ModelSpec(str(tiny_model[0]), str(tiny_model[1]), "fp32")
    background = ClipModel(spec, background=True)  # analysis starts while it loads
    a = analyse_video(path, background, IndexOptions())
    b = analyse_video(path, fp32_model, IndexOptions())
    np.testing.assert_allclose(np.stack([v.scene for v in a.vectors]), np.stack([v.scene for v in b.vectors]), atol=1e-5)


def test_bf16_stays_close_to_fp32(sample_clips: dict[str, Path], tiny_model: tuple[Path, Path],
                                  fp32_model: ClipModel) -> None:
    bf16 = ClipModel(ModelSpec(str(tiny_model[0]), str(tiny_model[1]), "bf16"))
    assert bf16.spec.identity() != fp32_model.spec.identity()  # precision is part of the identity
    frames = []
    for path in sample_clips.values():
        with VideoReader(path) as reader:
            frames += [to_rgb(f.av_frame) for f in reader.frames() if f.index % 10 == 0]
    a, b = bf16.encode_images(frames), fp32_model.encode_images(frames)
    cos = np.sum(a * b, axis=1)
    assert cos.min() > 0.98, cos.min()
    # text is always encoded in fp32
    np.testing.assert_allclose(bf16.encode_text(["a cat"]), fp32_model.encode_text(["a cat"]), atol=1e-6)


def _photos_and_frames(sample_clips: dict[str, Path]) -> list[np.ndarray]:
    import cv2

    from conftest import SHARED

    images = []
    for path in sample_clips.values():
        with VideoReader(path) as reader:
            images += [to_rgb(f.av_frame) for f in reader.frames() if f.index % 10 == 0]
    for photo in sorted((SHARED / "images").glob("*.*"))[:8] if (SHARED / "images").is_dir() else []:
        images.append(cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB))
    return images


def test_int8_stays_close_to_fp32_and_ranks_alike(sample_clips: dict[str, Path], tiny_model: tuple[Path, Path],
                                                  fp32_model: ClipModel) -> None:
    int8 = ClipModel(ModelSpec(str(tiny_model[0]), str(tiny_model[1]), "int8"))
    assert int8.spec.identity() not in (fp32_model.spec.identity(),
                                        replace(fp32_model.spec, precision="bf16").identity())
    images = _photos_and_frames(sample_clips)
    a, b = int8.encode_images(images), fp32_model.encode_images(images)
    # Random weights are a poor measure of closeness: their activations have outliers that the
    # dynamic int8 ranges clip (cosines of 0.88-0.93 on a few frames with today's packages), so
    # they only show that the tower computes the same function; trained weights show closeness.
    cos = np.sum(a * b, axis=1)
    assert np.median(cos) > 0.98 and cos.min() > 0.8, (np.median(cos), cos.min())
    np.testing.assert_allclose(int8.encode_text(["a cat"]), fp32_model.encode_text(["a cat"]), atol=1e-6)
    # The committed toy CLIP (trained): every image stays within 1e-3 of fp32, and each image as
    # a query against the fp32 vectors of all finds itself (or an identical frame: the sample
    # clips hold still segments) first.
    toy = Path(__file__).resolve().parents[1] / "data" / "toy-clip"
    toy_int8 = ClipModel(ModelSpec(str(toy / "config.json"), str(toy / "weights.safetensors"), "int8"))
    toy_fp32 = ClipModel(ModelSpec(str(toy / "config.json"), str(toy / "weights.safetensors"), "fp32"))
    a, b = toy_int8.encode_images(images), toy_fp32.encode_images(images)
    cos = np.sum(a * b, axis=1)
    assert cos.min() > 0.999, cos.min()
    first = np.argmax(a @ b.T, axis=1)
    assert (np.sum(b[first] * b, axis=1) > 0.9999).all()


def test_int8_tower_is_exported_once_and_loads_without_torch(sample_clips: dict[str, Path],
                                                           tiny_model: tuple[Path, Path], tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from cliptool.models import onnx_tower

    spec = ModelSpec(str(tiny_model[0]), str(tiny_model[1]), "int8")
    images = _photos_and_frames(sample_clips)[:6]
    model = ClipModel(spec)
    here = model.encode_images(images)
    assert model.export_text_encoder(tmp_path / "first-index")  # also fills the text cache
    entry = onnx_tower.cache_path(spec.resolved().identity())
    assert onnx_tower.is_cached(spec.resolved().identity()) and entry.is_dir()
    np.save(tmp_path / "images.npy", np.stack([np.ascontiguousarray(im[:64, :64]) for im in images]))
    code = (
        "import json, sys, numpy as np\n"
        "from cliptool.models.clip import ClipModel\n"
        "from cliptool.models.spec import ModelSpec\n"
        "m = ClipModel(ModelSpec(*sys.argv[1:4]))\n"
        "v = m.encode_images(list(np.load(sys.argv[4])))\n"
        "assert m.export_text_encoder(sys.argv[5])\n"
        "print(json.dumps({'heavy': [k for k in ('torch', 'open_clip') if k in sys.modules], 'v': v.tolist()}))\n"
    )

    def fresh_process(index_dir: Path) -> dict:
        out = subprocess.run([sys.executable, "-c", code, *map(str, (tiny_model[0], tiny_model[1], "int8")),
                              str(tmp_path / "images.npy"), str(index_dir)], capture_output=True, text=True,
                             check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        return json.loads(out.stdout)

    got = fresh_process(tmp_path / "second-index")
    assert got["heavy"] == []  # cached towers need neither torch nor open_clip, for images or text
    first, second = tmp_path / "first-index" / TEXTENC_DIR, tmp_path / "second-index" / TEXTENC_DIR
    exported = [p for p in second.iterdir() if p.name != VERIFIED_STAMP]  # the stamp: this folder's own ctimes, inodes
    assert sorted(p.name for p in first.iterdir() if p.name != VERIFIED_STAMP) == sorted(p.name for p in exported)
    assert all((first / p.name).read_bytes() == p.read_bytes() for p in exported)
    crops = ClipModel(spec).encode_images([np.ascontiguousarray(im[:64, :64]) for im in images])
    np.testing.assert_allclose(np.array(got["v"]), crops, atol=1e-6)  # same file, same numbers
    # A damaged entry is exported again, giving the same vectors.
    (entry / "image-int8.onnx").write_bytes(b"damaged")
    again = fresh_process(tmp_path / "third-index")
    assert again["heavy"] != [] and onnx_tower.is_cached(spec.resolved().identity())
    np.testing.assert_allclose(np.array(again["v"]), crops, atol=1e-6)
    assert len(here) == len(images)


def test_model_errors_still_fail_at_construction(tmp_path: Path, tiny_model: tuple[Path, Path]) -> None:
    from cliptool.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="checkpoint file not found"):
        ClipModel(ModelSpec(str(tiny_model[0]), str(tmp_path / "missing.pt")))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    model = ClipModel(ModelSpec(str(tiny_model[0]), str(bad)))  # loads in the background
    with pytest.raises(ModelUnavailableError, match="cannot load checkpoint"):
        model.wait()


def test_streamed_cache_build_is_what_faiss_writes(sample_clips: dict[str, Path], tiny_model: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    import faiss

    from cliptool.index.indexer import index_paths
    from cliptool.store import IndexStore
    from cliptool.vectors.faiss import load_vector_index, rebuild

    index_dir = tmp_path / "index"
    index_paths(list(sample_clips.values()), index_dir, ModelSpec(str(tiny_model[0]), str(tiny_model[1])),
                report=lambda m: None, progress=False)
    rebuild(index_dir)  # a full build from the stores (videos by path), streamed as FAISS's format
    with IndexStore(index_dir) as store:
        records = sorted(store.videos(), key=lambda v: v.path)
        scene_vecs = np.concatenate([np.stack([v.scene for v in store.vectors(r)]) for r in records])
        frame_vecs = np.concatenate([v.frames for r in records for v in store.vectors(r)])
    vi = load_vector_index(index_dir)
    flat = faiss.read_index(str(vi.directory / "flat.faiss"))  # plain (not memory-mapped) read
    assert isinstance(flat, faiss.IndexFlatIP) and flat.ntotal == len(scene_vecs)
    np.testing.assert_array_equal(flat.reconstruct_n(0, flat.ntotal), scene_vecs)
    np.testing.assert_array_equal(np.load(vi.directory / "frames.npy"), frame_vecs)
    expected = faiss.IndexFlatIP(scene_vecs.shape[1])
    expected.add(scene_vecs)
    q = scene_vecs[3]
    np.testing.assert_array_equal(vi.scores(q, 5)[1], expected.search(q[None], 5)[1][0])


def test_scene_cutter_memory_is_bounded_on_an_endless_shot() -> None:
    from cliptool.media.decode import Frame

    cutter = SceneCutter(0.0, 3, 1920 * 1080 * 3 // 2)  # never split: one shot of an hour
    for i in range(30 * 3600):
        cutter.add_frame(Frame(i, i / 30, None))
        assert len(cutter._candidates) <= cutter.max_candidates
    scene = cutter.finish(3600.0)[0]
    assert len(scene.samples) == 3


def test_fast_checkpoint_load_gives_open_clip_model(tiny_model: tuple[Path, Path], fp32_model: ClipModel) -> None:
    import open_clip
    import torch

    from cliptool.models.loading import _load_plain_checkpoint

    open_clip.add_model_config(tiny_model[0])
    fast = _load_plain_checkpoint(tiny_model[0].stem, tiny_model[1])
    assert fast is not None
    plain = open_clip.create_model(tiny_model[0].stem, pretrained=str(tiny_model[1]))
    fast_sd, plain_sd = fast.state_dict(), plain.state_dict()
    assert set(fast_sd) == set(plain_sd)
    for k in plain_sd:
        assert torch.equal(fast_sd[k], plain_sd[k]), k
    for (n1, b1), (n2, b2) in zip(fast.named_buffers(), plain.named_buffers()):
        assert n1 == n2 and torch.equal(b1, b2), n1
    tokens = open_clip.get_tokenizer(tiny_model[0].stem)(["a red circle"])
    with torch.inference_mode():
        assert torch.equal(fast.eval().encode_text(tokens), plain.eval().encode_text(tokens))
