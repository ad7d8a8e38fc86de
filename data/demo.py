"""The quick start: index the sample clips, then search them by text and by image.

    python data/demo.py data/samples data/demo-index

Uses the default model (ViT-B-32, DataComp-XL weights, downloaded once). Where its weights
cannot be downloaded (no network), it says so and uses the toy CLIP committed in
data/toy-clip/ instead: a small model trained here on a world of coloured shapes, which knows
16 captions ("a yellow star", "a blue square", ...) and nothing else, so the offline demo's
text search still means something on the clips that show those shapes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def cliptool(index_dir: Path, *args: object, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cliptool", *map(str, args)]
    print("$ cliptool " + " ".join(map(str, args)), flush=True)
    env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir)}
    proc = subprocess.run(cmd, env=env, text=True, stdout=subprocess.PIPE)
    print(proc.stdout, end="", flush=True)
    if check and proc.returncode != 0:
        sys.exit(proc.returncode)
    return proc


def main() -> None:
    samples = Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "samples")
    index_dir = Path(sys.argv[2] if len(sys.argv) > 2 else HERE / "demo-index")
    proc = cliptool(index_dir, "index", samples, check=False)
    if proc.returncode == 6:  # weights unavailable
        index_dir = index_dir.with_name(index_dir.name + "-offline")
        toy = HERE / "toy-clip"
        if (toy / "weights.safetensors").is_file():
            print("\nThe default weights cannot be downloaded here; using the toy CLIP of data/toy-clip instead.\n"
                  "It knows only coloured shapes (16 captions such as 'a yellow star'): ask it for those.\n", flush=True)
            cliptool(index_dir, "index", samples, "--model", toy / "config.json", "--pretrained", toy / "weights.safetensors")
            cliptool(index_dir, "status")
            cliptool(index_dir, "search", "a yellow star", "--top", "3")
            cliptool(index_dir, "search", "a blue square", "--top", "3")
            cliptool(index_dir, "export-frame", "a yellow star", "-o", index_dir / "yellow-star.jpg")
            return
        print("\nThe default weights cannot be downloaded here; using a local random-weight model instead.\n"
              "Text results below are meaningless; image search still finds the matching frame.\n", flush=True)
        sys.path.insert(0, str(HERE))
        from make_samples import write_tiny_model

        config, ckpt = write_tiny_model(HERE / "offline-model")
        cliptool(index_dir, "index", samples, "--model", config, "--pretrained", ckpt)
    elif proc.returncode != 0:
        sys.exit(proc.returncode)
    cliptool(index_dir, "status")
    cliptool(index_dir, "search", "a red circle on a white background", "--top", "3")
    still = index_dir / "query.png"
    cliptool(index_dir, "export-frame", "--video", samples / "outdoors.mp4", "--at", "1.2", "-o", still)
    cliptool(index_dir, "search", "--image", still, "--top", "3")
    cliptool(index_dir, "export-frame", "the sun in a blue sky", "-o", index_dir / "sun.jpg")


if __name__ == "__main__":
    main()
