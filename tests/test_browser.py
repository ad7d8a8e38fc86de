"""The web app in a real browser: headless Chromium (Debian's chromium + chromium-driver, through
selenium) opens the page, types a query, sees the thumbnails load, clicks a result, and the
<video> element plays inside that scene's span. Skips where no browser or driver can be had."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

import cliptool
from cliptool.bench.serve import chromium_driver

from conftest import make_samples
from test_serve import Server

SCREENSHOT = Path("/tmp/cliptool-serve.png")


@pytest.fixture(scope="module")
def driver():
    try:
        d = chromium_driver(1280, 1100)
    except Exception as exc:  # noqa: BLE001 - a driver that will not start is a missing browser here
        pytest.skip(f"headless Chromium would not start: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    if d is None:
        pytest.skip("no chromium and chromedriver found (apt-get install chromium chromium-driver)")
    d.set_script_timeout(30)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, sample_clips: dict[str, Path], tiny_model):
    folder = tmp_path_factory.mktemp("browser-videos")
    # WebM/VP9 plays in any Chromium; the H.264 one may not (Debian's build has no proprietary
    # codecs): the page then shows its frames instead.
    make_samples.write_clip(folder / "shapes.webm", make_samples.SAMPLES["shapes.mp4"], codec="libvpx-vp9")
    make_samples.write_clip(folder / "outdoors.webm", make_samples.SAMPLES["outdoors.mp4"], codec="libvpx-vp9")
    shutil.copy2(sample_clips["titles.mp4"], folder / "titles.mp4")
    make_samples.write_clip(folder / "titles.avi", make_samples.SAMPLES["titles.mp4"], codec="mpeg4")  # no browser plays it
    index_dir = tmp_path_factory.mktemp("browser-index")
    config, ckpt = tiny_model
    cliptool.Index.open(index_dir).index([folder], model=str(config), pretrained=str(ckpt), progress=False,
                                         report=lambda m: None)
    server = Server(index_dir)
    yield server
    server.stop()


def wait(driver, script: str, timeout: float = 20, *args):
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script, *args)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {script}")
        time.sleep(0.05)


def test_search_see_thumbnails_click_and_play(driver, site: Server, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(site.url + "/")
    wait(driver, "return document.getElementById('index-state').dataset.videos === '4'")
    box = driver.find_element(By.ID, "q")
    box.send_keys("a red circle", Keys.ENTER)
    wait(driver, "return document.querySelectorAll('#results .card').length > 0")
    assert "q=a+red+circle" in driver.current_url  # the URL holds the query
    n = wait(driver, "const i = [...document.querySelectorAll('#results .card img')];"
                     "return i.length && i.every(x => x.complete && x.naturalWidth > 0) && i.length")
    assert n >= 6
    # a WebM result plays in the page, from its best time, inside its scene
    cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
    names = [c.find_element(By.CSS_SELECTOR, ".name").text for c in cards]
    i = names.index(next(nm for nm in names if nm.endswith(".webm")))
    hit = driver.execute_script("return fetch('/api/search?q=a%20red%20circle&top=24').then(r => r.json())")["results"][i]
    cards[i].click()
    state = wait(driver, "const v = document.getElementById('video');"
                         "return !v.paused && v.readyState >= 2 && v.currentTime > arguments[0] + 0.05 && "
                         "{t: v.currentTime, src: v.currentSrc, hidden: v.hidden}", 20, hit["best_time"])
    assert hit["start"] - 0.05 <= state["t"] <= hit["end"] + 0.05, (state, hit)
    assert state["src"].split("#")[0].endswith(f"/media/{hit['video_id']}") and not state["hidden"]
    span = driver.execute_script("return document.getElementById('tl-span').style.width")
    assert span.endswith("%") and float(span[:-1]) > 0  # the scene's span on the timeline
    driver.save_screenshot(str(tmp_path / "playing.png"))
    shutil.copy(tmp_path / "playing.png", SCREENSHOT)

    # keys move to the next result and play it; the H.264 file plays or shows its frames
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.ARROW_RIGHT)
    wait(driver, "return document.querySelector('#results .card.selected') !== null")
    mp4 = names.index("titles.mp4")
    driver.find_elements(By.CSS_SELECTOR, "#results .card")[mp4].click()
    shown = wait(driver, "const v = document.getElementById('video'), f = document.getElementById('frames-img');"
                         "if (!document.getElementById('frames-view').hidden) return f.complete && f.naturalWidth > 0 && 'frames';"
                         "return !v.paused && v.readyState >= 2 && 'video'")
    assert shown in ("frames", "video")
    driver.save_screenshot(str(tmp_path / f"mp4-{shown}.png"))
    # an AVI (MPEG-4 part 2) is never given to <video>: its frames are shown, with "open in player"
    driver.find_elements(By.CSS_SELECTOR, "#results .card")[names.index("titles.avi")].click()
    wait(driver, "const f = document.getElementById('frames-img');"
                 "return !document.getElementById('frames-view').hidden && document.getElementById('video').hidden && "
                 "f.complete && f.naturalWidth > 0 && f.src.includes('/frame/')")
    assert driver.find_element(By.ID, "player-open").is_displayed()
    driver.save_screenshot(str(tmp_path / "avi-frames.png"))

    # more like this, and the video view; back returns to the query
    driver.find_elements(By.CSS_SELECTOR, "#results .card .similar")[0].click()
    wait(driver, "return location.search.startsWith('?similar=') && document.querySelectorAll('#results .card').length > 0")
    driver.back()
    wait(driver, "return location.search.includes('q=a+red+circle') && "
                 "document.getElementById('summary').textContent.includes('for \u201ca red circle\u201d')")
    driver.find_elements(By.CSS_SELECTOR, "#results .card .whole")[0].click()
    strip = wait(driver, "const i = [...document.querySelectorAll('#strip img')];"
                         "return i.length && i.every(x => x.complete && x.naturalWidth > 0) && i.length")
    assert strip >= 1
