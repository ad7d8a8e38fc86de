"""`check --repair` on a video whose stored data is damaged: named, removed, and analysed again
from its file, so the index ends whole and the video is found again."""

from __future__ import annotations

import json
from pathlib import Path

import plyvel

from cliptool.store import IndexStore
from conftest import CliRun, ok


def test_repair_analyses_a_damaged_video_again(cli: CliRun, folder: Path, index_dir: Path,
                                               model_args: list[str]) -> None:
    ok(cli("index", folder, *model_args))
    with IndexStore(index_dir) as store:
        before = {v.path: v.scene_count for v in store.videos()}
        victim = next(iter(store.videos()))
    db = plyvel.DB(str(index_dir / "embeddings.ldb"))
    try:  # one vector record replaced by nonsense behind the store's back (bit rot that LevelDB's checksums miss)
        key = next(k for k, _ in db.iterator(prefix=f"{victim.video_id}/".encode()))
        db.put(key, b"CTV1 not a vector", sync=True)
    finally:
        db.close()
    found = cli("check")
    assert found.returncode == 1 and f"problem: {victim.path}" in found.stdout, found.stdout
    repaired = cli("check", "--repair", "--json")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    report = json.loads(repaired.stdout)
    assert report["removed"] == [victim.path] and report["reanalysed"] == [victim.path], report
    assert ok(cli("check")).stdout.rstrip().endswith("ok")
    with IndexStore(index_dir) as store:
        after = {v.path: v.scene_count for v in store.videos()}
    assert after == before
