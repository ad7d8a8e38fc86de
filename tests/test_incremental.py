"""Incremental indexing: skip, refresh, move, update, remove; `cliptool check`; mismatched indexes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import plyvel

from cliptool.index.check import check_index
from cliptool.models.spec import ModelSpec
from cliptool.index.indexer import index_paths
from cliptool.store import IndexStore, video_id_for
from cliptool.vectors.faiss import current_build

from conftest import make_samples, run_json


def _spec(tiny_model: tuple[Path, Path]) -> ModelSpec:
    config, ckpt = tiny_model
    return ModelSpec(str(config), str(ckpt))


def _index(folder: Path | list[Path], index_dir: Path, tiny_model: tuple[Path, Path], **kw: object):
    folders = folder if isinstance(folder, list) else [folder]
    return index_paths(folders, index_dir, _spec(tiny_model), report=lambda m: None, progress=False, **kw)


def _state(index_dir: Path) -> dict[str, tuple[str, list[tuple[float, float]], list[list[float]]]]:
    """path -> (version, scene spans, scene vectors) of every indexed video."""
    with IndexStore(index_dir) as store:
        return {
            v.path: (v.version, [(s.start_time, s.end_time) for s in store.scenes(v)],
                     [vec.scene.tolist() for vec in store.vectors(v)])
            for v in store.videos()
        }


def test_rerun_skips_touch_refreshes_change_updates(folder: Path, index_dir: Path, tiny_model) -> None:
    first = _index(folder, index_dir, tiny_model)
    assert (first.added, first.skipped, first.failed) == (3, 0, [])
    before = _state(index_dir)

    again = _index(folder, index_dir, tiny_model)
    assert (again.added, again.updated, again.moved, again.removed, again.skipped, again.scenes) == (0, 0, 0, 0, 3, 0)
    assert _state(index_dir) == before  # nothing rewritten

    # Touched (mtime only): unchanged content, the record takes the new mtime, nothing re-embedded.
    shapes = folder / "shapes.mp4"
    os.utime(shapes, (1_600_000_000, 1_600_000_000))
    touched = _index(folder, index_dir, tiny_model)
    assert (touched.skipped, touched.updated, touched.scenes) == (3, 0, 0)
    with IndexStore(index_dir) as store:
        assert store.get_video(video_id_for(shapes)).mtime == 1_600_000_000
    assert _state(index_dir) == before

    # Changed content: re-indexed under a new version, the old one deleted.
    make_samples.write_clip(shapes, [(make_samples.sky, 40)])
    changed = _index(folder, index_dir, tiny_model)
    assert (changed.updated, changed.skipped, changed.added) == (1, 2, 0)
    after = _state(index_dir)
    assert after[str(shapes)][0] != before[str(shapes)][0]
    assert len(after[str(shapes)][1]) == 1
    assert check_index(index_dir).ok


def test_move_keeps_embeddings_and_removal_prunes(folder: Path, index_dir: Path, tiny_model) -> None:
    _index(folder, index_dir, tiny_model)
    before = _state(index_dir)
    old = folder / "titles.mp4"
    new = folder / "sub dir" / "片名 \"quoted\" 'é'.mp4"
    new.parent.mkdir()
    os.rename(old, new)
    (folder / "outdoors.mp4").unlink()

    summary = _index(folder, index_dir, tiny_model)
    assert (summary.moved, summary.removed, summary.added, summary.skipped, summary.scenes) == (1, 1, 0, 1, 0)
    after = _state(index_dir)
    assert set(after) == {str(folder / "shapes.mp4"), str(new)}
    # Same scenes and vectors as before the move, now under the new path.
    assert after[str(new)][1:] == before[str(old)][1:]
    report = check_index(index_dir)
    assert report.ok and report.cache == "current" and report.videos == 2

    again = _index(folder, index_dir, tiny_model)
    assert (again.moved, again.removed, again.skipped) == (0, 0, 2)


def test_empty_folder_is_not_pruned_unless_asked(tmp_path: Path, sample_clips, index_dir: Path, tiny_model) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d, name in ((a, "shapes.mp4"), (b, "titles.mp4")):
        d.mkdir()
        shutil.copy2(sample_clips[name], d / name)
    _index([a, b], index_dir, tiny_model)
    (b / "titles.mp4").unlink()  # b now looks like an unmounted disk's mount point

    kept = _index([a, b], index_dir, tiny_model)
    assert (kept.removed, kept.kept_missing) == (0, 1)
    assert len(_state(index_dir)) == 2
    # A folder not indexed in this run is never pruned.
    _index([a], index_dir, tiny_model, prune=True)
    assert len(_state(index_dir)) == 2
    pruned = _index([a, b], index_dir, tiny_model, prune=True)
    assert pruned.removed == 1
    assert list(_state(index_dir)) == [str(a / "shapes.mp4")]


def test_no_prune_keeps_gone_files(folder: Path, index_dir: Path, tiny_model) -> None:
    _index(folder, index_dir, tiny_model)
    (folder / "outdoors.mp4").unlink()
    summary = _index(folder, index_dir, tiny_model, prune=False)
    assert (summary.removed, summary.kept_missing) == (0, 1)
    assert len(_state(index_dir)) == 3


def test_cli_summary_and_check_repair(folder: Path, index_dir: Path, cli, model_args, tiny_model) -> None:
    data = run_json(cli, "index", str(folder), *model_args)
    assert {k: data[k] for k in ("added", "updated", "moved", "removed", "skipped")} == {
        "added": 3, "updated": 0, "moved": 0, "removed": 0, "skipped": 0}
    plain = cli("index", str(folder))
    assert plain.returncode == 0
    assert "0 new, 0 updated, 0 moved, 0 removed, 3 unchanged, 0 failed" in plain.stderr
    assert run_json(cli, "check")["ok"] is True

    # Damage: an orphan vector, a video whose scene list is gone, a corrupt search cache.
    with IndexStore(index_dir) as store:
        victim = next(v for v in store.videos() if v.path.endswith("titles.mp4"))
        store._db("embeddings").put(b"0123456789abcdef/deadbeef/00000", b"junk")
        store._db("scenes").delete(f"s/{victim.video_id}/{victim.version}".encode())
    build = current_build(index_dir)
    (build / "flat.faiss").write_bytes(b"not a faiss index")

    proc = cli("check", "--json")
    assert proc.returncode == 1
    kinds = sorted(p["kind"] for p in json.loads(proc.stdout)["problems"])
    assert kinds == ["cache", "orphan", "video"]
    words = cli("check")
    assert words.returncode == 1 and "scene list is missing" in words.stdout and "Traceback" not in words.stderr

    fixed = cli("check", "--repair", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert all(p["repaired"] for p in json.loads(fixed.stdout)["problems"])
    assert json.loads(fixed.stdout)["reanalysed"] == [victim.path]  # removed, then analysed again from its file
    after = check_index(index_dir)
    assert after.ok and after.problems == [] and after.videos == 3 and after.cache == "current"
    redo = _index(folder, index_dir, tiny_model)
    assert (redo.added, redo.skipped) == (0, 3)
    assert check_index(index_dir).videos == 3


def test_other_model_or_schema_is_a_clear_error(folder: Path, index_dir: Path, cli, model_args, tmp_path,
                                               tiny_model) -> None:
    _index(folder / "shapes.mp4", index_dir, tiny_model)
    other = make_samples.write_tiny_model(tmp_path / "other-model", seed=1)
    proc = cli("index", str(folder), "--model", str(other[0]), "--pretrained", str(other[1]))
    assert proc.returncode == 5
    assert "was built with model" in proc.stderr and "new --index-dir" in proc.stderr
    assert "Traceback" not in proc.stderr

    db = plyvel.DB(str(index_dir / "scenes.ldb"))
    db.put(b"!schema", b"0")
    db.close()
    proc = cli("status")
    assert proc.returncode == 5
    assert "schema version 0" in proc.stderr and "new --index-dir" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
