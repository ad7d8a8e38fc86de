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


def _links(index_dir: Path) -> dict[str, list[str]]:
    with IndexStore(index_dir) as store:
        return {v.path: v.links for v in store.videos()}


def test_a_link_gone_from_the_walk_prunes_what_it_led_to(tmp_path: Path, index_dir: Path, tiny_model) -> None:
    """A video found through a symbolic link is stored once under its real path and pruned when
    the walk of the link's folder no longer finds it that way, though the file is still there."""
    from conftest import make_samples

    outside = (tmp_path / "videos").resolve()  # the real files, never walked as a folder
    (outside / "sub").mkdir(parents=True)
    for name, painter in [("shapes.mp4", make_samples.circle((220, 30, 30), (250, 250, 250))),
                          ("outdoors.mp4", make_samples.sky), ("titles.mp4", make_samples.text("HI", (255, 255, 255), (0, 0, 0)))]:
        make_samples.write_clip(outside / name, [(painter, 20)], size=(160, 120))
    make_samples.write_clip(outside / "sub" / "deep.mp4", [(make_samples.stripes((0, 0, 0), (30, 60, 220)), 20)],
                            size=(160, 120))
    make_samples.write_clip(outside / "later-deleted.mp4", [(make_samples.circle((30, 200, 30), (0, 0, 0)), 20)],
                            size=(160, 120))
    walked = (tmp_path / "walked").resolve()
    walked.mkdir()
    make_samples.write_clip(walked / "own.mp4", [(make_samples.stripes((0, 0, 0), (200, 30, 30)), 20)], size=(160, 120))
    links = {"shapes-a.mp4": outside / "shapes.mp4", "shapes-b.mp4": outside / "shapes.mp4",
             "outdoors.mp4": outside / "outdoors.mp4", "own-again.mp4": walked / "own.mp4",
             "dangling.mp4": outside / "later-deleted.mp4"}
    for name, target in links.items():
        (walked / name).symlink_to(target)
    (walked / "folder-link").symlink_to(outside / "sub", target_is_directory=True)
    first = _index([walked, outside / "titles.mp4", walked / "outdoors.mp4"], index_dir, tiny_model)
    assert (first.added, first.failed) == (6, [])
    w = str(walked)
    assert _links(index_dir) == {  # one record per real file, with the links that found it
        str(outside / "shapes.mp4"): [f"{w}/shapes-a.mp4", f"{w}/shapes-b.mp4"],
        str(outside / "outdoors.mp4"): [f"{w}/outdoors.mp4"],
        str(outside / "titles.mp4"): [],  # found at its own path only
        str(outside / "sub" / "deep.mp4"): [f"{w}/folder-link/deep.mp4"],
        str(outside / "later-deleted.mp4"): [f"{w}/dangling.mp4"],
        str(walked / "own.mp4"): [f"{w}/own-again.mp4", f"{w}/own.mp4"],
    }
    # one of two links gone: the record stays, with the other; a link into the folder itself gone
    (walked / "shapes-a.mp4").unlink()
    (walked / "own-again.mp4").unlink()
    (outside / "later-deleted.mp4").unlink()  # the link dangles
    run = _index([walked], index_dir, tiny_model)
    assert (run.added, run.updated, run.moved, run.removed) == (0, 0, 0, 1)
    got = _links(index_dir)
    assert str(outside / "later-deleted.mp4") not in got
    assert got[str(outside / "shapes.mp4")] == [f"{w}/shapes-b.mp4"] and got[str(walked / "own.mp4")] == []
    # the last link to a file, a linked folder, a link named as a file to index: gone, and their
    # records pruned, the files untouched
    (walked / "shapes-b.mp4").unlink()
    (walked / "folder-link").unlink()
    (walked / "outdoors.mp4").unlink()
    messages: list[str] = []
    config, ckpt = tiny_model
    run = index_paths([walked], index_dir, ModelSpec(str(config), str(ckpt)), report=messages.append, progress=False)
    assert (run.added, run.updated, run.removed) == (0, 0, 3)
    assert f"removed {outside / 'shapes.mp4'} (no link to it is left)" in messages
    assert (outside / "shapes.mp4").is_file() and (outside / "sub" / "deep.mp4").is_file()
    assert _links(index_dir) == {str(outside / "titles.mp4"): [], str(walked / "own.mp4"): []}
    # titles, named at its own path once, keeps its record when a link to it comes and goes;
    # --no-prune keeps a record whose link is gone
    (walked / "titles-link.mp4").symlink_to(outside / "titles.mp4")
    (walked / "deep.mp4").symlink_to(outside / "sub" / "deep.mp4")
    run = _index([walked], index_dir, tiny_model)
    assert (run.added, run.removed) == (1, 0)
    assert _links(index_dir)[str(outside / "titles.mp4")] == sorted([f"{w}/titles-link.mp4", str(outside / "titles.mp4")])
    (walked / "titles-link.mp4").unlink()
    (walked / "deep.mp4").unlink()
    kept = _index([walked], index_dir, tiny_model, prune=False)
    assert kept.removed == 0 and str(outside / "sub" / "deep.mp4") in _links(index_dir)
    (walked / "deep.mp4").symlink_to(outside / "shapes.mp4")  # the same link, to another file now
    pruned = _index([walked], index_dir, tiny_model)
    assert (pruned.removed, pruned.added) == (1, 1)
    assert _links(index_dir) == {str(outside / "titles.mp4"): [], str(walked / "own.mp4"): [],
                                 str(outside / "shapes.mp4"): [f"{w}/deep.mp4"]}
    assert check_index(index_dir).ok
