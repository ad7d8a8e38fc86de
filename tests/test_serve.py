"""`cliptool serve`: every API route against a real uvicorn server over a real index, Range
requests, the token, the Host check, traversal attempts, bad uploads and parameters, and
concurrent requests while `cliptool index` commits more videos."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

import cliptool
from cliptool.analysis import thumbnails
from cliptool.index.check import check_index
from cliptool.serve import create_app, server_config

from conftest import make_samples

KEYS = {"rank", "score", "path", "start", "end", "best_time", "scene_id", "scene_index", "video_id"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, index_dir: Path, *, host: str = "127.0.0.1", token: str | None = None) -> None:
        import uvicorn

        self.port = free_port()
        app = create_app(index_dir, host=host, port=self.port, token=token)
        self.server = uvicorn.Server(server_config(app, "127.0.0.1", self.port))  # `cliptool serve`'s settings
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, sample_clips: dict[str, Path], tiny_model) -> tuple[Path, Path, tuple]:
    folder = tmp_path_factory.mktemp("serve-videos")
    for name, src in sample_clips.items():
        shutil.copy2(src, folder / name)
    make_samples.write_clip(folder / "shapes.webm", make_samples.SAMPLES["shapes.mp4"], codec="libvpx-vp9")
    index_dir = tmp_path_factory.mktemp("serve-index")
    config, ckpt = tiny_model
    summary = cliptool.Index.open(index_dir).index([folder], model=str(config), pretrained=str(ckpt),
                                                   progress=False, report=lambda m: None)
    assert (summary.added, summary.failed) == (4, [])
    return index_dir, folder, tiny_model


@pytest.fixture(scope="module")
def server(indexed) -> Iterator[Server]:
    s = Server(indexed[0])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def one_line_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"], body
    assert "Traceback" not in r.text
    return body["error"]


def test_page_and_its_files(client: httpx.Client) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/static/app.js" in page.text and "http" not in page.text.replace('http-equiv', '')  # nothing remote
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "app.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text
    assert client.get("/?q=a+red+circle").status_code == 200  # the query lives in the URL
    one_line_error(client.get("/static/index.html.bak"), 404)


def test_status(client: httpx.Client) -> None:
    s = client.get("/api/status").json()
    assert (s["videos"], s["missing"], s["cache"]) == (4, False, "current")
    assert s["scenes"] > 4 and s["model"]["name"].endswith("TinyCLIP.json")
    assert s["server"] == {"loopback": True, "open_player": True, "token": False, "upload_limit": 20 * 1024 * 1024}


def test_search_schema_thumbnails_and_media(client: httpx.Client, indexed) -> None:
    index_dir, folder, _ = indexed
    r = client.get("/api/search", params={"q": "a red circle", "top": 5})
    assert r.status_code == 200
    data = r.json()
    assert data["query"] == "a red circle" and data["image"] is None and len(data["results"]) == 5
    for rank, hit in enumerate(data["results"], 1):
        assert KEYS <= set(hit) and hit["rank"] == rank
        assert hit["start"] <= hit["best_time"] <= hit["end"]
        assert hit["media"] == f"/media/{hit['video_id']}#t={hit['start']:.3f},{hit['end']:.3f}"
        assert hit["thumbnail"] in hit["frames"] and len(hit["frames"]) == len(hit["sample_times"])
        k = hit["frames"].index(hit["thumbnail"])
        assert abs(hit["sample_times"][k] - hit["best_time"]) < 1e-6
        pic = client.get(hit["thumbnail"])
        assert pic.status_code == 200 and pic.headers["content-type"] == "image/jpeg"
        img = cv2.imdecode(np.frombuffer(pic.content, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[1] <= thumbnails.WIDTH
        assert (index_dir / "thumbnails" / hit["scene_id"].replace("/", os.sep)).parent.is_dir()  # cached
    # the same answer as the CLI's JSON (scripts can switch between them)
    cli_hits = cliptool.Index.open(index_dir).search("a red circle", top=5)
    assert [h.scene_id for h in cli_hits] == [h["scene_id"] for h in data["results"]]
    by_video = client.get("/api/search", params={"q": "a red circle", "videos": 1, "top": 10}).json()["results"]
    assert len({h["video_id"] for h in by_video}) == len(by_video) == 4
    types = {h["name"]: h["type"] for h in by_video}
    assert types["shapes.webm"] == 'video/webm; codecs="vp9"' and types["shapes.mp4"].startswith("video/mp4")


def test_search_by_uploaded_image(client: httpx.Client, indexed) -> None:
    index_dir, folder, _ = indexed
    record, scenes = cliptool.Index.open(index_dir).scenes(folder / "titles.mp4")
    from cliptool.media.decode import frame_at

    _, rgb = frame_at(folder / "titles.mp4", scenes[-1].sample_times[1])
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    r = client.post("/api/search", params={"top": 3}, files={"image": ("still.png", png.tobytes(), "image/png")})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["query"] is None and data["image"] == "upload" and len(data["results"]) == 3
    assert data["results"][0]["video_id"] == record.video_id and data["results"][0]["thumbnail"]


def test_similar_and_video_view(client: httpx.Client) -> None:
    hit = client.get("/api/search", params={"q": "stripes", "top": 1}).json()["results"][0]
    r = client.get("/api/similar", params={"scene": hit["scene_id"], "top": 4})
    assert r.status_code == 200
    data = r.json()
    assert data["scene_id"] == hit["scene_id"] and len(data["results"]) == 4
    assert hit["scene_id"] not in {h["scene_id"] for h in data["results"]}
    assert [h["rank"] for h in data["results"]] == [1, 2, 3, 4] and all(h["thumbnail"] for h in data["results"])

    v = client.get(f"/api/videos/{hit['video_id']}").json()
    assert v["video"]["video_id"] == hit["video_id"] and v["video"]["path"] == hit["path"]
    assert len(v["scenes"]) == v["video"]["scene_count"] and v["media"] == f"/media/{hit['video_id']}"
    starts = [s["start"] for s in v["scenes"]]
    assert starts == sorted(starts) and hit["scene_id"] in {s["scene_id"] for s in v["scenes"]}
    for s in v["scenes"]:
        assert client.get(s["thumbnail"]).status_code == 200
    one_line_error(client.get("/api/videos/0123456789abcdef"), 404)
    one_line_error(client.get("/api/similar", params={"scene": hit["video_id"] + "/nope/00000"}), 404)
    one_line_error(client.get("/api/similar"), 400)
    others = client.get("/api/similar", params={"scene": hit["scene_id"], "top": 20, "other": 1}).json()["results"]
    assert others and hit["video_id"] not in {h["video_id"] for h in others}


def test_frames_for_the_frame_sequence_view(client: httpx.Client) -> None:
    hit = client.get("/api/search", params={"q": "stripes", "top": 1}).json()["results"][0]
    r = client.get(f"/frame/{hit['video_id']}", params={"t": hit["best_time"]})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    one_line_error(client.get(f"/frame/{hit['video_id']}", params={"t": "soon"}), 400)
    one_line_error(client.get(f"/frame/{hit['video_id']}", params={"t": -1}), 400)
    one_line_error(client.get(f"/frame/{hit['video_id']}", params={"t": 1e9}), 400)


def test_media_range_requests(client: httpx.Client, indexed) -> None:
    index_dir, folder, _ = indexed
    record, _ = cliptool.Index.open(index_dir).scenes(folder / "shapes.webm")
    raw = (folder / "shapes.webm").read_bytes()
    size = len(raw)
    url = f"/media/{record.video_id}"
    full = client.get(url)
    assert full.status_code == 200 and full.content == raw and full.headers["accept-ranges"] == "bytes"
    assert full.headers["content-type"] == "video/webm"
    part = client.get(url, headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == raw[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{size}" and part.headers["content-length"] == "1000"
    tail = client.get(url, headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == raw[-500:] and tail.headers["content-range"] == f"bytes {size - 500}-{size - 1}/{size}"
    rest = client.get(url, headers={"Range": f"bytes={size - 10}-"})
    assert rest.status_code == 206 and rest.content == raw[-10:]
    past = client.get(url, headers={"Range": f"bytes={size - 10}-{size + 1000}"})
    assert past.status_code == 206 and past.content == raw[-10:]
    for bad in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=50-10", "bytes=-0"):
        r = client.get(url, headers={"Range": bad})
        assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{size}", bad
    assert client.get(url, headers={"Range": "pages=1-2"}).status_code == 200  # not bytes: ignored
    head = client.head(url, headers={"Range": "bytes=0-9"})
    assert head.status_code == 206 and head.headers["content-length"] == "10" and head.content == b""


def test_a_video_deleted_once_its_response_began_is_sent_whole(tmp_path: Path) -> None:
    """The file is opened before the response is made: deleted (an index run pruning it) after
    that, it is still sent whole; deleted before, it is an OSError (the route's 404), never a
    response cut short after its headers."""
    import asyncio

    from cliptool.serve.media import file_response

    path = tmp_path / "v.mp4"
    data = os.urandom(300_000)
    path.write_bytes(data)
    response = file_response(str(path), "bytes=1000-", "video/mp4")
    path.unlink()

    async def body() -> bytes:
        return b"".join([chunk async for chunk in response.body_iterator])

    assert response.status_code == 206 and asyncio.run(body()) == data[1000:]
    with pytest.raises(FileNotFoundError):
        file_response(str(path), None, "video/mp4")


def raw_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """A GET with the path sent byte for byte (clients normalise `..` away)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_traversal_and_paths_get_404(client: httpx.Client, server: Server, indexed) -> None:
    index_dir, folder, _ = indexed
    vid = cliptool.Index.open(index_dir).videos()[0].video_id
    target = str(folder / "shapes.mp4")
    attempts = [
        "/media/..%2F..%2F..%2Fetc%2Fpasswd", "/media/%2Fetc%2Fpasswd", "/media//etc/passwd",
        "/media/" + target.replace("/", "%2F"), "/media/../../etc/passwd", "/media/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        f"/media/{vid}/../../etc/passwd", f"/media/{vid}%2F..%2F..", "/media/..",
        "/thumb/../../../etc/passwd", f"/thumb/{vid}/..%2F..%2F/00000/0.jpg", f"/thumb/{vid}/x/..%2f..%2fsecret/0.jpg",
        f"/thumb/{vid}/../00000/0.jpg", "/frame/..%2F..%2Fetc?t=1", "/static/..%2Fapp.py", "/static/%2e%2e%2fapp.py",
        "/static/../app.py", "/static//etc/passwd", "/api/videos/..%2F..%2Fetc%2Fpasswd", "/etc/passwd",
        "/api/videos/" + target.replace("/", "%2F"),
    ]
    for path in attempts:
        status, headers, body = raw_get(server.port, path)
        assert status == 404, (path, status, body[:200])
        assert b"root:" not in body and headers["content-type"] == "application/json", path
        assert set(json.loads(body)) == {"error"}


def test_host_header_and_cross_origin_writes(client: httpx.Client, server: Server) -> None:
    assert one_line_error(client.get("/api/status", headers={"Host": "evil.example"}), 400).startswith("bad Host")
    assert client.get("/api/status", headers={"Host": f"evil.example:{server.port}"}).status_code == 400
    assert client.get("/api/library", headers={"Host": "evil.example"}).status_code == 400
    for ok in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", f"[::1]:{server.port}"):
        assert client.get("/api/status", headers={"Host": ok}).status_code == 200, ok
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    files = {"image": ("x.png", png, "image/png")}
    one_line_error(client.post("/api/search", files=files, headers={"Origin": "http://evil.example"}), 403)
    one_line_error(client.post("/api/search", files=files, headers={"Sec-Fetch-Site": "cross-site"}), 403)
    one_line_error(client.post("/api/open", json={"video": "x"}, headers={"Origin": "http://evil.example"}), 403)
    same = client.post("/api/search", files=files, headers={"Origin": server.url})
    assert same.status_code == 200, same.text


def raw_request(port: int, request: str) -> tuple[int, bytes]:
    """Sends a request byte for byte (no client tidies its Host or target) and reads to the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def get_with(port: int, *host_lines: str, target: str = "/static/app.js", version: str = "1.1") -> tuple[int, bytes]:
    lines = "".join(f"{line}\r\n" for line in host_lines)
    return raw_request(port, f"GET {target} HTTP/{version}\r\n{lines}Connection: close\r\n\r\n")


def test_host_header_parsed_strictly(tmp_path: Path) -> None:
    """One Host, `host[:port]` and nothing else, with the server's port: every other spelling is a
    one-line 400, checked over raw sockets against a real server (the page's script needs no index)."""
    s = Server(tmp_path / "no-index")
    try:
        p = s.port
        script = get_with(p, f"Host: 127.0.0.1:{p}")
        assert script[0] == 200 and b"cliptool serve" in script[1]
        accepted = [f"127.0.0.1:{p}", "127.0.0.1", f"localhost:{p}", "localhost", f"LOCALHOST:{p}", "LocalHost",
                    f"[::1]:{p}", "[::1]", f"[0:0:0:0:0:0:0:1]:{p}", f"   127.0.0.1:{p}  "]
        for host in accepted:
            assert get_with(p, f"Host:{host}") == script, host
        wrong_port = p + 1 if p < 65535 else p - 1
        refused = [f"127.0.0.1:{p}@evil.com", f"127.0.0.1:{p}, evil.com", "", f"127.0.0.1:{wrong_port}",
                   f"[::1]:{wrong_port}", f"localhost:{wrong_port}", f"localhost.:{p}", f"127.0.0.1.:{p}", "localhost.",
                   f"user@127.0.0.1:{p}", f"user:pw@localhost:{p}", f"127.0.0.1 :{p}", f"127.0.0.1: {p}",
                   f"127.0.0.1:{p} evil.com", f"local host:{p}", f"evil.com:{p}", "evil.com", f"EVIL.com:{p}",
                   f"127.0.0.1:0{p}", "127.0.0.1:", f"127.0.0.1:+{p}", f"127.0.0.1:{p}:{p}", f"127.0.0.1:{p}/x",
                   f"::1:{p}", f"[::1%25lo]:{p}", "[::1", f"127.1:{p}", f"2130706433:{p}", f"127.0.0.2:{p}",
                   f"[::ffff:127.0.0.1]:{p}", f"127.0.0.1:{p + 65536}", "localhost:99999"]
        for host in refused:
            status, body = get_with(p, f"Host: {host}")
            assert status == 400, (host, status, body[:100])
            error = json.loads(body)["error"]
            assert error.startswith("bad Host header: ") and "\n" not in error, (host, error)
        # two Host headers (the same or not), none at all (HTTP/1.0, or 1.1), a folded one: 400, one line
        for lines, version in [((f"Host: 127.0.0.1:{p}", f"Host: 127.0.0.1:{p}"), "1.1"),
                               ((f"Host: 127.0.0.1:{p}", "Host: evil.com"), "1.1"),
                               (("Host: evil.com", f"Host: 127.0.0.1:{p}"), "1.1"),
                               ((), "1.0"), ((), "1.1"), ((f"Host: 127.0.0.1:{p}", " evil.com"), "1.1")]:
            status, body = get_with(p, *lines, version=version)
            assert status == 400 and body.strip() and b"\n" not in body.strip(), (lines, version, body)
        # an absolute-form target names the host too: another one is refused; this server's is served
        good = f"Host: 127.0.0.1:{p}"
        assert get_with(p, good, target=f"http://127.0.0.1:{p}/static/app.js") == script
        assert get_with(p, good, target=f"HTTP://localhost:{p}/static/app.js") == script
        for target in ("http://evil.com/static/app.js", f"http://evil.com:{p}/static/app.js",
                       f"http://127.0.0.1:{p}@evil.com/static/app.js", f"http://127.0.0.1:{wrong_port}/static/app.js",
                       f"ftp://127.0.0.1:{p}/static/app.js", "*", f"127.0.0.1:{p}"):
            status, body = get_with(p, good, target=target)
            assert status == 400 and json.loads(body)["error"].startswith("bad request target"), (target, body)
        status, body = raw_request(p, f"CONNECT evil.com:443 HTTP/1.1\r\n{good}\r\nConnection: close\r\n\r\n")
        assert status == 400, body
    finally:
        s.stop()
    # a named address beyond loopback: that name (or a loopback one) and the port; a wildcard bind:
    # any well-formed host, still one of them and nothing else
    for bound, ok, bad in [("192.0.2.10", ["192.0.2.10:{p}", "192.0.2.10", "localhost:{p}"],
                            ["192.0.2.11:{p}", "192.0.2.10:1", "my-laptop.lan:{p}", "192.0.2.10:{p}@evil.com"]),
                           ("0.0.0.0", ["my-laptop.lan:1234", "192.0.2.10:{p}", "[fe80::1]:{p}", "x"],
                            ["my-laptop.lan:{p}, evil.com", "a@b", "", "my laptop", "my-laptop.lan:{p}/"])]:
        s = Server(tmp_path / "no-index", host=bound, token="t0ken")
        try:
            p = s.port
            auth = "Authorization: Bearer t0ken"
            for host in ok:
                assert get_with(s.port, f"Host: {host.format(p=p)}", auth) == script, (bound, host)
            for host in bad:
                assert get_with(s.port, f"Host: {host.format(p=p)}", auth)[0] == 400, (bound, host)
        finally:
            s.stop()


def test_an_idle_connection_outlives_a_clients_keep_alive(tmp_path: Path) -> None:
    """A connection left idle as long as an HTTP client keeps one (httpx: 5 s) still takes the next
    request: the server does not close it under the client (which then gets a connection reset)."""
    from cliptool.serve import KEEP_ALIVE

    assert KEEP_ALIVE > 5
    s = Server(tmp_path / "no-index")
    try:
        request = f"GET /static/app.js HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n\r\n".encode()
        with socket.create_connection(("127.0.0.1", s.port), timeout=30) as sock:
            bodies = []
            for pause in (0.0, 5.5):
                time.sleep(pause)
                sock.sendall(request)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += sock.recv(65536) or b"<closed>"
                    assert not data.endswith(b"<closed>"), data
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += sock.recv(65536)
                assert head.startswith(b"HTTP/1.1 200"), head
                bodies.append(body)
            assert bodies[0] == bodies[1] and b"cliptool serve" in bodies[0]
    finally:
        s.stop()


def test_bad_parameters_are_one_line_4xx(client: httpx.Client) -> None:
    for params in ({"q": "x", "top": 0}, {"q": "x", "top": "many"}, {"q": "x", "top": 10**6}, {"q": "x", "videos": 2},
                   {}, {"q": "   "}, {"q": "x" * 2000}, {"q": ["a", "b"]}):
        one_line_error(client.get("/api/search", params=params), 400)
    one_line_error(client.get("/api/nothing"), 404)
    one_line_error(client.delete("/api/search"), 405)


def test_library_pages_newest_first_with_capped_scenes(client: httpx.Client, indexed) -> None:
    index_dir, folder, _ = indexed
    records = {r.video_id: r for r in cliptool.Index.open(index_dir).videos()}
    full = client.get("/api/library", params={"limit": 100, "scenes": 50}).json()
    assert (full["total"], full["offset"], full["limit"], len(full["videos"])) == (4, 0, 100, 4)
    mtimes = [v["mtime"] for v in full["videos"]]
    assert mtimes == sorted(mtimes, reverse=True)  # newest file date first
    assert full["folders"] == [{"path": str(folder.resolve()), "videos": 4}]
    for v in full["videos"]:
        record = records[v["video_id"]]
        assert (v["path"], v["duration"], v["scene_count"]) == (record.path, record.duration, record.scene_count)
        assert v["name"] == os.path.basename(record.path) and v["media"] == f"/media/{record.video_id}"
        assert len(v["scenes"]) == record.scene_count and [s["scene_index"] for s in v["scenes"]] == list(range(record.scene_count))
    s = full["videos"][0]["scenes"][0]
    assert client.get(s["thumbnail"]).status_code == 200 and s["thumbnail"] in s["frames"]
    # pages: limit and offset walk the same order; scenes caps each strip, first and last kept
    ids = [v["video_id"] for v in full["videos"]]
    pages = [client.get("/api/library", params={"limit": 3, "offset": o}).json() for o in (0, 3, 6)]
    assert [[v["video_id"] for v in p["videos"]] for p in pages] == [ids[:3], ids[3:], []]
    assert all(p["total"] == 4 for p in pages)
    capped = client.get("/api/library", params={"scenes": 2}).json()["videos"]
    for v, whole in zip(capped, full["videos"]):
        assert [x["scene_id"] for x in v["scenes"]] == [whole["scenes"][0]["scene_id"], whole["scenes"][-1]["scene_id"]]
        assert v["scene_count"] == whole["scene_count"] >= 2
    assert all(v["scenes"] == [] for v in client.get("/api/library", params={"scenes": 0}).json()["videos"])
    # narrowed by the search filters
    long_ones = client.get("/api/library", params={"min_duration": "5.5"}).json()
    assert long_ones["total"] == 2 and {v["name"] for v in long_ones["videos"]} == {"shapes.mp4", "shapes.webm"}
    assert client.get("/api/library", params={"in": str(folder.resolve())}).json()["total"] == 4
    assert client.get("/api/library", params={"in": str(folder.resolve()) + "-not"}).json()["total"] == 0
    assert client.get("/api/library", params={"since": "2999-01-01"}).json()["total"] == 0


def test_library_refuses_hostile_parameters(client: httpx.Client) -> None:
    for params in ({"limit": 0}, {"limit": 101}, {"limit": "ten"}, {"limit": "1e3"}, {"limit": -1}, {"offset": -1},
                   {"offset": "x"}, {"offset": 10**12}, {"scenes": 51}, {"scenes": -1}, {"limit": ["1", "2"]},
                   {"since": "yesterday"}, {"until": "2024-13-40"}, {"min_duration": "long"},
                   {"min_duration": "10", "max_duration": "5"}, {"since": "2024-02-01", "until": "2024-01-01"},
                   {"in": "relative/folder"}, {"in": "/tmp/a\x00b"}, {"in": "/x" * 3000}, {"min_score": "0.2"},
                   {"since": "2024-01-01" * 10}, {"in": ["/a"] * 17}):
        one_line_error(client.get("/api/library", params=params), 400)
    assert client.get("/api/library", params={"limit": "", "offset": "", "in": ""}).json()["total"] == 4


def test_search_filters_like_the_cli(client: httpx.Client, indexed) -> None:
    from cliptool.search.filters import Filters

    index_dir, folder, _ = indexed
    index = cliptool.Index.open(index_dir)
    q = {"q": "a red circle", "top": 20}
    everything = client.get("/api/search", params=q).json()
    assert everything["filters"] == {} and len({h["video_id"] for h in everything["results"]}) == 4
    for params, cli in [({"min_duration": "5.5"}, {"min_duration": "5.5"}), ({"max_duration": "0:04.5"}, {"max_duration": "0:04.5"}),
                        ({"min_score": "0.1"}, {"min_score": "0.1"}), ({"until": "2999-12-31"}, {"until": "2999-12-31"}),
                        ({"in": str(folder)}, {})]:
        data = client.get("/api/search", params={**q, **params}).json()
        where = Filters.parse([folder] if "in" in params else [], **cli)
        assert [h["scene_id"] for h in data["results"]] == [h.scene_id for h in index.search("a red circle", top=20, where=where)]
        assert data["filters"]
    short = client.get("/api/search", params={**q, "max_duration": "4.5"}).json()["results"]
    assert short and {h["name"] for h in short} == {"titles.mp4"} and all(h["duration"] <= 4.5 for h in short)
    floor = client.get("/api/search", params={**q, "min_score": "0.05"}).json()["results"]
    assert all(h["score"] >= 0.05 for h in floor)
    assert client.get("/api/search", params={**q, "since": "2999-01-01"}).json()["results"] == []
    assert client.get("/api/search", params={**q, "in": str(folder) + "/nothing-here"}).json()["results"] == []
    grouped = client.get("/api/search", params={**q, "videos": 1, "min_duration": "5"}).json()["results"]
    assert sorted(h["name"] for h in grouped) == ["outdoors.mp4", "shapes.mp4", "shapes.webm"]
    # more like this and picture searches take them too
    hit = everything["results"][0]
    similar = client.get("/api/similar", params={"scene": hit["scene_id"], "top": 20, "max_duration": "4.5"}).json()
    assert similar["results"] and {h["name"] for h in similar["results"]} == {"titles.mp4"}
    assert hit["scene_id"] not in {h["scene_id"] for h in similar["results"]}
    png = cv2.imencode(".png", np.full((64, 64, 3), 128, np.uint8))[1].tobytes()
    pic = client.post("/api/search", params={"top": 20, "min_duration": "5.5"}, files={"image": ("x.png", png, "image/png")})
    assert pic.status_code == 200 and {h["name"] for h in pic.json()["results"]} == {"shapes.mp4", "shapes.webm"}
    # bad values: one line naming the parameter as the API spells it
    msg = one_line_error(client.get("/api/search", params={**q, "since": "last week"}), 400)
    assert msg.startswith("since: not a date: 'last week'") and "--" not in msg
    assert "min_duration" in one_line_error(client.get("/api/search", params={**q, "min_duration": "a while"}), 400)
    assert "min_score" in one_line_error(client.get("/api/search", params={**q, "min_score": "nan"}), 400)
    assert "max_duration" in one_line_error(client.get("/api/search", params={**q, "min_duration": "9", "max_duration": "2"}), 400)
    one_line_error(client.get("/api/search", params={**q, "until": "2024-01-01", "since": "2024-06-01"}), 400)
    one_line_error(client.get("/api/search", params={**q, "in": "videos"}), 400)
    one_line_error(client.get("/api/search", params={**q, "since": ["2024-01-01", "2024-01-02"]}), 400)
    one_line_error(client.get("/api/similar", params={"scene": hit["scene_id"], "until": "soon"}), 400)
    one_line_error(client.post("/api/search", params={"min_score": "high"}, files={"image": ("x.png", png, "image/png")}), 400)


def test_hits_carry_their_video_duration(client: httpx.Client) -> None:
    for hit in client.get("/api/search", params={"q": "stripes", "top": 8}).json()["results"]:
        video = client.get(f"/api/videos/{hit['video_id']}").json()["video"]
        assert KEYS <= set(hit) and hit["duration"] == video["duration"] > 0
        assert 0 <= hit["start"] < hit["end"] <= hit["duration"] + 0.05


def test_similar_says_what_it_searched_with(client: httpx.Client) -> None:
    hit = client.get("/api/search", params={"q": "stripes", "top": 1}).json()["results"][0]
    data = client.get("/api/similar", params={"scene": hit["scene_id"], "top": 3}).json()
    src = data["scene"]
    assert (src["scene_id"], src["video_id"], src["name"], src["start"], src["end"]) == \
        (hit["scene_id"], hit["video_id"], hit["name"], hit["start"], hit["end"])
    assert src["duration"] == hit["duration"] and client.get(src["thumbnail"]).status_code == 200


def test_uploads_oversized_broken_and_malformed(client: httpx.Client) -> None:
    big = b"\xff\xd8" + os.urandom(21 * 1024 * 1024)
    msg = one_line_error(client.post("/api/search", files={"image": ("big.jpg", big, "image/jpeg")}), 413)
    assert "20 MB" in msg
    one_line_error(client.post("/api/search", files={"image": ("x.jpg", b"not a picture at all", "image/jpeg")}), 400)
    png = cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes()
    one_line_error(client.post("/api/search", files={"image": ("x.png", png[: len(png) // 2], "image/png")}), 400)
    one_line_error(client.post("/api/search", files={"image": ("x.png", b"", "image/png")}), 400)
    one_line_error(client.post("/api/search", files={"picture": ("x.png", png, "image/png")}), 400)
    one_line_error(client.post("/api/search", files={"image": (None, b"just text")}), 400)  # a field, not a file
    one_line_error(client.post("/api/search", data={"image": "just text"}), 415)
    one_line_error(client.post("/api/search", content=png, headers={"content-type": "image/png"}), 415)
    one_line_error(client.post("/api/search", content=b"--xx\r\nbroken", headers={"content-type": "multipart/form-data; boundary=xx"}), 400)
    one_line_error(client.post("/api/search", content=b"garbage", headers={"content-type": "multipart/form-data"}), 400)
    one_line_error(client.post("/api/search", params={"top": 0}, files={"image": ("x.png", png, "image/png")}), 400)
    assert client.get("/api/status").status_code == 200  # still up


def test_open_in_player(client: httpx.Client, indexed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "player.log"
    script = tmp_path / "fake-player"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {log}\n")
    script.chmod(0o755)
    monkeypatch.setenv("CLIPTOOL_PLAYER", f"{script} --start={{time}} {{path}}")
    hit = client.get("/api/search", params={"q": "stripes", "top": 1}).json()["results"][0]
    r = client.post("/api/open", json={"scene": hit["scene_id"], "t": 1.25})
    assert r.status_code == 200 and r.json()["player"] == "fake-player", r.text
    deadline = time.monotonic() + 10
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.read_text().split() == ["--start=1.250", hit["path"]]
    assert r.json()["seeks"] is True
    monkeypatch.setenv("CLIPTOOL_PLAYER", "false {path}")  # a player that fails is an error, not "opened"
    one_line_error(client.post("/api/open", json={"scene": hit["scene_id"], "t": 1.25}), 500)
    monkeypatch.setenv("CLIPTOOL_PLAYER", f"{script} {{path}}")  # no time in its command line: it cannot seek
    r = client.post("/api/open", json={"scene": hit["scene_id"], "t": 1.25})
    assert r.status_code == 200 and r.json()["seeks"] is False, r.text
    one_line_error(client.post("/api/open", json={"scene": hit["scene_id"], "t": 1e9}), 400)
    one_line_error(client.post("/api/open", content=b"{", headers={"content-type": "application/json"}), 400)
    one_line_error(client.post("/api/open", json={"path": "/etc/passwd"}), 400)


def test_token_required(indexed) -> None:
    index_dir = indexed[0]
    token = "s3cret-token"
    s = Server(index_dir, token=token)
    try:
        with s.client() as c:
            assert one_line_error(c.get("/api/status"), 401).startswith("a token is required")
            assert c.get("/api/status").headers["www-authenticate"].startswith("Bearer")
            for path in ("/", "/static/app.js", "/api/search?q=x", "/api/library", "/api/library?in=/&limit=1",
                         "/api/similar?scene=x&since=2024-01-01", "/media/0123456789abcdef", "/thumb/a/b/00000/0.jpg"):
                assert c.get(path).status_code == 401, path
            assert c.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/api/status", params={"token": "wrong"}).status_code == 401
            ok = c.get("/api/status", headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200 and ok.json()["server"]["token"] is True
            assert c.get("/api/status", params={"token": token}).status_code == 200
            # the page: ?token= becomes a cookie and leaves the address bar
            r = c.get("/", params={"token": token, "q": "a cat"})
            assert r.status_code == 303 and r.headers["location"] == "/?q=a+cat"
            cookie = r.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and token in cookie
            assert c.get("/api/status").status_code == 200  # the client kept the cookie
            vid = cliptool.Index.open(index_dir).videos()[0].video_id
            assert c.get(f"/media/{vid}", headers={"Range": "bytes=0-9"}).status_code == 206
        # a loopback server with a token still checks Host
        with s.client(headers={"Authorization": f"Bearer {token}"}) as c:
            assert c.get("/api/status", headers={"Host": "evil.example"}).status_code == 400
    finally:
        s.stop()
    # open in player only on a loopback bind
    s = Server(index_dir, host="0.0.0.0", token=token)
    try:
        with s.client(headers={"Authorization": f"Bearer {token}"}) as c:
            assert c.get("/api/status", headers={"Host": "my-laptop.lan:1234"}).status_code == 200  # wildcard bind
            assert c.get("/api/status").json()["server"]["open_player"] is False
            one_line_error(c.post("/api/open", json={"video": vid}), 403)
    finally:
        s.stop()


def test_cli_serve_non_loopback_generates_a_token(indexed) -> None:
    index_dir = indexed[0]
    port = free_port()
    env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(index_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cliptool", "serve", "--host", "0.0.0.0", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert first.startswith("cliptool serve: http://") and f":{port}/?token=" in first, first
        token = first.strip().split("?token=")[1]
        assert len(token) >= 24
        assert "access token" in proc.stdout.readline()  # type: ignore[union-attr]
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert r.status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/api/status", params={"token": token}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    # the port is taken: one line, exit 1
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "cliptool", "serve", "--port", str(taken)], capture_output=True,
                             text=True, env=env, timeout=60)
    assert out.returncode == 1 and out.stderr.strip().startswith("cliptool: error: cannot listen on 127.0.0.1:")
    assert "Traceback" not in out.stderr


def test_thumbnails_at_commit_and_in_check(indexed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The index run writes the analysis pass's JPEGs; check counts missing/extra ones as harmless."""
    import cliptool.index.worker as worker

    _, folder, (config, ckpt) = indexed
    real = worker.analyse_video

    def with_pictures(*args: object, **kw: object):
        analysed = real(*args, **kw)
        analysed.thumbnails = [[f"jpeg {s.index} {k}".encode() for k in range(len(s.sample_times))]
                               for s in analysed.scenes]
        return analysed

    monkeypatch.setattr(worker, "analyse_video", with_pictures)
    videos = tmp_path / "v"
    videos.mkdir()
    shutil.copy2(folder / "outdoors.mp4", videos / "outdoors.mp4")
    index = cliptool.Index.open(tmp_path / "index")
    index.index([videos], model=str(config), pretrained=str(ckpt), progress=False, report=lambda m: None)
    record, scenes = index.scenes(videos / "outdoors.mp4")
    for s in scenes:
        for k in range(len(s.sample_times)):
            assert thumbnails.read(index.directory, s.scene_id, k) == f"jpeg {s.index} {k}".encode()
    report = check_index(index.directory)
    assert report.ok and report.thumbnails == {"missing": 0, "extra": 0, "deleted": 0}
    # a stale version's pictures and a lost one: reported, not problems; repair drops the stale
    stale = thumbnails.root(index.directory) / record.video_id / "deadbeef"
    stale.mkdir()
    (stale / "00000-0.jpg").write_bytes(b"x")
    thumbnails.path_for(index.directory, scenes[0].scene_id, 0).unlink()
    report = check_index(index.directory)
    assert report.ok and report.thumbnails == {"missing": 1, "extra": 1, "deleted": 0}
    assert report.to_dict()["thumbnails"]["extra"] == 1
    report = check_index(index.directory, repair=True)
    assert report.ok and report.thumbnails["deleted"] == 1 and not stale.exists()
    # re-indexing a changed file drops the old version's pictures
    shutil.copy2(folder / "titles.mp4", videos / "outdoors.mp4")
    index.index([videos], progress=False, report=lambda m: None)
    new, _ = index.scenes(videos / "outdoors.mp4")
    assert [p.name for p in (thumbnails.root(index.directory) / new.video_id).iterdir()] == [new.version]


def test_concurrent_requests_during_an_index_run(indexed, tmp_path: Path, model_args: list[str]) -> None:
    """50 requests at a time while `cliptool index` commits more videos: every one 200, the new
    videos show up without a restart."""
    index_dir, folder, _ = indexed
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    more = tmp_path / "more"
    colours = [(220, 30, 30), (30, 60, 220), (30, 200, 30), (200, 200, 30), (200, 30, 200), (30, 200, 200)]
    for i, c in enumerate(colours):
        make_samples.write_clip(more / f"more{i}.mp4", [(make_samples.circle(c, (250, 250, 250)), 30),
                                                         (make_samples.stripes((0, 0, 0), c), 30)], size=(160, 120))
    s = Server(copy)
    try:
        # httpx's own keep-alive expiry (5 s): the server keeps idle connections longer (KEEP_ALIVE)
        with s.client(limits=httpx.Limits(max_connections=60)) as c:
            hit = c.get("/api/search", params={"q": "a circle", "top": 1}).json()["results"][0]
            vid = hit["video_id"]
            urls = ["/api/search?q=a+red+circle&top=8", "/api/status", f"/api/videos/{vid}",
                    f"/api/similar?scene={hit['scene_id']}&top=5", hit["thumbnail"], "/",
                    f"/media/{vid}", "/api/search?q=stripes&videos=1"]
            env = {**os.environ, "CLIPTOOL_INDEX_DIR": str(copy), "HF_HUB_OFFLINE": "1"}
            proc = subprocess.Popen([sys.executable, "-m", "cliptool", "index", str(folder), str(more), *model_args],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            statuses: list[int] = []
            seen_videos: set[int] = set()

            def fetch(url: str) -> int:
                r = c.get(url, headers={"Range": "bytes=0-999"} if url.startswith("/media/") else None)
                if url == "/api/status" and r.status_code == 200:
                    seen_videos.add(r.json()["videos"])
                return r.status_code

            with ThreadPoolExecutor(50) as pool:
                rounds = 0
                while proc.poll() is None or rounds < 2:
                    statuses += list(pool.map(fetch, [urls[i % len(urls)] for i in range(50)]))
                    rounds += 1
                    assert rounds < 400
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            bad = [x for x in statuses if x not in (200, 206)]
            assert not bad, (len(bad), sorted(set(bad)))
            assert len(statuses) >= 100
            status = c.get("/api/status").json()
            assert status["videos"] == 4 + len(colours)
            found = c.get("/api/search", params={"q": "a circle", "top": 50, "videos": 1}).json()["results"]
            assert {f"more{i}.mp4" for i in range(len(colours))} <= {h["name"] for h in found}
            assert all(client_ok(c, h["thumbnail"]) for h in found)
    finally:
        s.stop()


def client_ok(c: httpx.Client, url: str) -> bool:
    return c.get(url).status_code == 200


def test_bench_serve_smoke(indexed, tmp_path: Path) -> None:
    from cliptool.bench.serve import bench_serve

    result = bench_serve(indexed[0], queries=20, browser=False)
    assert result["queries"] == 20 and result["query_ms"] > 0 and result["rss_mb"] > 0
    assert json.dumps(result)
