"""One file is one record, however its path is spelled: `..`, symbolic links, older indexes."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path


from cliptool.index.check import check_index
from cliptool.models.spec import ModelSpec
from cliptool.index.indexer import index_paths
from cliptool.store import IndexStore, VideoRecord, real_path, video_id_for

from conftest import run_json


def _index(paths: list[Path], index_dir: Path, tiny_model: tuple[Path, Path], **kw: object):
    config, ckpt = tiny_model
    return index_paths(paths, index_dir, ModelSpec(str(config), str(ckpt)), report=lambda m: None,
                       progress=False, **kw)


def _paths(index_dir: Path) -> list[str]:
    with IndexStore(index_dir) as store:
        return sorted(v.path for v in store.videos())


def test_dot_dot_and_symlinks_name_the_same_records(tmp_path: Path, folder: Path, index_dir: Path, tiny_model) -> None:
    link = tmp_path / "link"
    link.symlink_to(folder)
    first = _index([folder / ".." / folder.name], index_dir, tiny_model)
    assert first.added == 3
    want = sorted(str(p) for p in folder.resolve().iterdir())
    assert _paths(index_dir) == want  # stored under their real paths
    for spelling in (folder, link, link / ".." / "videos"):
        again = _index([spelling], index_dir, tiny_model)
        assert (again.added, again.updated, again.moved, again.removed, again.skipped) == (0, 0, 0, 0, 3)
    assert _paths(index_dir) == want
    # Pruning agrees: a file removed and the folder walked through the link is pruned once.
    victim = sorted(folder.iterdir())[0]
    victim.unlink()
    pruned = _index([link], index_dir, tiny_model)
    assert (pruned.removed, pruned.skipped) == (1, 2)
    assert _paths(index_dir) == [p for p in want if p != str(victim)]
    assert check_index(index_dir).ok


def test_lookups_by_path_agree_on_the_real_file(tmp_path: Path, folder: Path, index_dir: Path, cli, model_args) -> None:
    link = tmp_path / "link"
    link.symlink_to(folder)
    cli("index", str(folder), *model_args, check=True)
    name = sorted(p.name for p in folder.iterdir())[0]
    direct = run_json(cli, "scenes", str(folder / name))
    for spelling in (link / name, folder / ".." / "videos" / name):
        assert run_json(cli, "scenes", str(spelling)) == direct
    frame = tmp_path / "frame.png"
    run_json(cli, "export-frame", "anything", "--video", str(link / name), "-o", str(frame))
    assert frame.is_file()


def _legacy_id(path: Path) -> str:
    """The id an index made before real paths gave a file: its absolute path as spelled."""
    return hashlib.blake2b(str(path.absolute()).encode(), digest_size=8).hexdigest()


def _add_duplicate(index_dir: Path, original: str, spelling: Path) -> None:
    """Files a copy of a stored video under another spelling of its path, as older versions did."""
    with IndexStore(index_dir) as store:
        rec = store.get_video(video_id_for(original))
        assert rec is not None
        scenes, vectors = store.scenes(rec), store.vectors(rec)
        copy = VideoRecord(**{**asdict(rec), "video_id": _legacy_id(spelling), "path": str(spelling.absolute())})
        store.put_video(copy, scenes, vectors)


def test_check_reports_and_repairs_duplicates(tmp_path: Path, folder: Path, index_dir: Path, tiny_model, cli) -> None:
    link = tmp_path / "link"
    link.symlink_to(folder)
    _index([folder], index_dir, tiny_model)
    name = sorted(p.name for p in folder.iterdir())[0]
    _add_duplicate(index_dir, str(folder / name), link / name)
    _add_duplicate(index_dir, str(folder / name), folder / ".." / "videos" / name)
    assert len(_paths(index_dir)) == 5

    report = check_index(index_dir)
    assert not report.ok
    identity = [p for p in report.problems if p.kind == "identity"]
    assert len(identity) == 2 and all("duplicate of" in p.message for p in identity)
    proc = cli("check")
    assert proc.returncode == 1 and "duplicate of" in proc.stdout

    proc = cli("check", "--repair", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ok"]
    assert _paths(index_dir) == sorted(str(p) for p in folder.resolve().iterdir())
    assert check_index(index_dir).ok
    hits = run_json(cli, "search", "anything", "--videos", "-n", "10")["results"]
    assert len(hits) == 3


def test_the_next_index_run_repairs_duplicates_and_old_ids(tmp_path: Path, folder: Path, index_dir: Path, tiny_model) -> None:
    link = tmp_path / "link"
    link.symlink_to(folder)
    _index([folder], index_dir, tiny_model)
    names = sorted(p.name for p in folder.iterdir())
    _add_duplicate(index_dir, str(folder / names[0]), link / names[0])
    # An old index's record of a file seen through a link: its only record, under the old id.
    with IndexStore(index_dir) as store:
        rec = store.get_video(video_id_for(folder / names[1]))
        scenes, vectors = store.scenes(rec), store.vectors(rec)
        old = VideoRecord(**{**asdict(rec), "video_id": _legacy_id(link / names[1]), "path": str(link / names[1])})
        store.delete_video(rec.video_id)
        store.put_video(old, scenes, vectors)
        kept_vectors = [v.scene.tolist() for v in vectors]
    run = _index([link], index_dir, tiny_model)
    assert (run.added, run.updated) == (0, 0)  # nothing decoded again
    assert _paths(index_dir) == sorted(real_path(folder / n) for n in names)
    with IndexStore(index_dir) as store:
        refiled = store.get_video(video_id_for(folder / names[1]))
        assert refiled is not None and [v.scene.tolist() for v in store.vectors(refiled)] == kept_vectors
    assert check_index(index_dir).ok
