"""Durable ordering (issue 26, part 1): every file a manifest names is synced, with its folder,
before the manifest that names it replaces the old one; `stores.clean` comes after the stores'
synced writes; the generation token is durable before a commit. Read from what real processes
did (strace: every write, sync and rename of an index run and of merges), and then, at every
step of those runs, what a crash would have left is opened: `check` finds it clean (or
repairs it), searches answer, and nothing committed is lost."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cliptool.index.check import check_index
from cliptool.store import IndexStore
from cliptool.vectors.faiss import load_vector_index

from conftest import REPO, make_samples, run_here
from fsmodel import Call, Model, fd_path, ram_folder, read_log, replay, strace_available, strace_string, traced

pytestmark = pytest.mark.skipif(not strace_available(), reason="strace is not available here")

CRASH_POINTS = int(os.environ.get("CLIPTOOL_CRASH_POINTS", "12"))  # steps of each traced run a crash is simulated at

_MERGES = """
import sys, random
import numpy as np
from pathlib import Path
sys.path.insert(0, sys.argv[2])
import cliptool.vectors.faiss.sync as sync
from cliptool.store import IndexStore, generation
from cliptool.vectors.faiss import sync_cache
from test_incremental_cache import put
sync.COMPACT_DELTAS, sync.MAX_DELTAS = 3.0, 3
root = Path(sys.argv[1])
rng, pick = np.random.default_rng(5), random.Random(5)
with IndexStore(root) as store:
    vids = sorted(r.video_id for r in store.videos())
for step in range(10):
    since = generation(root)
    with IndexStore(root) as store:
        if step % 2 == 1:
            vid = vids.pop(0)
            store.delete_video(vid)
        else:
            vid = f"n{step:03d}"
            put(store, vid, 40, rng)
            vids.append(vid)
    sync_cache(root, [vid], since=since)
"""


def _relative(model: Model, path: str) -> str:
    return re.sub(r"[0-9a-f]{8,}", "<id>", path[len(model.root) + 1:])


def _named_segments(data: bytes) -> list[str]:
    try:
        return [s["name"] for s in json.loads(data)["segments"]]
    except (ValueError, KeyError, TypeError):
        return []


def _path_args(call: Call, model: Model) -> tuple[str | None, str | None]:
    """(source, target) of a rename; (path, None) of an unlink or rmdir."""
    a = call.args
    if call.name == "rename":
        return model.resolve("", strace_string(a[0])), model.resolve("", strace_string(a[1]))
    if call.name in ("renameat", "renameat2"):
        return model.resolve(a[0], strace_string(a[1])), model.resolve(a[2], strace_string(a[3]))
    if call.name in ("unlink", "rmdir"):
        return model.resolve("", strace_string(a[0])), None
    if call.name == "unlinkat":
        return model.resolve(a[0], strace_string(a[1])), None
    return None, None


def _durable_segments(model: Model) -> list[str]:
    """The segments the faiss/CURRENT a crash now would leave names."""
    faiss = model.node(f"{model.root}/faiss")
    current = faiss.synced_entries.get("CURRENT") if faiss is not None else None
    return _named_segments(current.synced or b"") if current is not None else []


def audit(model: Model, calls: list[Call]) -> list[str]:
    """What was out of order in `calls` (each kind of fault said once)."""
    problems: list[str] = []
    root = model.root

    def say(text: str) -> None:
        if text not in problems:
            problems.append(text)

    def must_be_durable(path: str, why: str) -> None:
        node = model.node(path)
        if node is not None and not node.is_dir and not node.clean():
            say(f"{_relative(model, path)} not synced before {why}")
        for folder, name in model.chain(path):
            if not folder.entry_clean(name):
                say(f"the name {name!r} on the way to {_relative(model, path)} not synced (its folder) before {why}")
                break

    def before(m: Model, call: Call) -> None:
        if call.result < 0:
            return
        src, dst = _path_args(call, m)
        if dst == f"{root}/faiss/CURRENT":
            tmp = m.node(src or "")
            if tmp is not None and not tmp.clean():
                say("the new faiss/CURRENT not synced before it replaced the old one")
            for name in _named_segments(bytes(tmp.data) if tmp else b""):
                for path, _ in m.files_under(f"{root}/faiss/{name}"):
                    must_be_durable(path, "faiss/CURRENT named it")
        if dst == f"{root}/textenc-onnx-model.json":
            tmp = m.node(src or "")
            if tmp is not None and not tmp.clean():
                say("textenc-onnx-model.json not synced before it was renamed into place")
            for path, _ in m.files_under(f"{root}/textenc-onnx"):
                must_be_durable(path, "textenc-onnx-model.json named it")
        if dst is not None and dst.startswith(f"{root}/thumbnails/") and dst.endswith(".jpg"):
            tmp = m.node(src or "")
            if tmp is not None and not tmp.clean():
                say("a thumbnail not synced before it was renamed into place")
        if dst is None and src is not None and src.startswith(f"{root}/faiss/"):  # an unlink or rmdir
            if any(src == f"{root}/faiss/{n}" or src.startswith(f"{root}/faiss/{n}/") for n in _durable_segments(m)):
                say("a segment the durable faiss/CURRENT names was deleted before the manifest replacing it was durable")
        flags = call.args[2] if call.name == "openat" else (call.args[1] if call.name == "open" else "")
        if call.result_path == f"{root}/stores.clean" and "O_CREAT" in flags:
            for store in ("scenes", "embeddings"):
                for path, node in m.files_under(f"{root}/{store}.ldb"):
                    if path.endswith(".log") and not node.clean():
                        say(f"stores.clean written before a synced write to {store}.ldb")
        if call.name in ("fsync", "fdatasync"):
            path = fd_path(call.args[0]) or ""
            if path.startswith(f"{root}/videos.ldb/") and path.endswith(".log") and m.node(f"{root}/generation") is not None:
                must_be_durable(f"{root}/generation", "a commit to videos.ldb")
                if not m.durable_path(path):
                    say(f"the name {_relative(m, path)} not durable when it was synced")

    replay(Path(root), calls, before=before, start=model)
    if model.node(f"{root}/stores.clean") is not None:
        must_be_durable(f"{root}/stores.clean", "the end of the run")
    for path, _ in model.files_under(f"{root}/thumbnails"):
        must_be_durable(path, "the end of the run")
    return problems


def _env(index_dir: Path) -> dict[str, str]:
    return {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def three_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("durable-videos")
    for i, colour in enumerate([(220, 30, 30), (30, 60, 220), (30, 200, 30)]):
        make_samples.write_clip(out / f"clip {i}.mp4", [
            (make_samples.circle(colour, (250, 250, 250)), 20), (make_samples.stripes((0, 0, 0), colour), 20),
        ], size=(96, 64))
    return out


@pytest.fixture(scope="module")
def index_trace(three_clips: Path, model_args: list[str], tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Path, Path, list[Call]]:
    """A real `cliptool index` run of three clips into a new index, traced."""
    work = tmp_path_factory.mktemp("durable-index")
    warm = subprocess.run([sys.executable, "-m", "cliptool", "--index-dir", str(work / "warm"), "index",
                           str(three_clips), *model_args], capture_output=True, text=True, env=_env(work / "warm"))
    assert warm.returncode == 0, warm.stderr  # the towers exported into the cache, untraced
    index_dir = work / "index"
    proc = traced([sys.executable, "-m", "cliptool", "--index-dir", str(index_dir), "index", str(three_clips),
                   *model_args], work / "index.strace", _env(index_dir))
    assert proc.returncode == 0, proc.stderr
    return index_dir, work / "before", read_log(work / "index.strace")


@pytest.fixture(scope="module")
def merge_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[Call]]:
    """Commits, delta segments, merges and a compaction into a new base with an approximate
    index (CLIPTOOL_VECTOR_INDEX=approx), traced."""
    from test_incremental_cache import put
    from cliptool.vectors.faiss import sync_cache

    work = tmp_path_factory.mktemp("durable-merges")
    index_dir = work / "index"
    rng = np.random.default_rng(1)
    with IndexStore(index_dir, create=True) as store:
        store.bind_model("m", {"name": "m", "pretrained": "p"})
        for i in range(13):
            put(store, f"v{i:03d}", 100, rng)
    env = {**_env(index_dir), "CLIPTOOL_VECTOR_INDEX": "approx"}
    os.environ["CLIPTOOL_VECTOR_INDEX"] = "approx"
    try:
        sync_cache(index_dir)
    finally:
        os.environ.pop("CLIPTOOL_VECTOR_INDEX")
    shutil.copytree(index_dir, work / "before")
    proc = traced([sys.executable, "-c", _MERGES, str(index_dir), str(REPO / "tests")], work / "merge.strace", env)
    assert proc.returncode == 0, proc.stderr
    return index_dir, work / "before", read_log(work / "merge.strace")


def test_an_index_run_syncs_what_each_manifest_names_before_it(index_trace: tuple[Path, Path, list[Call]]) -> None:
    index_dir, before, calls = index_trace
    assert any(c.name.startswith("rename") and "faiss/CURRENT" in " ".join(c.args) for c in calls)
    found = audit(Model(index_dir, before), calls)
    assert found == [], "\n".join(found)


def test_merges_sync_what_each_manifest_names_before_it(merge_trace: tuple[Path, Path, list[Call]]) -> None:
    index_dir, before, calls = merge_trace
    assert any("approx.faiss" in " ".join(c.args) for c in calls)  # the traced run wrote an approximate index
    found = audit(Model(index_dir, before), calls)
    assert found == [], "\n".join(found)


# -- what a crash at each step leaves ----------------------------------------------------------------
def _crash_points(model_root: str, calls: list[Call], most: int) -> set[int]:
    """Calls after which to crash: every manifest replacement and sync inside the index, thinned
    evenly to `most` (the first and last always kept)."""
    inside = [i for i, c in enumerate(calls) if c.result >= 0 and model_root in " ".join(c.args + [c.result_path or ""])
              and (c.name.startswith("rename") or c.name in ("fsync", "fdatasync", "unlink", "unlinkat"))]
    if len(inside) <= most:
        return set(inside)
    step = len(inside) / (most - 1)
    return {inside[min(len(inside) - 1, round(k * step))] for k in range(most)} | {inside[-1]}


def _stored(index_dir: Path) -> dict[str, int]:
    if not IndexStore(index_dir).exists():
        return {}
    with IndexStore(index_dir) as store:
        return {v.video_id: v.scene_count for v in store.videos()}


def _open_after_crash(copy: Path, committed: dict[str, int], search: bool) -> None:
    """`check` is clean or repairs it; a search answers with real rows; no committed video lost."""
    if not IndexStore(copy).exists():
        assert not committed, "committed videos lost with the stores"
        return
    had_clean_marker = (copy / "stores.clean").exists()
    report = check_index(copy)
    if had_clean_marker:
        assert not [p for p in report.problems if p.kind == "orphan"], "stores.clean present with orphans"
    if not report.ok:
        assert check_index(copy, repair=True).ok
        assert check_index(copy).ok
    stored = _stored(copy)
    for vid, scenes in committed.items():
        assert stored.get(vid) == scenes, f"committed video {vid} lost or changed"
    if not stored:
        return
    index = load_vector_index(copy)
    assert index.size == sum(stored.values())
    query = np.ones(index.dim, np.float32) / np.sqrt(index.dim)
    scores, rows = index.scores(query, 5)
    assert len(rows) and np.all(np.abs(scores) <= 1.0 + 1e-4)
    assert {index.position(int(r)).video_id for r in rows} <= set(stored)
    if search:
        proc = run_here(copy, "search", "a red circle", "--json")
        assert proc.returncode == 0, proc.stderr
        hits = json.loads(proc.stdout)["results"]
        assert hits and all(-1.0 <= h["score"] <= 1.0 for h in hits)


def _crash_everywhere(index_dir: Path, before: Path, calls: list[Call], work: Path, most: int, search: bool) -> int:
    model = Model(index_dir, before)
    model.blobs = work / "blobs"
    points = _crash_points(model.root, calls, most)
    committed: dict[str, int] = {}
    done = 0
    for i, call in enumerate(calls):
        model.apply(call)
        path = (fd_path(call.args[0]) or "") if call.args else ""
        if call.name in ("fsync", "fdatasync") and path.startswith(f"{model.root}/videos.ldb/") and path.endswith(".log"):
            now = work / f"now-{i}"
            model.current_copy(now)  # a commit was synced: what it holds is committed from here on
            committed = _stored(now)
            shutil.rmtree(now)
        if i in points:
            copy = work / f"crash-{i}"
            model.crash_copy(copy)
            _open_after_crash(copy, committed, search and done % 5 == 4)
            shutil.rmtree(copy)
            done += 1
    assert committed, "the run committed nothing the simulation saw"
    return done


def test_a_crash_at_any_step_of_an_index_run_loses_nothing_committed(
        index_trace: tuple[Path, Path, list[Call]], tmp_path: Path) -> None:
    index_dir, before, calls = index_trace
    with ram_folder(tmp_path) as work:
        assert _crash_everywhere(index_dir, before, calls, work, CRASH_POINTS, True) >= CRASH_POINTS - 1


def test_a_crash_at_any_step_of_merges_loses_nothing_committed(
        merge_trace: tuple[Path, Path, list[Call]], tmp_path: Path) -> None:
    index_dir, before, calls = merge_trace
    with ram_folder(tmp_path) as work:
        assert _crash_everywhere(index_dir, before, calls, work, CRASH_POINTS, False) >= CRASH_POINTS - 1
