"""int8 and bf16 image towers against fp32 on real frames: cosine, top-10 overlap and speed."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def precision_accuracy(ckpt: Path, clips: list[Path], per_clip: int) -> dict[str, dict[str, float]]:
    from cliptool.media.decode import VideoReader, to_rgb
    from cliptool.models.clip import ClipModel
    from cliptool.models.spec import ModelSpec

    frames = []
    for clip in clips:
        with VideoReader(clip) as reader:
            info = reader.info
            step = max(1, int(info.duration * max(info.fps, 1) / per_clip))
            frames += [to_rgb(f.av_frame) for f in reader.frames() if f.index % step == 0][:per_clip]
    models = {p: ClipModel(ModelSpec("ViT-B-32", str(ckpt), p)) for p in ("fp32", "bf16", "int8")}
    batch = np.stack([models["fp32"].preprocess(f) for f in frames])
    queries = models["fp32"].encode_text([f"a photo of {w}" for w in (
        "a deer", "a bird", "a man", "a city at night", "leaves", "text on a screen", "a car", "water",
        "a face", "a street", "an explosion", "a parrot")])
    vectors, speed = {}, {}
    for name, model in models.items():
        model.encode_preprocessed(batch[:16])  # warm up
        t0 = time.perf_counter()
        vectors[name] = np.concatenate([model.encode_preprocessed(batch[i:i + 16]) for i in range(0, len(batch), 16)])
        speed[name] = len(frames) / (time.perf_counter() - t0)
    out: dict[str, dict[str, float]] = {"fp32": {"frames": len(frames), "img_s": speed["fp32"]}}
    a = vectors["fp32"]
    for name in ("bf16", "int8"):
        b = vectors[name]
        cos = np.sum(a * b, axis=1)
        overlaps = []
        for q in queries:  # top-10 frames of a text query, against the exact path's
            overlaps.append(len(set(np.argsort(-(a @ q))[:10]) & set(np.argsort(-(b @ q))[:10])) / 10)
        self_rank = np.mean(np.argmax(b @ a.T, axis=1) == np.arange(len(a)))  # each frame finds its fp32 self
        out[name] = {"frames": len(frames), "cos_min": float(cos.min()), "cos_median": float(np.median(cos)),
                     "top10_overlap_mean": float(np.mean(overlaps)), "top10_overlap_min": float(np.min(overlaps)),
                     "self_top1": float(self_rank), "img_s": speed[name]}
    return out
