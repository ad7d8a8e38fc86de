"""Trains the toy CLIP of `data/toy-clip/`: a small open_clip model (ViT image tower, the standard
CLIP text transformer and BPE tokenizer) that knows 16 captions of a world of shapes, and four
captions of pictures that hold no shape ("a photo", "noise", "a gradient", "a flat colour").

    .venv/bin/python data/train_toy_clip.py                # about an hour on 2 cores, seed 0
    .venv/bin/python data/train_toy_clip.py --steps 300    # a short try

Run by hand, once; its result is committed (config.json, weights.safetensors, training.json), so
neither CI nor `make demo` trains anything. Training is contrastive: each picture's embedding is
pulled towards its caption's text embedding and away from the other 19 captions' (image to
text), and each caption's towards its pictures in the batch (text to image), with CLIP's
learnt temperature. A share of the pictures (--empty-share) holds no shape: a background alone,
captioned by its kind (toy_world.EMPTY_CAPTIONS), so that a picture without a shape has a place
of its own instead of the nearest shape caption. Pictures are pre-rendered (`toy_world.py`),
re-rendered in part every quarter of the run. Accuracy is measured on freshly drawn pictures
from another seed, through open_clip's own preprocessing path; at the end `evaluate` also puts,
for each shape caption, the highest score of a picture without a shape (of each kind) against
the lowest score of a picture that shows it, into training.json and prints it as a table.

    .venv/bin/python data/train_toy_clip.py --evaluate-only   # that evaluation of the saved weights
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


def image_features(model, images: np.ndarray, mean, std, batch: int = 256):
    import torch

    with torch.no_grad():
        return torch.cat([model.encode_image(normalise_batch(images[i:i + batch], mean, std), normalize=True)
                          for i in range(0, len(images), batch)])


def evaluate(model, tokenizer, mean, std, photos, seed: int = 777_777, n_shapes: int = 2000,
             n_empty: int = 500) -> dict:
    """On fresh pictures (a seed neither training nor validation uses): top-1 among the 16 shape
    captions on pictures of shapes, top-1 among all captions on a mix, and for each shape caption
    the lowest cosine score of a picture showing it against the highest of a picture without a
    shape, of each kind (the product's scores: normalised image and text embeddings)."""
    import torch

    n_caps = len(toy_world.CAPTIONS)
    with torch.no_grad():
        txt = model.encode_text(tokenizer(toy_world.ALL_CAPTIONS), normalize=True)
    shape_x, shape_y = toy_world.render_set(n_shapes, seed=seed, size=IMAGE_SIZE, photos=photos)
    shape_scores = image_features(model, shape_x, mean, std) @ txt.T  # (n_shapes, 20)
    shape_top1 = float((shape_scores[:, :n_caps].argmax(1).numpy() == shape_y).mean())
    kinds = [k for k in toy_world.EMPTY_KINDS if photos or k != "photo"]
    rng = np.random.default_rng(seed + 1)
    empty_scores, empty_top1 = {}, {}
    for j, kind in enumerate(toy_world.EMPTY_KINDS):
        if kind not in kinds:
            continue
        x = np.stack([toy_world.render_empty(rng, kind, IMAGE_SIZE, photos) for _ in range(n_empty)])
        empty_scores[kind] = image_features(model, x, mean, std) @ txt.T
        empty_top1[kind] = float((empty_scores[kind].argmax(1).numpy() == n_caps + j).mean())
    all_correct = int((shape_scores.argmax(1).numpy() == shape_y).sum()) + sum(
        round(empty_top1[k] * n_empty) for k in kinds)
    rows = []
    for c, cap in enumerate(toy_world.CAPTIONS):
        own = shape_scores[shape_y == c, c]
        row = {"caption": cap, "pictures": len(own), "shape_min": round(float(own.min()), 4),
               "shape_p1": round(float(torch.quantile(own, 0.01)), 4), "shape_median": round(float(own.median()), 4),
               "empty_max": {k: round(float(empty_scores[k][:, c].max()), 4) for k in kinds}}
        row["margin"] = round(row["shape_min"] - max(row["empty_max"].values()), 4)
        rows.append(row)
    return {"seed": seed, "shape_pictures": n_shapes, "empty_pictures_per_kind": n_empty,
            "shape_top1_among_shape_captions": shape_top1,
            "top1_among_all_captions": all_correct / (n_shapes + n_empty * len(kinds)),
            "empty_top1_own_kind": empty_top1, "per_caption": rows,
            "worst_margin": min(r["margin"] for r in rows)}


def evaluation_table(ev: dict) -> str:
    kinds = list(ev["per_caption"][0]["empty_max"])
    head = f"{'caption':<18} {'n':>4} {'shape min':>9} {'p1':>6} {'median':>6} | " + " ".join(
        f"{'max ' + k:>12}" for k in kinds) + f" | {'margin':>7}"
    lines = [head, "-" * len(head)]
    for r in ev["per_caption"]:
        lines.append(f"{r['caption']:<18} {r['pictures']:>4} {r['shape_min']:>9.3f} {r['shape_p1']:>6.3f} "
                     f"{r['shape_median']:>6.3f} | " + " ".join(f"{r['empty_max'][k]:>12.3f}" for k in kinds)
                     + f" | {r['margin']:>+7.3f}")
    lines.append(f"top-1 among the 16 shape captions ({ev['shape_pictures']} pictures of shapes): "
                 f"{ev['shape_top1_among_shape_captions']:.4f}; among all {len(toy_world.ALL_CAPTIONS)} captions "
                 f"(with {ev['empty_pictures_per_kind']} empty pictures of each kind): {ev['top1_among_all_captions']:.4f}; "
                 "empty pictures named by their own kind: "
                 + ", ".join(f"{k} {v:.3f}" for k, v in ev["empty_top1_own_kind"].items()))
    return "\n".join(lines)


def load_weights(model, path: Path) -> None:
    from safetensors.torch import load_file

    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})


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
    ap.add_argument("--empty-share", type=float, default=0.2,
                    help="share of the pictures that hold no shape, captioned by their kind")
    ap.add_argument("--squeeze-share", type=float, default=0.3,
                    help="share of the pictures drawn in a wide or tall frame and squeezed to a square, as "
                         "cliptool's default view squeezes a video frame")
    ap.add_argument("--calibrate", type=float, default=0.0,
                    help="weight of a loss on absolute cosine scores (the product ranks by them): a picture's own shape "
                         "caption above --pos, every other shape caption (all of them for a picture without a shape) below --neg")
    ap.add_argument("--pos", type=float, default=0.5)
    ap.add_argument("--neg", type=float, default=0.25)
    ap.add_argument("--rank", type=float, default=0.0,
                    help="weight of a ranking loss: in each batch, every picture of a shape scores its caption at least "
                         "--rank-margin above every picture without a shape (the evaluation's worst-case margin)")
    ap.add_argument("--rank-margin", type=float, default=0.1)
    ap.add_argument("--init", type=Path, default=None,
                    help="start from these weights (a weights.safetensors of the same config) instead of random ones")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--eval-size", type=int, default=2000, help="fresh pictures of shapes for the final evaluation "
                    "(and a quarter as many empty ones of each kind)")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="train nothing: evaluate the weights in --out and write the result into its training.json")
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
    mean, std = np.array(OPENAI_DATASET_MEAN, np.float32), np.array(OPENAI_DATASET_STD, np.float32)
    photos = toy_world.load_photos()
    if args.evaluate_only:
        model = build_model(config_path)
        tokenizer = open_clip.get_tokenizer(config_path.stem)
        load_weights(model, args.out / "weights.safetensors")
        model.eval()
        ev = evaluate(model, tokenizer, mean, std, photos, n_shapes=args.eval_size, n_empty=args.eval_size // 4)
        print(evaluation_table(ev), flush=True)
        path = args.out / "training.json"
        metrics = json.loads(path.read_text()) if path.is_file() else {}
        metrics["evaluation"] = ev
        path.write_text(json.dumps(metrics, indent=1) + "\n")
        return 0
    config_path.write_text(json.dumps(CONFIG, indent=2) + "\n")
    model = build_model(config_path)
    if args.init is not None:
        load_weights(model, args.init)
    model = model.to(memory_format=torch.channels_last)  # a third faster convolutions on CPU
    tokenizer = open_clip.get_tokenizer(config_path.stem)
    tokens = tokenizer(toy_world.ALL_CAPTIONS)  # the 16 shape captions first, then the empty ones
    n_caps = len(toy_world.CAPTIONS)
    print(f"photos for backgrounds: {len(photos)}; rendering {args.train_size} pictures, "
          f"{args.empty_share:.0%} without a shape", flush=True)
    t0 = time.time()
    pool_x, pool_y = toy_world.render_set(args.train_size, seed=1000 + args.seed, size=IMAGE_SIZE, photos=photos,
                                          empty_share=args.empty_share, squeeze_share=args.squeeze_share)
    val_x, val_y = toy_world.render_set(2000, seed=999_999, size=IMAGE_SIZE, photos=photos)  # shapes only
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
        x = normalise_batch(augment(pool_x[idx], rng), mean, std).contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(pool_y[idx])
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T  # (batch, 20): image to text, over shape and empty captions
        loss_i = F.cross_entropy(logits, y)
        present = torch.unique(y)  # text to image: each caption against the batch's pictures
        target = (y[None, :] == present[:, None]).float()
        loss_t = -(F.log_softmax(logits.T[present], dim=1) * target / target.sum(1, keepdim=True)).sum(1).mean()
        loss = (loss_i + loss_t) / 2
        cos = img @ txt[:n_caps].T  # cosine scores for the shape captions (the product ranks by them)
        if args.calibrate > 0:  # absolute scores: a shape's own caption above --pos, every other shape caption below --neg
            own = F.one_hot(y.clamp(max=n_caps - 1), n_caps).bool() & (y < n_caps)[:, None]
            pos = F.relu(args.pos - cos[own]).pow(2).sum() / max(1, int(own.sum()))
            neg = F.relu(cos[~own] - args.neg).pow(2).sum() / len(y)
            loss = loss + args.calibrate * (pos + neg)
        if args.rank > 0:  # each shape picture's own caption score above every empty picture's score for it
            empty = y >= n_caps
            if empty.any() and (~empty).any():
                own = cos[~empty, y[~empty]]  # (shapes,)
                against = cos[empty][:, y[~empty]]  # (empties, shapes): the empty pictures' scores for those captions
                loss = loss + args.rank * F.relu(against - own[None, :] + args.rank_margin).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step > refresh_at * args.steps / 4 and refresh_at < 4:  # fresh pictures for a quarter of the pool
            refresh_at += 1
            n = len(pool_x) // 4
            new_x, new_y = toy_world.render_set(n, seed=2000 + 10 * args.seed + refresh_at, size=IMAGE_SIZE, photos=photos,
                                                empty_share=args.empty_share, squeeze_share=args.squeeze_share)
            where = rng.choice(len(pool_x), n, replace=False)
            pool_x[where], pool_y[where] = new_x, new_y
        if step % 50 == 0 and step % 250:
            print(f"step {step}: {time.time() - start:.0f} s", flush=True)
        if step % 250 == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                txt = model.encode_text(tokens, normalize=True)
            acc = accuracy(model, val_x[:1000], val_y[:1000], txt[:n_caps], mean, std)  # among the shape captions
            model.train()
            history.append({"step": step, "minutes": round(elapsed / 60, 2), "loss": round(float(loss.detach()), 4),
                            "val_top1": acc, "lr": lr})
            print(json.dumps(history[-1]), flush=True)
            save(model, args.out / "weights.safetensors")

    model.eval()
    with torch.no_grad():
        txt = model.encode_text(tokens, normalize=True)
    final_val = accuracy(model, val_x, val_y, txt[:n_caps], mean, std)
    sq_x, sq_y = toy_world.render_set(2000, seed=999_998, size=IMAGE_SIZE, photos=photos, squeeze_share=1.0)
    final_squeezed = accuracy(model, sq_x, sq_y, txt[:n_caps], mean, std)
    save(model, args.out / "weights.safetensors")
    minutes = round((time.time() - start) / 60, 1)
    print(f"done: {step} steps, validation top-1 {final_val:.4f} (squeezed frames {final_squeezed:.4f}); "
          f"weights in {args.out}; evaluating", flush=True)
    ev = evaluate(model, tokenizer, mean, std, photos, n_shapes=args.eval_size, n_empty=args.eval_size // 4)
    metrics = {"seed": args.seed, "init": str(args.init) if args.init else None, "lr": args.lr, "steps": step, "minutes": minutes, "batch": args.batch,
               "train_size": args.train_size, "empty_share": args.empty_share,
               "squeeze_share": args.squeeze_share, "calibrate": args.calibrate, "pos": args.pos, "neg": args.neg,
               "rank": args.rank, "rank_margin": args.rank_margin,
               "val_top1_squeezed": final_squeezed, "captions": toy_world.ALL_CAPTIONS,
               "val_top1": final_val, "evaluation": ev, "history": history}
    (args.out / "training.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(evaluation_table(ev), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
