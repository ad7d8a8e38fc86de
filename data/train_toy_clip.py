"""Trains the toy CLIP of `data/toy-clip/`: a small open_clip model (ViT image tower, the standard
CLIP text transformer and BPE tokenizer) that knows 16 captions of a world of shapes.

    .venv/bin/python data/train_toy_clip.py                # about an hour on 2 cores, seed 0
    .venv/bin/python data/train_toy_clip.py --steps 300    # a short try

Run by hand, once; its result is committed (config.json, weights.safetensors, metrics.json), so
neither CI nor `make demo` trains anything. Training is contrastive: each picture's embedding is
pulled towards its caption's text embedding and away from the other 15 captions' (image to
text), and each caption's towards its pictures in the batch (text to image), with CLIP's
learnt temperature. Pictures are pre-rendered (`toy_world.py`), re-rendered in part every epoch.
Accuracy is measured on freshly drawn pictures from another seed, through open_clip's own
preprocessing path.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import toy_world  # noqa: E402

OUT = HERE / "toy-clip"
IMAGE_SIZE = 64
CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}


def build_model(config_path: Path):
    import open_clip

    open_clip.add_model_config(config_path)
    model = open_clip.create_model(config_path.stem, pretrained=None)
    return model


def normalise_batch(images: np.ndarray, mean: np.ndarray, std: np.ndarray):
    import torch

    x = torch.from_numpy(images).float().div_(255.0).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def augment(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flips and 90-degree turns (a shape's name does not change with them)."""
    out = images.copy()
    flip = rng.random(len(out)) < 0.5
    out[flip] = out[flip, :, ::-1]
    turns = rng.integers(0, 4)
    return np.ascontiguousarray(np.rot90(out, k=int(turns), axes=(1, 2)))


def accuracy(model, images: np.ndarray, labels: np.ndarray, text_features, mean, std, batch: int = 256) -> float:
    import torch

    correct = 0
    with torch.no_grad():
        for i in range(0, len(images), batch):
            f = model.encode_image(normalise_batch(images[i:i + batch], mean, std), normalize=True)
            correct += int((f @ text_features.T).argmax(1).eq(torch.from_numpy(labels[i:i + batch])).sum())
    return correct / len(images)


def save(model, path: Path) -> None:
    """The weights as float16 safetensors (half the size; open_clip loads them into float32)."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4000, help="optimiser steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-size", type=int, default=60_000, help="pictures rendered per pool")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    import open_clip
    import torch
    import torch.nn.functional as F
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    config_path = args.out / "config.json"
    config_path.write_text(json.dumps(CONFIG, indent=2) + "\n")
    model = build_model(config_path)
    tokenizer = open_clip.get_tokenizer(config_path.stem)
    tokens = tokenizer(toy_world.CAPTIONS)
    mean, std = np.array(OPENAI_DATASET_MEAN, np.float32), np.array(OPENAI_DATASET_STD, np.float32)
    photos = toy_world.load_photos()
    print(f"photos for backgrounds: {len(photos)}; rendering {args.train_size} pictures", flush=True)
    t0 = time.time()
    pool_x, pool_y = toy_world.render_set(args.train_size, seed=1000 + args.seed, size=IMAGE_SIZE, photos=photos)
    val_x, val_y = toy_world.render_set(2000, seed=999_999, size=IMAGE_SIZE, photos=photos)
    print(f"rendered in {time.time() - t0:.0f} s", flush=True)

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98))
    start = time.time()
    step, refresh_at, history = 0, 1, []
    warmup = min(200, args.steps // 10)
    model.train()
    while step < args.steps:
        elapsed = time.time() - start
        frac = step / args.steps
        lr = args.lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = rng.integers(0, len(pool_x), args.batch)
        x = normalise_batch(augment(pool_x[idx], rng), mean, std)
        y = torch.from_numpy(pool_y[idx])
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T  # (batch, 16): image to text
        loss_i = F.cross_entropy(logits, y)
        present = torch.unique(y)  # text to image: each caption against the batch's pictures
        target = (y[None, :] == present[:, None]).float()
        loss_t = -(F.log_softmax(logits.T[present], dim=1) * target / target.sum(1, keepdim=True)).sum(1).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step > refresh_at * args.steps / 4 and refresh_at < 4:  # fresh pictures for a quarter of the pool
            refresh_at += 1
            n = len(pool_x) // 4
            new_x, new_y = toy_world.render_set(n, seed=2000 + 10 * args.seed + refresh_at, size=IMAGE_SIZE, photos=photos)
            where = rng.choice(len(pool_x), n, replace=False)
            pool_x[where], pool_y[where] = new_x, new_y
        if step % 250 == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                txt = model.encode_text(tokens, normalize=True)
            acc = accuracy(model, val_x[:1000], val_y[:1000], txt, mean, std)
            model.train()
            history.append({"step": step, "minutes": round(elapsed / 60, 2), "loss": round(float(loss.detach()), 4),
                            "val_top1": acc, "lr": lr})
            print(json.dumps(history[-1]), flush=True)
            save(model, args.out / "weights.safetensors")

    model.eval()
    with torch.no_grad():
        txt = model.encode_text(tokens, normalize=True)
    final_val = accuracy(model, val_x, val_y, txt, mean, std)
    save(model, args.out / "weights.safetensors")
    metrics = {"seed": args.seed, "steps": step, "minutes": round((time.time() - start) / 60, 1),
               "batch": args.batch, "train_size": args.train_size, "val_top1": final_val,
               "history": history}
    (args.out / "training.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"done: {step} steps, validation top-1 {final_val:.4f}; weights in {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
