"""`cliptool clips`: each hit's span as a video file in rank order, plus manifest.json; stream copy
from the key frame at or before the start, or --exact re-encoding; checked by decoding the clips."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from conftest import ok, one_line_error, run, run_here, shared



@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, sample_clips: dict[str, Path], model_args: list[str]):
    root = tmp_path_factory.mktemp("clips-videos")
    shutil.copy(shared("scenes", "bikes.mp4"), root / "bikes.mp4")  # key frames only at its cuts
    shutil.copy(shared("scenes", "counter.mp4"), root / "counter.mp4")  # one key frame; frame n shows n+1
    shutil.copy(sample_clips["shapes.mp4"], root / "shapes.mp4")
    index_dir = tmp_path_factory.mktemp("clips-index")
    # short windows: many scenes start between key frames
    ok(run(index_dir, "index", root, "--max-scene", "1.5", *model_args))
    return index_dir, root


def decode(path: Path) -> list[tuple[float, np.ndarray]]:
    from cliptool.media.decode import VideoReader, to_rgb

    with VideoReader(path) as reader:
        return [(f.time, to_rgb(f.av_frame)) for f in reader.frames()]


def key_frame_times(path: Path) -> list[float]:
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return [float((p.pts - (v.start_time or 0)) * v.time_base) for p in c.demux(v) if p.is_keyframe and p.pts is not None]


def check_clip(clip: dict, folder: Path, exact: bool) -> None:
    from cliptool.media.decode import frame_at

    source = Path(clip["path"])
    frames = decode(folder / clip["file"])
    step = frames[1][0] - frames[0][0] if len(frames) > 1 else 0.04
    length = frames[-1][0] - frames[0][0] + step
    if exact:
        assert clip["start"] - step - 1e-3 <= clip["clip_start"] <= clip["start"] + 1e-3  # the frame on screen then
        assert length == pytest.approx(clip["end"] - clip["start"], abs=step + 1e-3)
        _, expected = frame_at(source, clip["start"])
        assert np.abs(frames[0][1].astype(int) - expected).mean() < 4
    else:
        keys = key_frame_times(source)
        before = [k for k in keys if k <= clip["start"] + 1e-4]
        assert clip["clip_start"] == pytest.approx(max(before), abs=1e-3)  # the nearest key frame at or before
        assert clip["clip_end"] >= clip["end"] - 1e-3
        assert length == pytest.approx(clip["clip_end"] - clip["clip_start"], abs=step + 1e-3)
        assert length <= clip["end"] - clip["clip_start"] + 5 * step + 1e-6  # frames a B-frame before the end needs
        _, expected = frame_at(source, clip["clip_start"])
        assert np.abs(frames[0][1].astype(int) - expected).mean() < 1  # the very key frame, not re-encoded
    assert len(frames) == clip["frames"]


@pytest.mark.parametrize("exact", [False, True], ids=["copy", "exact"])
def test_clips_in_rank_order_with_manifest_decode_to_their_spans(library: tuple[Path, Path], tmp_path: Path, exact: bool) -> None:
    import opentimelineio as otio

    index_dir, root = library
    out = tmp_path / "out"
    proc = ok(run(index_dir, "clips", "a street with bikes", "-o", out, "--top", "6", *(["--exact"] if exact else []),
                  "--otio", tmp_path / "c.otio", "--edl", tmp_path / "c.edl"))
    manifest = json.loads((out / "manifest.json").read_text())
    clips = manifest["clips"]
    assert len(clips) == 6 and manifest["failed"] == [] and manifest["query"] == "a street with bikes"
    assert [c["rank"] for c in clips] == list(range(1, 7))
    assert sorted(p.name for p in out.iterdir()) == sorted([c["file"] for c in clips] + ["manifest.json"])
    for c in clips:
        stem = Path(c["path"]).stem
        assert c["file"].startswith(f"{c['rank']:02d}_{stem}_") and c["file"].endswith(".mp4")
        assert c["mode"] == ("exact" if exact else "copy")
        check_clip(c, out, exact)
    if not exact:  # windows that start between key frames start earlier, and say so
        assert any(c["clip_start"] < c["start"] - 0.01 for c in clips) or \
            all(c["start"] in key_frame_times(Path(c["path"])) for c in clips)
    assert str(out / clips[0]["file"]) in proc.stdout
    assert len(list(otio.adapters.read_from_file(str(tmp_path / "c.otio")).find_clips())) == 6
    assert (tmp_path / "c.edl").read_text().count("FROM CLIP NAME") == 6


def test_a_window_between_key_frames_copies_from_the_key_frame(library: tuple[Path, Path], tmp_path: Path) -> None:
    from cliptool.api import Index
    from cliptool.writers.clips import write_clips

    index_dir, root = library
    index = Index.open(index_dir, text_runtime="numpy")
    record, scene = index.scene_at(root / "counter.mp4", 2.9)
    assert scene.start_time > 0  # counter.mp4 has one key frame, at 0
    hit = index.similar_scene(scene.scene_id, top=1)[0]
    hit = type(hit)(1, 1.0, record.path, scene.start_time, scene.end_time, scene.start_time, scene.scene_id,
                    scene.index, record.video_id)
    manifest = write_clips([hit], tmp_path / "c")
    clip = manifest["clips"][0]
    assert clip["clip_start"] == 0.0 and clip["clip_end"] == pytest.approx(scene.end_time, abs=0.11)
    check_clip(clip, tmp_path / "c", exact=False)
    exact = write_clips([hit], tmp_path / "e", exact=True)["clips"][0]
    check_clip(exact, tmp_path / "e", exact=True)
    assert exact["frames"] == round((scene.end_time - scene.start_time) * 10)


def _with_audio(path: Path, seconds: float = 3.0) -> None:
    import av

    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 160, 120, "yuv420p"
        v.options = {"g": "25"}
        a = out.add_stream("aac", rate=48000)
        a.layout = "stereo"
        for i in range(int(seconds * 25)):
            f = av.VideoFrame.from_ndarray(np.full((120, 160, 3), (i * 3) % 255, np.uint8), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 25)
            for p in v.encode(f):
                out.mux(p)
        t = np.arange(int(seconds * 48000)) / 48000
        samples = np.stack([np.sin(2 * np.pi * 440 * t)] * 2).astype(np.float32) * 0.2
        for start in range(0, samples.shape[1], 1024):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + 1024]), format="fltp",
                                           layout="stereo")
            f.sample_rate, f.pts, f.time_base = 48000, start, Fraction(1, 48000)
            for p in a.encode(f):
                out.mux(p)
        for stream in (v, a):
            for p in stream.encode(None):
                out.mux(p)


def test_audio_comes_along_in_both_modes(tmp_path: Path) -> None:
    import av

    from cliptool.search.searcher import Hit
    from cliptool.writers.clips import write_clips

    source = tmp_path / "tone.mp4"
    _with_audio(source)
    hit = Hit(1, 1.0, str(source), 1.4, 2.6, 1.5, "s", 0, "v")
    for exact in (False, True):
        manifest = write_clips([hit], tmp_path / f"out{exact}", exact=exact)
        clip = manifest["clips"][0]
        assert clip["clip_start"] == pytest.approx(1.4 if exact else 1.0, abs=1e-3)
        with av.open(str(tmp_path / f"out{exact}" / clip["file"])) as c:
            assert c.streams.audio, clip
            audio = sum(f.samples for f in c.decode(c.streams.audio[0])) / 48000
        assert audio == pytest.approx(clip["clip_end"] - clip["clip_start"], abs=0.1)


def test_clips_errors_are_one_line(library: tuple[Path, Path], tmp_path: Path) -> None:
    index_dir, _ = library  # `clips` through the CLI app in this process (run_here)
    one_line_error(run_here(index_dir, "clips", "bikes", "-o", tmp_path / "no" / "out"), 2, "does not exist")
    (tmp_path / "file").write_text("x")
    one_line_error(run_here(index_dir, "clips", "bikes", "-o", tmp_path / "file"), 2, "not a folder")
    one_line_error(run_here(index_dir, "clips", "", "-o", tmp_path / "o"), 2, "empty query")
    one_line_error(run_here(index_dir, "clips", "bikes", "-o", tmp_path / "o", "--edl", tmp_path / "x.txt"), 2, ".edl")
    assert not (tmp_path / "o").exists()


def _write_444(path: Path, frames: int = 100, size: tuple[int, int] = (320, 240)) -> None:
    """A moving picture as x264 High 4:4:4 Predictive, a key frame each second."""
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv444p"
        vs.options = {"g": "25", "crf": "18", "preset": "veryfast"}
        for i in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = (np.arange(w)[None, :] * 255 // w + 3 * i) % 256
            img[..., 1] = 40 + 5 * i % 100
            img[..., 2] = np.arange(h)[:, None] * 255 // h
            img[50:100, 2 * i % w:2 * i % w + 40] = (250, 40, 200)
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.profile == "High 4:4:4 Predictive"


def _remux(src: Path, dst: Path, from_time: float = 0.0) -> None:
    """The video packets of `src` into `dst` as they are, from the first key frame at or after
    `from_time` (a plain copy: nothing added)."""
    import av

    with av.open(str(src)) as c, av.open(str(dst), "w") as out:
        vs = c.streams.video[0]
        ovs = out.add_stream_from_template(vs)
        shift = None
        for packet in c.demux(vs):
            if packet.dts is None or (shift is None and not (packet.is_keyframe and packet.pts * vs.time_base >= from_time)):
                continue
            shift = packet.dts if shift is None else shift
            packet.pts, packet.dts, packet.stream = packet.pts - shift, packet.dts - shift, ovs
            out.mux(packet)


def _first_frames(path: Path, old_x264: bool = False) -> list[tuple[float, np.ndarray]]:
    """Decoded frames; old_x264: a decoder that takes a stream without x264's version SEI for one
    from x264 before build 151, as it must for such files (the 4:4:4 streams they made differ)."""
    import av

    with av.open(str(path)) as c:
        if old_x264:
            c.streams.video[0].codec_context.options = {"x264_build": "150"}
        return [(float(f.time), f.to_ndarray(format="rgb24").astype(np.int16)) for f in c.decode(video=0)]


@pytest.mark.parametrize("suffix", [".mp4", ".ts"])
def test_a_444_clip_from_the_middle_starts_with_the_sources_picture(tmp_path: Path, suffix: str) -> None:
    """x264 writes its version SEI once, in the first picture, and a decoder reads 4:4:4 streams
    from x264 before build 151 differently: a clip cut from the middle carries that SEI (and, in
    MPEG-TS, the parameter sets), so its first picture decodes as the source's does, not green."""
    from cliptool.writers.clips import copy_span

    source = tmp_path / "src444.mp4"
    _write_444(source)
    if suffix == ".ts":  # Annex B: parameter sets and SEI in-band
        _remux(source, tmp_path / "src444.ts")
        source = tmp_path / "src444.ts"
    source_frames = _first_frames(source)
    base = source_frames[0][0]
    at = {round(t - base, 3): rgb for t, rgb in source_frames}
    clip = tmp_path / f"clip{suffix}"
    start, end, frames = copy_span(source, clip, 2.3, 3.5)
    assert 1.0 < start <= 2.3 and frames >= 30
    for old_x264 in (False, True):
        decoded = _first_frames(clip, old_x264)
        assert len(decoded) == frames
        t0 = decoded[0][0]
        for t, rgb in decoded[:5]:
            assert np.abs(rgb - at[round(t - t0 + start, 3)]).mean() < 1.0, (old_x264, t)
    # the same packets without the SEI: that decoder starts them green (what the check above rules out)
    plain = tmp_path / f"plain{suffix}"
    _remux(source, plain, from_time=start + base)
    first = _first_frames(plain, old_x264=True)[0][1]
    assert np.abs(first - at[round(start, 3)]).mean() > 20
