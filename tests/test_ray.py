"""Indexing on a real local Ray cluster (two nodes of one CPU each on this machine) against a
local run of the same folder: identical stores, a worker killed mid-video, a node removed
mid-run, and a bad address."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_samples, one_line_error, run

ray = pytest.importorskip("ray")

LONG_CLIP = "long.mp4"


def options() -> Any:
    """The default options: a file's batches of frames are the same in any run (int8 sets its
    activation ranges per batch), so the cluster's vectors equal a local run's."""
    from cliptool.config import IndexOptions

    return IndexOptions()


@pytest.fixture(scope="module")
def cluster() -> Any:
    """A head node and one more node, one CPU each; this process is connected as a driver.
    Fast health checks, so a removed node is declared dead in a second or two."""
    from ray.cluster_utils import Cluster

    config = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 300, "health_check_failure_threshold": 3}
    cl = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                        "_system_config": config})
    cl.add_node(num_cpus=1)
    ray.init(address=cl.address, logging_level="ERROR", log_to_driver=False)
    yield cl
    ray.shutdown()
    cl.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory, sample_clips: dict[str, Path]) -> Path:
    """The sample clips and a longer one (the clip a worker is killed on)."""
    folder = tmp_path_factory.mktemp("ray-videos")
    for name, src in sample_clips.items():
        shutil.copy2(src, folder / name)
    painters = [painter for segments in make_samples.SAMPLES.values() for painter, _ in segments]
    make_samples.write_clip(folder / LONG_CLIP, [(p, 60) for p in painters])
    return folder


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, videos: Path, model_args: list[str]) -> dict[str, Any]:
    """The stores of a local run of the folder, as `contents` reads them."""
    from cliptool import Index

    index_dir = tmp_path_factory.mktemp("ray-local") / "index"
    summary = Index.open(index_dir).index([videos], model=model_args[1], pretrained=model_args[3], progress=False,
                                          options=options())
    assert summary.added == 4 and not summary.failed and summary.workers == 1
    return contents(index_dir)


def contents(index_dir: Path) -> dict[str, Any]:
    """Every video's record, scenes and vectors through the store's read API. Left out: what
    differs between any two runs (commit time, the version token inside scene ids)."""
    from cliptool.store import IndexStore

    out: dict[str, Any] = {}
    with IndexStore(index_dir) as store:
        for record in store.videos():
            scenes = store.scenes(record)
            fields = {k: v for k, v in record.__dict__.items() if k not in ("indexed_at", "version")}
            out[record.video_id] = {
                "record": fields,
                "scenes": [{**s.__dict__, "scene_id": s.scene_id.split("/")[0] + "/" + s.scene_id.split("/")[-1]}
                           for s in scenes],
                "vectors": store.vectors(record),
            }
            assert all(s.scene_id.startswith(f"{record.video_id}/{record.version}/") for s in scenes)
        assert not store.failures()
    return out


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want)
    for vid, video in want.items():
        assert got[vid]["record"] == video["record"]
        assert got[vid]["scenes"] == video["scenes"]
        assert len(got[vid]["vectors"]) == len(video["vectors"])
        for a, b in zip(got[vid]["vectors"], video["vectors"]):
            np.testing.assert_allclose(a.scene, b.scene, atol=1e-5)
            np.testing.assert_allclose(a.frames, b.frames, atol=1e-5)


def analysing(clip: str | None = None) -> list[tuple[int, int]]:
    """(pid, parent pid) of the Ray workers analysing a video now (`clip`: that one): Ray names
    a worker process after the task it runs, here `ray::analyse NAME`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if cmdline.startswith("ray::analyse ") and (clip is None or cmdline.strip() == f"ray::analyse {clip}"):
            found.append((int(entry), parent))
    return found


def index_in_background(index_dir: Path, videos: Path, model_args: list[str], address: str,
                        messages: list[str]) -> tuple[threading.Thread, dict[str, Any]]:
    """Starts a Ray index run of `videos` in a thread of this (connected) process."""
    from cliptool import Index

    out: dict[str, Any] = {}

    def work() -> None:
        try:
            out["summary"] = Index.open(index_dir).index([videos], model=model_args[1], pretrained=model_args[3],
                                                         progress=False, ray=address, report=messages.append,
                                                         options=options())
        except BaseException as exc:  # noqa: BLE001 - raised again by the test
            out["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, out


def wait_for(find: Any, thread: threading.Thread, limit: float = 60.0) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and thread.is_alive():
        found = find()
        if found:
            return found
        time.sleep(0.01)
    raise AssertionError("the run never got there")


def finished(thread: threading.Thread, out: dict[str, Any]) -> Any:
    thread.join(timeout=120)
    assert not thread.is_alive(), "the run did not finish"
    if "error" in out:
        raise out["error"]
    return out["summary"]


def test_ray_run_matches_local_run(cluster: Any, videos: Path, model_args: list[str], local_run: dict[str, Any],
                                   tmp_path: Path) -> None:
    import json

    from cliptool import Index

    index_dir = tmp_path / "index"
    summary = Index.open(index_dir).index([videos], model=model_args[1], pretrained=model_args[3], progress=False,
                                          ray=cluster.address, options=options())
    assert summary.added == 4 and not summary.failed and summary.retried == 0
    assert 1 <= summary.workers <= 2
    assert_same(contents(index_dir), local_run)
    # the command line, and a driver that left: the next run goes on from what was committed
    proc = run(index_dir, "index", videos, *model_args, "--ray", cluster.address, "--json")
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["skipped"] == 4 and again["added"] == 0 and again["workers"] == 0


def test_worker_killed_mid_video(cluster: Any, videos: Path, model_args: list[str], local_run: dict[str, Any],
                                 tmp_path: Path) -> None:
    messages: list[str] = []
    thread, out = index_in_background(tmp_path / "index", videos, model_args, cluster.address, messages)
    (pid, _), *_ = wait_for(lambda: analysing(LONG_CLIP), thread)
    os.kill(pid, signal.SIGKILL)
    summary = finished(thread, out)
    assert summary.retried >= 1 and (summary.added, summary.updated) == (4, 0) and not summary.failed  # once each
    assert any("worker died analysing" in m and LONG_CLIP in m for m in messages), messages
    assert_same(contents(tmp_path / "index"), local_run)


def test_node_removed_mid_run(cluster: Any, videos: Path, model_args: list[str], local_run: dict[str, Any],
                              tmp_path: Path) -> None:
    node = cluster.list_all_nodes()[1]  # not the head
    raylet = node.all_processes["raylet"][0].process.pid
    messages: list[str] = []
    thread, out = index_in_background(tmp_path / "index", videos, model_args, cluster.address, messages)
    wait_for(lambda: [p for p, parent in analysing() if parent == raylet], thread)
    cluster.remove_node(node)
    summary = finished(thread, out)
    assert summary.retried >= 1 and (summary.added, summary.updated) == (4, 0) and not summary.failed, messages
    assert_same(contents(tmp_path / "index"), local_run)


def test_unreachable_address_is_one_line(videos: Path, model_args: list[str], tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = run(tmp_path / "index", "index", videos, *model_args, "--ray", f"127.0.0.1:{port}")
    one_line_error(proc, 10, f"cannot reach the Ray cluster at 127.0.0.1:{port}")
    assert not (tmp_path / "index").exists()
    from cliptool import Index, UsageError

    with pytest.raises(UsageError, match="--ray takes auto, ray://HOST:PORT or HOST:PORT"):
        Index.open(tmp_path / "index").index([videos], ray="nowhere")
