"""Hostile input: every bad file is reported by name, none crashes or hangs the run, and the
index stays consistent. Real videos from ../shared/testdata are mutated when present."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from cliptool.index.check import check_index
from cliptool.media.decode import VideoReader, to_rgb
from cliptool.models.spec import ModelSpec
from cliptool.index.indexer import index_paths
from cliptool.store import IndexStore, generation

from conftest import SHARED, make_samples

SEED = 1234


def _base_video(out: Path) -> Path:
    """A real video to mutate (bikes.mp4) when the shared test data is present, else a synthetic one."""
    real = SHARED / "scenes" / "bikes.mp4"
    target = out / "base.mp4"
    if real.is_file():
        shutil.copyfile(real, target)
    else:
        make_samples.write_clip(target, make_samples.SAMPLES["shapes.mp4"])
    return target


def _marked(i: int, w: int, h: int) -> np.ndarray:
    """White frames with a red block in the stored bottom-left corner (top-left once upright)."""
    img = np.full((h, w, 3), 255 if i < 25 else 0, np.uint8)  # a cut at frame 25
    img[h - 40:, :40] = (255, 0, 0)
    return img


def _rotate_90(path: Path) -> None:
    """Sets the track's display matrix to "rotate 90 degrees clockwise for display" (as phones do)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"tkhd")
    offset = at + 8 + (20 if data[at + 4] == 0 else 32) + 16
    data[offset:offset + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))


def _audio_only(path: Path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        t = np.arange(16000, dtype=np.float32) / 16000
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32).reshape(1, -1)
        for start in range(0, samples.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(samples[:, start:start + 1024], format="fltp", layout="mono")
            frame.sample_rate = 16000
            frame.pts = start
            frame.time_base = Fraction(1, 16000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _garbled_payload(src: Path, dst: Path) -> None:
    """A valid container whose every video packet is garbage: no decodable frames."""
    data = bytearray(src.read_bytes())
    at = data.find(b"mdat")
    size = struct.unpack(">I", data[at - 4:at])[0]
    rng = random.Random(SEED)
    data[at + 4:at - 4 + size] = bytes(rng.getrandbits(8) for _ in range(size - 8))
    dst.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected outcome: "indexed", "failed" or "either")."""
    out = tmp_path_factory.mktemp("hostile")
    work = tmp_path_factory.mktemp("hostile-src")
    base = _base_video(work)
    raw = base.read_bytes()
    rng = random.Random(SEED)
    cases: dict[str, tuple[Path, str]] = {}

    def add(name: str, expect: str) -> Path:
        cases[name] = (out / name, expect)
        return out / name

    add("zero bytes.mp4", "failed").write_bytes(b"")
    add("truncated.mp4", "either").write_bytes(raw[: len(raw) * 2 // 5])
    flipped = bytearray(raw)
    for _ in range(200):
        flipped[rng.randrange(len(raw) // 10, len(raw))] ^= 1 << rng.randrange(8)
    add("flipped bits.mp4", "either").write_bytes(bytes(flipped))
    add("notes.mp4", "failed").write_text("This is a text file, not a video.\n" * 50)
    add("photo.mov", "either").write_bytes((SHARED / "images" / "coffee.png").read_bytes()
                                           if (SHARED / "images" / "coffee.png").is_file()
                                           else b"\x89PNG\r\n\x1a\n" + bytes(200))
    _garbled_payload(base, add("no frames.mp4", "failed"))
    _audio_only(add("audio only.mp4", "failed"))
    homer = SHARED / "content" / "homer.avi"  # Indeo 3: an old codec a decoder may lack
    if homer.is_file():
        shutil.copyfile(homer, add("old codec.avi", "either"))
    rotated = add("rotated.mp4", "indexed")
    make_samples.write_clip(rotated, [(_marked, 50)])
    _rotate_90(rotated)
    make_samples.write_clip(add("eight k.mp4", "indexed"), [(make_samples.sky, 3)], size=(7680, 4320))
    shutil.copyfile(base, add("名字 with 'quotes' \"and\" spaces é.mp4", "indexed"))
    odd = out / os.fsdecode(b"latin1-caf\xe9.mp4")  # not valid UTF-8
    shutil.copyfile(base, odd)
    cases["non-UTF-8 name"] = (odd, "indexed")
    return cases


def _spec(tiny_model: tuple[Path, Path]) -> ModelSpec:
    return ModelSpec(str(tiny_model[0]), str(tiny_model[1]))


def test_hostile_files_are_reported_by_name(hostile, index_dir: Path, cli, model_args) -> None:
    folder = next(iter(hostile.values()))[0].parent
    proc = cli("index", str(folder), *model_args, "--json", timeout=600)
    assert proc.returncode in (0, 8), proc.stderr  # 8: some failed, the rest indexed
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    failed = {f["path"]: f["error"] for f in summary["failed"]}
    with IndexStore(index_dir) as store:
        indexed = {v.path: v for v in store.videos()}
    outcomes = {}
    for name, (path, expect) in hostile.items():
        state = "indexed" if str(path) in indexed else "failed" if str(path) in failed else "missing"
        outcomes[name] = (state, failed.get(str(path), ""))
        assert state != "missing", f"{name} is neither indexed nor reported"
        assert expect in (state, "either"), f"{name}: {state} {failed.get(str(path))}"
        if state == "failed":
            assert "\n" not in failed[str(path)] and failed[str(path)]
            assert path.name in proc.stderr or os.fsencode(path.name).decode(errors="replace") in proc.stderr
    print("\nhostile outcomes:\n" + "\n".join(f"  {n}: {st} {why}" for n, (st, why) in outcomes.items()))
    report = check_index(index_dir)
    assert report.ok and report.cache == "current", report.problems

    eight_k = indexed[str(hostile["eight k.mp4"][0])]
    assert (eight_k.width, eight_k.height, eight_k.frame_count) == (7680, 4320, 3)
    rotated = indexed[str(hostile["rotated.mp4"][0])]
    assert rotated.scene_count == 2

    # A second run retries nothing: failed files are remembered until they change.
    again = cli("index", str(folder), "--json")
    data = json.loads(again.stdout)
    assert (data["added"], data["updated"], data["skipped"]) == (0, 0, len(indexed))
    assert sorted(f["path"] for f in data["failed"]) == sorted(failed)
    assert all("not retried" in f["error"] or "empty file" in f["error"] for f in data["failed"])
    # Fixing a failed file makes the next run take it.
    fixed = hostile["zero bytes.mp4"][0]
    shutil.copyfile(hostile["rotated.mp4"][0], fixed)
    third = json.loads(cli("index", str(folder), "--json").stdout)
    assert third["added"] == 1 and str(fixed) not in {f["path"] for f in third["failed"]}
    assert check_index(index_dir).ok


def test_rotated_frames_come_out_upright(hostile) -> None:
    path = hostile["rotated.mp4"][0]
    with VideoReader(path) as reader:
        rgb = to_rgb(next(reader.frames()).av_frame)
    assert rgb.shape == (320, 240, 3)  # stored 320x240, shown portrait
    assert tuple(rgb[5, 5]) == pytest.approx((255, 0, 0), abs=40)  # the marker is top-left
    assert tuple(rgb[-5, -5]) == pytest.approx((255, 255, 255), abs=40)


def test_per_file_time_limit(hostile, index_dir: Path, tiny_model) -> None:
    """A file that makes no progress within --file-timeout is given up; the run goes on."""
    messages: list[str] = []
    before = signal.getsignal(signal.SIGALRM)
    summary = index_paths([hostile["eight k.mp4"][0]], index_dir, _spec(tiny_model), report=messages.append,
                          progress=False, file_timeout=0.001)
    assert [p for p, _ in summary.failed] == [str(hostile["eight k.mp4"][0])]
    assert "no progress for 0.001 s" in summary.failed[0][1]
    assert any("eight k.mp4" in m for m in messages)
    assert signal.getsignal(signal.SIGALRM) == before  # the run's handler is gone
    # Not remembered as a bad file: a run with a sensible limit indexes it.
    summary = index_paths([hostile["eight k.mp4"][0]], index_dir, _spec(tiny_model), report=messages.append,
                          progress=False)
    assert summary.added == 1 and summary.failed == []


def test_files_deleted_or_replaced_during_the_run(tmp_path: Path, index_dir: Path, model_args) -> None:
    folder = tmp_path / "videos"
    colours = [(220, 30, 30), (30, 60, 220), (30, 200, 30), (200, 200, 30)]
    for i, colour in enumerate(colours):
        make_samples.write_clip(folder / f"clip{i}.mp4", [(make_samples.circle(colour, (250, 250, 250)), 60)],
                                size=(160, 120))
    replacement = tmp_path / "new clip2.mp4"
    make_samples.write_clip(replacement, [(make_samples.circle((0, 0, 0), (250, 250, 250)), 30),
                                          (make_samples.stripes((0, 0, 0), (255, 255, 255)), 30)], size=(160, 120))
    env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cliptool", "index", str(folder), *model_args, "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and generation(index_dir) == "":
        time.sleep(0.005)  # until the first video is committed
    (folder / "clip3.mp4").unlink()
    os.replace(replacement, folder / "clip2.mp4")  # replaced whole, as a download or copy tool does
    out, err = proc.communicate(timeout=300)
    assert "Traceback" not in err
    summary = json.loads(out)
    failed = {f["path"]: f["error"] for f in summary["failed"]}
    assert str(folder / "clip3.mp4") in failed and "removed" in failed[str(folder / "clip3.mp4")]
    with IndexStore(index_dir) as store:
        videos = {v.path: v for v in store.videos()}
    assert str(folder / "clip3.mp4") not in videos
    clip2 = videos.get(str(folder / "clip2.mp4"))
    if clip2 is not None:  # indexed from its new content, or reported as changed mid-run
        assert clip2.scene_count == 2 and clip2.size == (folder / "clip2.mp4").stat().st_size
    else:
        assert "changed" in failed[str(folder / "clip2.mp4")]
    assert check_index(index_dir).ok


def test_full_index_directory_is_a_clear_error(tmp_path: Path, index_dir: Path, sample_clips, model_args,
                                               tiny_model) -> None:
    """A write that fails (file size limit, like a full disk) ends the run with one line and
    leaves the index consistent; the next run completes it."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for name, src in sample_clips.items():
        shutil.copy2(src, folder / name)
    index_paths([folder / "shapes.mp4"], index_dir, _spec(tiny_model), report=lambda m: None, progress=False)
    env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1"}

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    proc = subprocess.run([sys.executable, "-m", "cliptool", "index", str(folder), *model_args],
                          env=env, capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert proc.returncode not in (0, 8), proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cliptool: error:")]
    assert len(errors) == 1 and "File too large" in errors[0], proc.stderr
    print("\nwith a file size limit:", errors[0])
    report = check_index(index_dir)
    assert [p.message for p in report.problems if p.kind != "orphan"] == []
    summary = index_paths([folder], index_dir, _spec(tiny_model), report=lambda m: None, progress=False)
    assert summary.failed == [] and summary.added + summary.skipped == 3
    assert check_index(index_dir).ok


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 48 MB tmpfs (root only; skipped where it cannot be mounted)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("needs root and a mountable tmpfs")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.parametrize("free_kb", [8, 90, 200])
def test_a_full_disk_at_any_step_is_one_line_and_loses_nothing(small_disk: Path, tmp_path: Path, sample_clips,
                                                               model_args, free_kb: int) -> None:
    """A real full disk (a tmpfs filled to `free_kb` free), hit while the stores, the search
    cache, the thumbnails or the text export are written: one line, the index stays whole, and
    the next run with room completes it."""
    index_dir, folder = small_disk / "index", tmp_path / "videos"
    folder.mkdir()
    shutil.copy2(sample_clips["shapes.mp4"], folder)
    env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1"}

    def index() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cliptool", "index", str(folder), *model_args], env=env,
                              capture_output=True, text=True, timeout=300)

    assert index().returncode == 0
    for name in ("outdoors.mp4", "titles.mp4"):
        shutil.copy2(sample_clips[name], folder)
    stat = os.statvfs(small_disk)
    fill = stat.f_bavail * stat.f_frsize - free_kb * 1024
    with open(small_disk / "fill", "wb") as f:
        f.truncate(0)
        f.write(b"\0" * fill)
    proc = index()
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode != 0:
        errors = [line for line in lines if line.startswith("cliptool: error:")]
        assert len(errors) == 1 and "No space left on device" in errors[0] and "b'" not in errors[0], proc.stderr
    print(f"\n{free_kb} kB free: exit {proc.returncode}: {lines[-1] if lines else ''}")
    (small_disk / "fill").unlink()  # (LevelDB writes as it opens a store: even check needs room)
    report = check_index(index_dir)
    assert [p.message for p in report.problems if p.kind not in ("orphan", "cache")] == [], report.problems
    with IndexStore(index_dir) as store:
        assert "shapes.mp4" in {Path(v.path).name for v in store.videos()}
    assert index().returncode == 0
    report = check_index(index_dir)
    assert report.ok and report.cache == "current" and report.videos == 3, report.problems


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes regardless of permissions")
def test_unreadable_file_and_read_only_index(tmp_path: Path, index_dir: Path, sample_clips, cli, model_args) -> None:
    folder = tmp_path / "videos"
    folder.mkdir()
    for name, src in sample_clips.items():
        shutil.copy2(src, folder / name)
    (folder / "titles.mp4").chmod(0)
    proc = cli("index", str(folder), *model_args, "--json")
    assert proc.returncode == 8
    failed = {f["path"]: f["error"] for f in json.loads(proc.stdout)["failed"]}
    assert list(failed) == [str(folder / "titles.mp4")] and "ermission" in failed[str(folder / "titles.mp4")]
    (folder / "titles.mp4").chmod(0o644)
    for p in [index_dir, *index_dir.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        proc = cli("index", str(folder))
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("cliptool: error:")
    finally:
        for p in [index_dir, *index_dir.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert check_index(index_dir).ok
