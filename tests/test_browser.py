"""The web app in a real browser: headless Chromium (Debian's chromium + chromium-driver, through
selenium) opens the page, types a query, sees the thumbnails load, clicks a result, and the
<video> element plays inside that scene's span; on a phone-sized screen (390x844) nothing
scrolls sideways and every control can be reached; the start page lists the library; the
filters narrow what is shown. Skips where no browser or driver can be had. Screenshots of each
state go to $CLIPTOOL_SHOTS (a folder) when it is set."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

import cliptool

from conftest import make_samples
from test_serve import Server

SCREENSHOT = Path("/tmp/cliptool-serve.png")
PHONE = (390, 844)
# what the test folder holds, newest file date first (the library's order)
DATES = {"shapes.webm": "2024-06-03", "outdoors.webm": "2024-06-02", "titles.mp4": "2024-06-01",
         "archive/titles.avi": "2020-01-01"}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, sample_clips: dict[str, Path], tiny_model):
    folder = tmp_path_factory.mktemp("browser-videos")
    # WebM/VP9 plays in any Chromium; the H.264 one may not (Debian's build has no proprietary
    # codecs): the page then shows its frames instead.
    make_samples.write_clip(folder / "shapes.webm", make_samples.SAMPLES["shapes.mp4"], codec="libvpx-vp9")
    make_samples.write_clip(folder / "outdoors.webm", make_samples.SAMPLES["outdoors.mp4"], codec="libvpx-vp9")
    shutil.copy2(sample_clips["titles.mp4"], folder / "titles.mp4")
    (folder / "archive").mkdir()  # a second folder, for the folder filter
    make_samples.write_clip(folder / "archive" / "titles.avi", make_samples.SAMPLES["titles.mp4"], codec="mpeg4")  # no browser plays it
    for name, day in DATES.items():
        stamp = time.mktime(time.strptime(day + " 12:00", "%Y-%m-%d %H:%M"))
        os.utime(folder / name, (stamp, stamp))
    index_dir = tmp_path_factory.mktemp("browser-index")
    config, ckpt = tiny_model
    cliptool.Index.open(index_dir).index([folder], model=str(config), pretrained=str(ckpt), progress=False,
                                         report=lambda m: None)
    server = Server(index_dir)
    server.folder = folder.resolve()  # type: ignore[attr-defined]
    yield server
    server.stop()


def wait(driver, script: str, timeout: float = 20, *args):
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script, *args)
        if value:
            return value
        if time.monotonic() > deadline:
            seen = driver.execute_script("return [location.href, (document.getElementById('summary') || {}).textContent]")
            raise AssertionError(f"timed out waiting for: {script} (the page: {seen})")
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
                         "{t: v.currentTime, src: v.currentSrc, hidden: v.hidden}", 20, hit["start"])
    assert hit["start"] - 0.05 <= state["t"] <= hit["end"] + 0.05, (state, hit)
    # it plays the moment, not the shot: it stops at the span's end (marked on the timeline)
    stopped = wait(driver, "const v = document.getElementById('video');"
                           "return v.paused && v.currentTime > 0 && v.currentTime", 30)
    assert abs(stopped - hit["end"]) <= 0.3, (stopped, hit)
    # with loop on, it goes round the moment again
    driver.execute_script("document.getElementById('player-loop').checked = true;"
                          "const v = document.getElementById('video'); v.currentTime = arguments[0]; v.play();",
                          hit["start"])
    wait(driver, "return !document.getElementById('video').paused", 10)
    time.sleep(hit["end"] - hit["start"] + 1.5)  # longer than the moment: it has gone round
    looped = driver.execute_script("const v = document.getElementById('video'); return {t: v.currentTime, p: v.paused}")
    assert not looped["p"] and hit["start"] - 0.3 <= looped["t"] <= hit["end"] + 0.3, (looped, hit)
    driver.execute_script("document.getElementById('player-loop').checked = false; document.getElementById('video').pause();")
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


# -- a phone, the library, the filters ---------------------------------------------------------------

@pytest.fixture
def shots(tmp_path: Path) -> Path:
    """Where the screenshots go: $CLIPTOOL_SHOTS, else the test's temporary folder."""
    out = Path(os.environ.get("CLIPTOOL_SHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def phone(driver):
    """The browser as a phone: a 390x844 touch screen (the page's meta viewport honoured)."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 1, "mobile": True})
    yield driver
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def screenshot(driver, path: Path, whole_page: bool = False) -> None:
    """The viewport, or with whole_page the page from its top to its end (on the phone)."""
    if not whole_page:
        driver.save_screenshot(str(path))
        return
    y = driver.execute_script("return window.scrollY")
    height = min(4000, driver.execute_script("return document.documentElement.scrollHeight"))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": PHONE[0], "height": height, "deviceScaleFactor": 1, "mobile": True})
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": PHONE[0], "height": PHONE[1], "deviceScaleFactor": 1, "mobile": True})
    driver.execute_script("window.scrollTo(0, arguments[0])", y)


def no_sideways_scroll(driver, screen: int | None = None) -> None:
    """Nothing wider than the window; on a phone (`screen` px wide) the window is the screen: a
    mobile browser widens its layout viewport (zooming out) to fit content that overflows."""
    width, inner = driver.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width <= inner, f"the page is {width} px wide in a {inner} px window"
    assert screen is None or inner == screen, f"the page is {inner} px wide on a {screen} px screen"


REACHABLE = """
const e = arguments[0];
e.scrollIntoView({block: "center", inline: "nearest"});
const r = e.getBoundingClientRect();
const x = r.left + r.width / 2, y = r.top + r.height / 2;
const hit = document.elementFromPoint(x, y);
return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height,
        inner: window.innerWidth, innerHeight: window.innerHeight,
        onTop: hit !== null && (hit === e || e.contains(hit) || (e.labels && [...e.labels].some(l => l.contains(hit))))};
"""


def assert_reachable(driver, css: str, touch: int) -> None:
    """Each element `css` finds: shown, wholly inside the screen once scrolled to, not covered
    (a click at its middle lands on it) and at least `touch` px tall (a finger's size)."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, css)
    assert found, css
    for e in found:
        name = e.get_attribute("id") or e.tag_name
        assert e.is_displayed() and e.is_enabled(), name
        box = driver.execute_script(REACHABLE, e)
        assert 0 <= box["left"] and box["right"] <= box["inner"], (name, box)
        assert 0 <= box["top"] and box["bottom"] <= box["innerHeight"], (name, box)
        assert box["onTop"], (name, box)
        if e.get_attribute("type") != "checkbox":
            assert box["height"] >= touch, (name, box)


def cards(driver) -> list[str]:
    """The names on the result cards, once the search has answered."""
    wait(driver, "return document.getElementById('summary').textContent.includes(' for ')")
    return driver.execute_script("return [...document.querySelectorAll('#results .card .name')].map(e => e.textContent)")


def test_phone_layout_library_search_and_more_like_this(phone, site: Server, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    driver = phone
    driver.get(site.url + "/")
    assert driver.execute_script("return [window.innerWidth, window.innerHeight]") == list(PHONE)
    # the start page is the library: the videos, newest first, a strip of scenes each
    wait(driver, "return document.querySelectorAll('#library .lib-video').length === 4 && "
                 "[...document.querySelectorAll('#library .lib-strip img')].every(i => i.complete && i.naturalWidth > 0)")
    names = driver.execute_script("return [...document.querySelectorAll('.lib-title')].map(e => e.textContent)")
    assert names == [Path(n).name for n in DATES]
    assert not driver.find_element(By.ID, "filters").get_attribute("open")  # folded on a phone
    no_sideways_scroll(driver, PHONE[0])
    assert_reachable(driver, "#home, #q, #search-button, #picture-button, #filters > summary", 40)
    screenshot(driver, shots / "phone-library.png", whole_page=True)
    driver.find_element(By.CSS_SELECTOR, "#filters > summary").click()
    assert_reachable(driver, "#filter-form select, #filter-form input, #filter-form button", 40)
    no_sideways_scroll(driver, PHONE[0])
    screenshot(driver, shots / "phone-filters-open.png")
    driver.find_element(By.CSS_SELECTOR, "#filters > summary").click()

    # a video of the library opens with all its scenes
    row = driver.find_elements(By.CSS_SELECTOR, ".lib-video")[2]
    row.find_element(By.CSS_SELECTOR, ".lib-title").click()
    video_id = row.get_attribute("data-video")
    strip = wait(driver, "const i = [...document.querySelectorAll('#strip img')];"
                         "return !document.getElementById('video-view').hidden && i.length && "
                         "i.every(x => x.complete && x.naturalWidth > 0) && i.length")
    scenes = driver.execute_script(f"return fetch('/api/videos/{video_id}').then(r => r.json())")["scenes"]
    assert strip == len(scenes) >= 2 and driver.current_url.endswith(f"?video={video_id}")
    assert driver.find_element(By.ID, "video-title").text == "titles.mp4"
    assert driver.find_element(By.ID, "library").get_attribute("hidden") is not None
    no_sideways_scroll(driver, PHONE[0])

    # a search, by tapping Search: one card a row, each with its moment's place in its video
    driver.find_element(By.ID, "home").click()
    wait(driver, "return !document.getElementById('library').hidden")
    driver.find_element(By.ID, "q").send_keys("a red circle")
    driver.find_element(By.ID, "search-button").click()
    found = cards(driver)
    assert len(found) >= 6 and "q=a+red+circle" in driver.current_url
    assert driver.find_element(By.ID, "library").get_attribute("hidden") is not None
    hits = driver.execute_script("return fetch('/api/search?q=a%20red%20circle&top=24').then(r => r.json())")["results"]
    bars = driver.execute_script(
        "return [...document.querySelectorAll('#results .card')].map(c => { const b = c.querySelector('.where'), "
        "s = b.querySelector('.where-span'), r = b.getBoundingClientRect(), q = s.getBoundingClientRect();"
        "return {shown: b.checkVisibility() && r.width > 0 && q.width > 0, left: (q.left - r.left) / r.width,"
        "width: q.width / r.width, length: c.querySelector('.where-len').textContent}; })")
    assert len(bars) == len(hits)
    for bar, hit in zip(bars, hits):
        assert bar["shown"] and hit["duration"] > 0
        assert abs(bar["left"] - hit["start"] / hit["duration"]) < 0.02, (bar, hit)
        assert abs(bar["width"] - (hit["end"] - hit["start"]) / hit["duration"]) < 0.03 or bar["width"] < 0.03, (bar, hit)
        assert bar["length"] == driver.execute_script(
            "const d = arguments[0], m = Math.floor(d / 60); return m + ':' + (d % 60).toFixed(1).padStart(4, '0')",
            hit["duration"])  # the video's length, said at the bar's end
    no_sideways_scroll(driver, PHONE[0])
    assert_reachable(driver, "#results .card .similar, #results .card .whole", 40)
    driver.execute_script("window.scrollTo(0, 0)")
    screenshot(driver, shots / "phone-search.png", whole_page=True)

    # more like this: the box is emptied and the scene searched with is shown above the results
    first = driver.find_elements(By.CSS_SELECTOR, "#results .card")[0]
    source = {"name": first.find_element(By.CSS_SELECTOR, ".name").text, "scene": first.get_attribute("data-scene")}
    first.find_element(By.CSS_SELECTOR, ".similar").click()
    wait(driver, "return location.search.startsWith('?similar=') && document.querySelectorAll('#results .card').length > 0")
    wait(driver, "const p = document.getElementById('query-pic');"
                 "return !document.getElementById('query-view').hidden && p.complete && p.naturalWidth > 0")
    label = driver.find_element(By.ID, "query-label").text
    assert label.startswith(f"More like {source['name']} at "), label
    assert "/thumb/" + source["scene"] in driver.find_element(By.ID, "query-pic").get_attribute("src")
    assert driver.find_element(By.ID, "q").get_attribute("value") == ""
    assert source["scene"] not in driver.execute_script(
        "return [...document.querySelectorAll('#results .card')].map(c => c.dataset.scene)")
    no_sideways_scroll(driver, PHONE[0])
    screenshot(driver, shots / "phone-more-like-this.png")


def test_picture_search_shows_the_picture(driver, site: Server, shots: Path, tmp_path: Path) -> None:
    import cv2
    import numpy as np
    from selenium.webdriver.common.by import By

    picture = tmp_path / "red-dot.png"
    img = np.full((120, 160, 3), 250, np.uint8)
    cv2.circle(img, (80, 60), 30, (30, 30, 220), -1)
    cv2.imwrite(str(picture), img)
    driver.get(site.url + "/?q=stripes")
    cards(driver)
    driver.find_element(By.ID, "file").send_keys(str(picture))  # what "Picture…" opens
    wait(driver, "return location.search.includes('image') && document.getElementById('summary').textContent.includes('red-dot.png')")
    wait(driver, "const p = document.getElementById('query-pic');"
                 "return !document.getElementById('query-view').hidden && p.complete && p.naturalWidth === 160")
    assert driver.find_element(By.ID, "query-pic").get_attribute("src").startswith("blob:")
    assert driver.find_element(By.ID, "query-label").text == "Like this picture"
    assert driver.find_element(By.ID, "query-detail").text == "red-dot.png"
    assert driver.find_element(By.ID, "q").get_attribute("value") == ""  # not the old "stripes"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#results .card")) > 0
    screenshot(driver, shots / "desktop-picture-search.png")


def test_filters_narrow_searches_and_the_library(phone, site: Server, shots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver = phone
    driver.get(site.url + "/?q=a+red+circle")
    assert set(cards(driver)) == {"shapes.webm", "outdoors.webm", "titles.mp4", "titles.avi"}
    driver.find_element(By.CSS_SELECTOR, "#filters > summary").click()
    # the shortest videos (4 s) left out by the length filter: in the request and on the cards
    driver.find_element(By.ID, "f-min-duration").send_keys("4.5")
    driver.find_element(By.ID, "f-apply").click()
    wait(driver, "return location.search.includes('min_duration=4.5')")
    names = cards(driver)
    assert names and set(names) == {"shapes.webm", "outdoors.webm"}, names
    asked = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)"
                                  ".filter(u => u.includes('/api/search?')).pop()")
    assert "min_duration=4.5" in asked and "q=a+red+circle" in asked
    assert "only videos 4.5 s or longer" in driver.find_element(By.ID, "summary").text
    assert driver.find_element(By.ID, "filter-count").text == "(1)"
    no_sideways_scroll(driver, PHONE[0])
    screenshot(driver, shots / "phone-filters-applied.png")
    # the folder filter: the archive folder holds only the AVI
    driver.find_element(By.ID, "f-clear").click()
    wait(driver, "return !location.search.includes('min_duration')")
    assert len(set(cards(driver))) == 4
    wait(driver, "return document.getElementById('f-in').options.length === 3")  # the folders holding videos
    folders = Select(driver.find_element(By.ID, "f-in"))
    archive = str(site.folder / "archive")
    assert {o.get_attribute("value") for o in folders.options} == {"", str(site.folder), archive}
    folders.select_by_value(archive)  # applies at once
    wait(driver, "return location.search.includes('in=')")
    assert set(cards(driver)) == {"titles.avi"}
    # grouped by video: each video once
    driver.find_element(By.ID, "f-clear").click()
    wait(driver, "return !location.search.includes('in=')")
    cards(driver)
    driver.find_element(By.ID, "by-video").click()
    wait(driver, "return location.search.includes('videos=1')")
    grouped = cards(driver)
    assert sorted(grouped) == sorted(Path(n).name for n in DATES)
    assert "4 videos (the best scene of each) for" in driver.find_element(By.ID, "summary").text
    # the library takes the filters too (a date range here)
    driver.get(site.url + "/?since=2024-06-02")
    wait(driver, "return document.querySelectorAll('#library .lib-video').length === 2")
    assert driver.execute_script("return [...document.querySelectorAll('.lib-title')].map(e => e.textContent)") == \
        ["shapes.webm", "outdoors.webm"]
    assert driver.find_element(By.ID, "f-since").get_attribute("value") == "2024-06-02"
    # a bad value is said in one line, and nothing is shown
    driver.get(site.url + "/?q=a+red+circle&min_duration=soon")
    wait(driver, "return !document.getElementById('notice').hidden")
    assert driver.find_element(By.ID, "notice").text.startswith("min_duration: not a duration: 'soon'")


def test_desktop_library(driver, site: Server, shots: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.get(site.url + "/")
    wait(driver, "return document.querySelectorAll('#library .lib-video').length === 4 && "
                 "[...document.querySelectorAll('#library .lib-strip img')].every(i => i.complete && i.naturalWidth > 0)")
    assert driver.find_element(By.ID, "filters").get_attribute("open")  # open on a wide screen
    no_sideways_scroll(driver)
    assert_reachable(driver, "#q, #search-button, #picture-button, #filter-form select, #filter-form input, "
                             "#filter-form button", 20)
    driver.execute_script("window.scrollTo(0, 0)")
    screenshot(driver, shots / "desktop-library.png")
    # a thumbnail of the library plays its scene
    driver.find_elements(By.CSS_SELECTOR, ".lib-strip figure")[1].click()
    wait(driver, "return !document.getElementById('player-pane').hidden && "
                 "document.getElementById('player-title').textContent.startsWith('shapes.webm')")
