"""Damage is found, never served (issue 26, part 2): bytes flipped at many places of every kind
of file of a real index (each store's tables, logs, MANIFEST and CURRENT; the search cache's
manifest and segment files; the text tower export and its marker; thumbnails; the generation
token; LevelDB's info log). For each: either `check` says what it found (exit 1, a named
problem), and `check --repair` then leaves an index that checks clean and searches with valid
results; or `check` finds nothing, and a search answers exactly what the undamaged index
answers (a damaged cache is rebuilt, said in one line). Each trial runs on a copy of one index.

CLIPTOOL_DAMAGE_ALL=1 flips at 24 places of every file instead of a dozen per kind."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cliptool.analysis import thumbnails
from cliptool.store import IndexStore

from conftest import make_samples, run_here
from fsmodel import ram_folder

PER_KIND = 4  # places flipped in the files of each kind (CLIPTOOL_DAMAGE_ALL=1: 24 in each file)


def _kind(rel: str) -> str:
    """The kind of an index file, by where it lives and its name."""
    parts = rel.split("/")
    name = parts[-1]
    if parts[0].endswith(".ldb"):
        for kind in ("MANIFEST", "CURRENT", "LOG"):
            if name.startswith(kind):
                return f"store {kind}"
        return "store " + name.rsplit(".", 1)[-1]  # .ldb tables, .log logs
    if parts[0] == "faiss":
        return "cache manifest" if name == "CURRENT" else f"cache {name}"
    if parts[0] == "textenc-onnx":
        return "text tower weights" if name.endswith(".data") else "text tower " + name.rsplit(".", 1)[-1]
    if parts[0] == "thumbnails":
        return "thumbnail"
    return name


def _files(index_dir: Path) -> dict[str, list[str]]:
    """Every non-empty file of the index that a reader may read, by kind."""
    found: dict[str, list[str]] = {}
    for path in sorted(index_dir.rglob("*")):
        rel = str(path.relative_to(index_dir))
        if path.is_file() and path.stat().st_size and not rel.endswith(("LOCK", ".lock")):
            found.setdefault(_kind(rel), []).append(rel)
    return found


def _trials(files: dict[str, list[str]], sizes: dict[str, int], per_kind: int, per_file: int | None
            ) -> list[tuple[str, int]]:
    """(file, offset) pairs: offsets spread evenly over each file (per_file), or over the files
    of each kind taken together (per_kind)."""
    out = []
    for rels in files.values():
        if per_file is not None:
            for rel in rels:
                n = min(per_file, sizes[rel])
                out += [(rel, sizes[rel] * k // n) for k in range(n)]
            continue
        total = sum(sizes[r] for r in rels)
        n = min(per_kind, total)
        for k in range(n):
            at = total * k // n + (total // n) // 2
            for rel in rels:
                if at < sizes[rel]:
                    out.append((rel, at))
                    break
                at -= sizes[rel]
    return out


def _copy(src: Path, dst: Path) -> None:
    """A copy of an index; large files hard-linked (no reader writes into a file it did not make)."""

    def link_or_copy(a: str, b: str) -> None:
        if os.path.getsize(a) > 1 << 20:
            os.link(a, b)
        else:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy)


def _flip(path: Path, at: int, count: int = 8) -> None:
    """Inverts `count` bytes from `at` (a new file: a hard-linked original stays whole)."""
    data = bytearray(path.read_bytes())
    for i in range(at, min(at + count, len(data))):
        data[i] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))


def _hits(index_dir: Path) -> tuple[list[tuple[str, float]], str]:
    proc = run_here(index_dir, "search", "a red circle", "-n", "6", "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)["results"]
    return [(h["scene_id"], round(h["score"], 4)) for h in results], proc.stderr


def _valid(index_dir: Path, hits: list[tuple[str, float]]) -> None:
    """Scores of cosines, and hits of scenes that the stores hold."""
    with IndexStore(index_dir) as store:
        scenes = {s.scene_id for v in store.videos() for s in store.scenes(v)}
    assert hits and all(-1.0 <= score <= 1.0 for _, score in hits), hits
    assert {sid for sid, _ in hits} <= scenes


@pytest.fixture(scope="module")
def built(model_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[tuple[str, float]]]]:
    """One real index of three clips (thumbnails, text tower export, search cache) and what a
    search of it answers."""
    with ram_folder(tmp_path_factory.mktemp("damage")) as work:
        yield _build(work, model_args)


def _build(work: Path, model_args: list[str]) -> tuple[Path, list[tuple[str, float]]]:
    folder = work / "videos"
    folder.mkdir()
    for i, colour in enumerate([(220, 30, 30), (30, 60, 220), (30, 200, 30)]):
        make_samples.write_clip(folder / f"clip {i}.mp4", [
            (make_samples.circle(colour, (250, 250, 250)), 20), (make_samples.stripes((0, 0, 0), colour), 20),
        ], size=(96, 64))
    index_dir = work / "index"
    proc = run_here(index_dir, "index", folder, *model_args)
    assert proc.returncode == 0, proc.stderr
    with IndexStore(index_dir) as store:  # records in each store's log (an open moves a log into a table)
        store.put_failure("0123456789abcdef", str(folder / "broken.mp4"), 1, 1.0, "no frames")
        store.recover(full=True)  # (its close writes to the scenes and embeddings stores)
    _copy(index_dir, work / "copy")  # opened there: the original keeps the stores' logs as the run left them
    assert run_here(work / "copy", "check").returncode == 0
    hits, _ = _hits(work / "copy")
    return index_dir, hits


def test_every_kind_of_index_file_is_found_damaged_or_harmless(built: tuple[Path, list[tuple[str, float]]]) -> None:
    index_dir, baseline = built
    files = _files(index_dir)
    for kind in ("store ldb", "store log", "store MANIFEST", "store CURRENT", "cache manifest", "cache flat.faiss",
                 "cache frames.npy", "cache table.npz", "cache videos.json", "cache meta.json", "thumbnail",
                 "textenc-onnx-model.json", "text tower weights", "generation"):
        assert kind in files, f"the index holds no {kind} file: {sorted(files)}"
    sizes = {rel: (index_dir / rel).stat().st_size for rels in files.values() for rel in rels}
    every = os.environ.get("CLIPTOOL_DAMAGE_ALL") == "1"
    trials = _trials(files, sizes, per_kind=PER_KIND, per_file=24 if every else None)
    found, harmless = 0, 0
    for n, (rel, at) in enumerate(trials):
        copy = index_dir.parent / f"t{n}"  # beside the index (its large files are linked)
        _copy(index_dir, copy)
        _flip(copy / rel, at)
        where = f"{rel} at byte {at}"
        check = run_here(copy, "check")
        assert "Traceback" not in check.stderr, where
        if check.returncode == 0:  # nothing found: the search must answer what the undamaged index does
            hits, said = _hits(copy)
            assert hits == baseline or ("rebuilt" in said and _valid(copy, hits) is None), (where, hits, said)
            harmless += 1
        else:
            assert check.returncode == 1 and "problem: " in check.stdout, (where, check.stdout, check.stderr)
            repaired = run_here(copy, "check", "--repair")
            assert repaired.returncode == 0, (where, repaired.stdout, repaired.stderr)
            again = run_here(copy, "check")
            assert again.returncode == 0 and again.stdout.rstrip().endswith("ok"), (where, again.stdout)
            if IndexStore(copy).exists() and any(True for _ in _stored(copy)):
                _valid(copy, _hits(copy)[0])
            found += 1
        shutil.rmtree(copy)
    assert found > len(trials) // 2, (found, harmless)  # most flips land in checked bytes


def _stored(index_dir: Path) -> list[str]:
    with IndexStore(index_dir) as store:
        return [v.video_id for v in store.videos()]


def test_a_damaged_thumbnail_is_made_again_and_said(built: tuple[Path, list[tuple[str, float]]],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    index_dir, _ = built
    copy = index_dir.parent / "thumbnail-copy"
    _copy(index_dir, copy)
    with IndexStore(copy) as store:
        record = next(iter(store.videos()))
        scene = store.scenes(record)[0]
    path = thumbnails.path_for(copy, scene.scene_id, 0)
    whole = thumbnails.verified(path.read_bytes())
    assert whole is not None and whole.endswith(b"\xff\xd9")
    _flip(path, len(whole) // 2, 4)
    check = run_here(copy, "check")  # the text output counts thumbnails, as --json does
    assert check.returncode == 1 and "thumbs:  0 missing, 0 extra, 0 deleted, 1 damaged" in check.stdout, check.stdout
    assert "problem: 1 thumbnail(s) fail their checksum" in check.stdout
    assert thumbnails.read(copy, scene.scene_id, 0) is None
    assert "thumbnail" in capsys.readouterr().err
    again = thumbnails.make(copy, record, scene, 0)
    assert again.startswith(b"\xff\xd8") and thumbnails.verified(path.read_bytes()) == again


def test_a_table_a_killed_compaction_left_half_written_is_no_damage(built: tuple[Path, list[tuple[str, float]]]) -> None:
    """A writer killed while LevelDB writes a table (a compaction's output, not yet in the
    MANIFEST) leaves a file that is no part of the store: `check` passes over it, a search
    answers as before, and LevelDB deletes it at the next open. The same bytes under a name
    the MANIFEST lists are damage."""
    index_dir, baseline = built
    copy = index_dir.parent / "half-written"
    _copy(index_dir, copy)
    store = copy / "embeddings.ldb"
    tables = sorted(store.glob("*.ldb"))
    newest = max(int(t.stem) for t in store.iterdir() if t.stem.isdigit())
    half = store / f"{newest + 1:06d}.ldb"
    half.write_bytes(tables[-1].read_bytes()[: tables[-1].stat().st_size // 2])
    check = run_here(copy, "check")
    assert check.returncode == 0 and check.stdout.rstrip().endswith("ok"), (check.stdout, check.stderr)
    hits, _ = _hits(copy)
    assert hits == baseline
    assert not half.exists()  # deleted by LevelDB at the search's open

    listed = tables[-1]  # still listed (the open wrote the store's log into a table of its own)
    listed.unlink()
    listed.write_bytes((index_dir / "embeddings.ldb" / listed.name).read_bytes()[: 1000])
    check = run_here(copy, "check")
    assert check.returncode == 1 and f"{listed.name}: its footer" in check.stdout, (check.stdout, check.stderr)
    assert "Traceback" not in check.stderr
    shutil.rmtree(copy)
