"""The quick start: index the sample clips, then search them by text and by image.

    python data/demo.py data/samples data/demo-index

Uses the default model (ViT-B-32, DataComp-XL weights, downloaded once). Where its weights
cannot be downloaded (no network), it says so and uses the toy CLIP committed in
data/toy-clip/ instead: a small model trained here on a world of coloured shapes, which knows
16 captions ("a yellow star", "a blue square", ...) and nothing else, so the offline demo's
text search still means something on the clips that show those shapes.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def command_name() -> str:
    """How to call this cliptool from the folder the demo runs in (the venv's script, else -m)."""
    script = Path(sys.executable).parent / "cliptool"
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m cliptool"
    try:
        return shlex.quote(str(script.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script))


def shown(index_dir: Path, *args: object) -> str:
    """The command line, quoted so that it can be pasted into a shell as it is."""
    return f"{command_name()} --index-dir {shlex.quote(str(index_dir))} {shlex.join(map(str, args))}"


def cliptool(index_dir: Path, *args: object, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cliptool", "--index-dir", str(index_dir), *map(str, args)]
    print("$ " + shown(index_dir, *args), flush=True)
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE)
    print(proc.stdout, end="", flush=True)
    if check and proc.returncode != 0:
        sys.exit(proc.returncode)
    return proc


def go_on(index_dir: Path, query: str) -> None:
    """The demo's last words: where its index is and the exact commands to go on with."""
    print(f"\nThe demo's index is {index_dir}. Go on with (paste as they are):\n"
          f"  {shown(index_dir, 'search', query)}\n"
          f"  {shown(index_dir, 'serve', '--open')}        # the web app, at http://127.0.0.1:8765/\n"
          f"  {shown(index_dir, 'index')} ~/Videos   # your own videos (or pass --index-dir elsewhere)",
          flush=True)


def image_search(index_dir: Path, video: Path, at: float) -> None:
    """A search by picture: a frame exported from one clip, searched for in the index."""
    still = index_dir / "query.png"
    cliptool(index_dir, "export-frame", "--video", video, "--at", at, "-o", still)
    cliptool(index_dir, "search", "--image", still, "--top", "3")


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
            image_search(index_dir, samples / "parade.mp4", 3.5)  # the blue square
            cliptool(index_dir, "export-frame", "a yellow star", "-o", index_dir / "yellow-star.jpg")
            go_on(index_dir, "a yellow star")
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
    image_search(index_dir, samples / "outdoors.mp4", 1.2)
    cliptool(index_dir, "export-frame", "the sun in a blue sky", "-o", index_dir / "sun.jpg")
    go_on(index_dir, "the sun in a blue sky")


if __name__ == "__main__":
    main()
