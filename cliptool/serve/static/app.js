// cliptool serve: the page. Plain JS, no build step, nothing from the internet.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
    }
    for (const kid of kids) e.append(kid);
    return e;
  };
  const fmt = (t) => {
    if (t == null || isNaN(t)) return "-";
    const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), s = t % 60;
    return (h ? h + ":" + String(m).padStart(2, "0") : String(m)) + ":" + s.toFixed(1).padStart(4, "0");
  };

  const pct = (x) => (100 * Math.max(0, Math.min(1, x))) + "%";
  const day = (epoch) => new Date(epoch * 1000).toISOString().slice(0, 10);

  const state = { results: [], selected: -1, current: null, generation: null, shownGeneration: null,
                  server: {}, frameTimer: null, hoverTimer: null, picture: null, library: null,
                  foldersOf: undefined };

  // the CLI's search filters: URL parameter -> its input in the filter panel
  const FILTERS = [["in", "f-in"], ["since", "f-since"], ["until", "f-until"], ["min_duration", "f-min-duration"],
                   ["max_duration", "f-max-duration"], ["min_score", "f-min-score"]];

  async function api(url, options) {
    const r = await fetch(url, Object.assign({ credentials: "same-origin" }, options || {}));
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) throw new Error((body && body.error) || r.status + " " + r.statusText);
    return body;
  }

  function notice(text, isError, action) {
    const n = $("notice");
    n.replaceChildren(text);
    n.className = isError ? "error" : "";
    if (action) n.append(el("button", { type: "button", text: action.label, onclick: action.run }));
    n.hidden = !text;
  }

  // -- index state: polled, so videos a running `cliptool index` commits show up -------------
  async function pollStatus() {
    try {
      const s = await api("/api/status");
      state.server = s.server || {};
      const model = s.model ? (s.model.name || "").split("/").pop() : "no model yet";
      $("index-state").textContent = s.missing ? "no index yet: run `cliptool index FOLDER`"
        : `${s.videos} videos · ${s.scenes} scenes · ${model}`;
      $("index-state").dataset.videos = s.videos;
      if (state.library && state.generation !== null && s.generation !== state.generation) {
        state.generation = s.generation;
        showLibrary(true);  // the start page: the new videos simply appear
      } else if (state.shownGeneration !== null && s.generation !== state.shownGeneration && state.results.length) {
        notice("New videos were indexed since this search.", false, { label: "Search again", run: () => route(false) });
      }
      state.generation = s.generation;
      $("player-open").hidden = !state.server.open_player;
    } catch (e) { $("index-state").textContent = "server unreachable"; }
  }

  // -- the URL holds the query: ?q=...&top=..&videos=1, ?similar=SCENE, ?video=ID, ?image (a
  // picture, kept in the page), and the filters (?in=FOLDER&since=DATE&...); nothing: the library
  function params() { return new URLSearchParams(location.search); }
  const WORD_PARAMS = ["said", "shows", "then", "within"];  // words said and shown, a chain of moments
  function go(p, push) {
    const url = "/" + (p.toString() ? "?" + p.toString() : "");
    if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
    route(false);
  }

  // the query string of an API call: `extra`, then top, videos and the URL's filters
  function apiParams(p, extra, forLibrary) {
    const out = new URLSearchParams(extra);
    if (!forLibrary) {
      out.set("top", String(topN()));
      out.set("videos", p.get("videos") === "1" ? "1" : "0");
    }
    for (const [name] of FILTERS) {
      if (forLibrary && name === "min_score") continue;  // the library has no scores
      for (const v of p.getAll(name)) if (v) out.append(name, v);
    }
    return out.toString();
  }

  // the URL of a new query (q, similar or image): it, top, videos, and the filters kept
  function queryUrl(kind, value) {
    // an empty q (words alone) is left out; an empty image is the mark of a picture query
    const keep = value || kind === "image";
    const p = new URLSearchParams(keep ? [[kind, value], ["top", String(topN())]] : [["top", String(topN())]]);
    if ($("by-video").checked) p.set("videos", "1");
    const now = params();
    for (const [name] of FILTERS) for (const v of now.getAll(name)) p.append(name, v);
    return p;
  }

  async function route() {
    const p = params();
    $("q").value = p.get("q") || "";
    $("said").value = p.get("said") || "";
    $("shows").value = p.get("shows") || "";
    if (p.get("top")) $("top").value = p.get("top");
    $("by-video").checked = p.get("videos") === "1";
    showFilters(p);
    notice("");
    showQuery(null);
    $("library").hidden = true;
    state.library = null;
    if (state.foldersOf !== state.generation && !isLibrary(p)) loadFolders();
    if (p.get("video")) return showVideo(p.get("video"));
    $("video-view").hidden = true;
    if (p.get("similar")) {
      return runQuery("/api/similar?" + apiParams(p, { scene: p.get("similar") }), null, "more like this", (data) => {
        const s = data.scene;
        showQuery({ picture: s.thumbnail, label: `More like ${s.name} at ${fmt(s.start)}–${fmt(s.end)}`,
                    detail: `scene ${s.scene_index + 1} of the video (${fmt(s.duration)} long)`, title: s.path });
      });
    }
    if (p.get("q") || p.get("said") || p.get("shows")) {
      const extra = new URLSearchParams();
      if (p.get("q")) extra.set("q", p.get("q"));
      for (const name of WORD_PARAMS) for (const v of p.getAll(name)) if (v) extra.append(name, v);
      const label = [p.get("q") ? `“${p.get("q")}”` : "", p.get("said") ? `said “${p.get("said")}”` : "",
                     p.get("shows") ? `showing “${p.get("shows")}”` : ""].filter(Boolean).join(", ");
      return runQuery("/api/search?" + apiParams(p, extra), null, label);
    }
    if (p.has("image") && state.picture) {
      const pic = state.picture;
      const form = new FormData();
      form.append("image", pic.file, pic.name);
      showQuery({ picture: pic.url, label: "Like this picture", detail: pic.name });
      return runQuery("/api/search?" + apiParams(p, {}), { method: "POST", body: form }, `the picture ${pic.name}`);
    }
    if (p.has("image")) { notice("Picture queries are not kept in the address; drop or paste the picture again."); }
    showResults([], "");
    return showLibrary(true);
  }
  const topN = () => parseInt($("top").value, 10) || 24;

  async function runQuery(url, init, label, then) {
    $("summary").textContent = "searching…";
    const t0 = performance.now();
    const gen = state.generation;
    const p = params();
    try {
      const data = await api(url, init);
      state.shownGeneration = gen;
      if (then) then(data);
      const n = data.results.length;
      const what = p.get("videos") === "1" ? `${n} videos (the best scene of each)` : `${n} results`;
      const only = describeFilters(p);
      showResults(data.results, `${what} for ${label}${only ? " · only " + only : ""} in ${Math.round(performance.now() - t0)} ms`);
    } catch (e) {
      showResults([], "");
      notice(e.message, true);
    }
  }

  function searchImage(file) {
    if (!file || !file.type.startsWith("image/")) { notice("That is not a picture.", true); return; }
    if (state.picture) URL.revokeObjectURL(state.picture.url);
    state.picture = { file: file, name: file.name || "pasted picture", url: URL.createObjectURL(file) };
    go(queryUrl("image", ""), true);  // the box is emptied: the picture is the query now
  }

  // what a picture or "more like this" search searched with, above its results
  function showQuery(q) {
    $("query-view").hidden = !q;
    if (!q) return;
    $("query-pic").hidden = !q.picture;
    if (q.picture) $("query-pic").src = q.picture; else $("query-pic").removeAttribute("src");
    $("query-label").textContent = q.label;
    $("query-label").title = q.title || "";
    $("query-detail").textContent = q.detail || "";
  }

  // -- the filters: the panel shows the URL's; Apply puts the panel's into the URL --------------
  function showFilters(p) {
    let n = 0;
    for (const [name, id] of FILTERS) {
      const v = p.get(name) || "";
      if (name === "in" && v && ![...$(id).options].some((o) => o.value === v)) $(id).append(folderOption(v, 0));
      $(id).value = v;
      if (v) n++;
    }
    $("filter-count").textContent = n ? `(${n})` : "";
    if (n) $("filters").open = true;
  }

  function applyFilters() {
    const p = params();
    p.delete("video");
    p.set("top", String(topN()));
    if ($("by-video").checked) p.set("videos", "1"); else p.delete("videos");
    for (const [name, id] of FILTERS) {
      const v = $(id).value.trim();
      if (v) p.set(name, v); else p.delete(name);
    }
    go(p, true);
  }

  function describeFilters(p) {
    const parts = [];
    if (p.get("in")) parts.push("in " + shortPath(p.get("in")));
    if (p.get("since")) parts.push("from " + p.get("since"));
    if (p.get("until")) parts.push("until " + p.get("until"));
    const long = (v) => /^[0-9.]+$/.test(v) ? v + " s" : v;  // plain numbers are seconds
    if (p.get("min_duration")) parts.push("videos " + long(p.get("min_duration")) + " or longer");
    if (p.get("max_duration")) parts.push("videos " + long(p.get("max_duration")) + " or shorter");
    if (p.get("min_score")) parts.push("scoring " + p.get("min_score") + " or more");
    return parts.join(", ");
  }

  function shortPath(path) {
    const parts = path.split(/[\\/]/).filter(Boolean);
    return parts.length > 2 ? "…/" + parts.slice(-2).join("/") : path;
  }

  function folderOption(path, count) {
    return el("option", { value: path, title: path, text: shortPath(path) + (count ? ` (${count})` : "") });
  }

  const isLibrary = (p) => !p.get("video") && !p.get("similar") && !p.get("q") && !(p.has("image") && state.picture);

  // the folder filter's choices: the folders that hold indexed videos (the library's answer)
  async function loadFolders() {
    try {
      showFolders((await api("/api/library?limit=1&scenes=0")).folders);
      state.foldersOf = state.generation;
    } catch (e) { /* the choices stay as they were */ }
  }

  function showFolders(folders) {
    const select = $("f-in"), chosen = select.value;
    select.replaceChildren(el("option", { value: "", text: "all folders" }),
                           ...folders.map((f) => folderOption(f.path, f.videos)));
    if (chosen && ![...select.options].some((o) => o.value === chosen)) select.append(folderOption(chosen, 0));
    select.value = chosen;
  }

  // -- results ------------------------------------------------------------------------------
  function showResults(results, summary) {
    state.results = results;
    state.selected = -1;
    $("summary").textContent = summary;
    $("results").replaceChildren(...results.map(card));
    document.body.dataset.results = String(results.length);
  }

  function card(hit, i) {
    const img = el("img", { alt: hit.name, loading: "lazy", decoding: "async" });
    if (hit.thumbnail) img.src = hit.thumbnail;
    img.addEventListener("error", () => img.classList.add("broken"));
    const dots = el("div", { class: "dots" }, ...(hit.frames || []).map((f) => el("span", { class: f === hit.thumbnail ? "on" : "" })));
    const pic = el("div", { class: "pic" }, img, el("span", { class: "badge", text: `#${hit.rank} · ${hit.score.toFixed(3)}` }), dots);
    // pointing at a result shows its other sample frames: by the pointer's position, like scrubbing
    pic.addEventListener("mousemove", (ev) => {
      const frames = hit.frames || [];
      if (frames.length < 2) return;
      const r = pic.getBoundingClientRect();
      const k = Math.min(frames.length - 1, Math.max(0, Math.floor(((ev.clientX - r.left) / r.width) * frames.length)));
      if (img.getAttribute("src") !== frames[k]) img.src = frames[k];
      [...dots.children].forEach((d, j) => d.classList.toggle("on", j === k));
    });
    pic.addEventListener("mouseleave", () => {
      if (hit.thumbnail) img.src = hit.thumbnail;
      [...dots.children].forEach((d, j) => d.classList.toggle("on", (hit.frames || [])[j] === hit.thumbnail));
    });
    const c = el("article", { class: "card", tabindex: "0", "data-index": String(i), "data-scene": hit.scene_id },
      pic,
      el("div", { class: "meta" },
        el("div", { class: "name", title: hit.path, text: hit.name }),
        whereBar(hit),
        el("div", { class: "times", text: `${fmt(hit.start)}–${fmt(hit.end)} · best ${fmt(hit.best_time)}` }),
        cardWords(hit)),
      el("div", { class: "actions" },
        el("button", { type: "button", class: "similar", text: "More like this",
                       onclick: (ev) => { ev.stopPropagation(); moreLike(hit.scene_id); } }),
        el("button", { type: "button", class: "whole", text: "Video",
                       onclick: (ev) => { ev.stopPropagation(); go(new URLSearchParams({ video: hit.video_id }), true); } })));
    c.addEventListener("click", () => { select(i); play(hit); });
    return c;
  }

  // text with the character ranges `marks` in <mark>: built as nodes, never as HTML
  function marked(text, marks) {
    const out = el("span");
    let at = 0;
    for (const [a, b] of (marks || []).slice().sort((x, y) => x[0] - y[0])) {
      if (a < at || b > text.length || a >= b) continue;
      out.append(text.slice(at, a), el("mark", { text: text.slice(a, b) }));
      at = b;
    }
    out.append(text.slice(at));
    return out;
  }

  // the words a search matched at this moment (said, then shown), each at its time
  function cardWords(hit) {
    const items = [...(hit.said || []).map((w) => ["said", w]), ...(hit.shown || []).map((w) => ["shown", w])];
    const list = el("ul", { class: "words" });
    for (const [kind, w] of items.slice(0, 4)) {
      const lacks = (w.missing || []).length ? ` (without: ${w.missing.join(", ")})` : "";
      list.append(el("li", { class: kind, title: `${kind} at ${fmt(w.start)}: ${w.text}${lacks}` },
        el("span", { class: "t", text: fmt(w.start) }), marked(w.text, w.marks),
        ...(lacks ? [el("span", { class: "lacks", text: lacks })] : [])));
    }
    list.hidden = !items.length;
    return list;
  }

  // the video's words beside the player: a line each, the one on screen marked; a click seeks there
  async function showTranscript(hit) {
    const list = $("transcript");
    list.replaceChildren();
    list.hidden = true;
    let data;
    try { data = await api("/api/words?video=" + encodeURIComponent(hit.video_id)); } catch (e) { return; }
    if (state.current !== hit || !data.words.length) return;
    const matched = new Set([...(hit.said || []), ...(hit.shown || [])].map((w) => `${w.start}|${w.text}`));
    for (const w of data.words) {
      const ours = [...(hit.said || []), ...(hit.shown || [])].find((m) => `${m.start}|${m.text}` === `${w.start}|${w.text}`);
      const li = el("li", { class: w.source === "screen" ? "screen" : "said", "data-start": String(w.start),
                            "data-end": String(w.end), title: `${w.source} at ${fmt(w.start)}` },
        el("span", { class: "t", text: fmt(w.start) }), ours ? marked(w.text, ours.marks) : w.text);
      if (matched.has(`${w.start}|${w.text}`)) li.classList.add("matched");
      li.addEventListener("click", () => seekTo(w.start));
      list.append(li);
    }
    list.hidden = false;
    markTranscript();
  }

  // a seek the user asks for: the moment's end stops (or loops) the video only when t lies inside it
  function userSeek(t) {
    const hit = state.current;
    state.stopAtEnd = !!hit && t >= hit.start - 0.05 && t < hit.end - 0.05;  // before timeupdate can see the new time
    $("video").currentTime = t;
  }

  function seekTo(t) {
    const v = $("video");
    if (v.hidden) return;
    userSeek(t);
    const p = v.play();
    if (p && p.catch) p.catch(() => {});
  }

  function markTranscript() {
    const v = $("video"), list = $("transcript");
    if (list.hidden) return;
    for (const li of list.children) {
      const on = v.currentTime >= parseFloat(li.dataset.start) && v.currentTime < parseFloat(li.dataset.end);
      if (on !== li.classList.contains("now")) {
        li.classList.toggle("now", on);
        if (on) li.scrollIntoView({ block: "nearest" });
      }
    }
  }

  // where the moment falls in its video: a bar of the video's length (said at its end), the
  // hit's span marked on it, a tick at its best moment
  function whereBar(hit) {
    const d = hit.duration;
    const bar = el("div", { class: "where", title: `${fmt(hit.start)}–${fmt(hit.end)} of ${fmt(d)}` });
    const row = el("div", { class: "where-row" }, bar, el("span", { class: "where-len", text: fmt(d) }));
    if (!(d > 0)) { row.hidden = true; return row; }
    const span = el("span", { class: "where-span" }), best = el("span", { class: "where-best" });
    span.style.left = pct(hit.start / d);
    span.style.width = pct((hit.end - hit.start) / d);
    best.style.left = pct(hit.best_time / d);
    bar.append(span, best);
    return row;
  }

  function select(i) {
    const cards = $("results").children;
    if (!cards.length) return;
    i = Math.max(0, Math.min(cards.length - 1, i));
    if (state.selected >= 0 && cards[state.selected]) cards[state.selected].classList.remove("selected");
    state.selected = i;
    cards[i].classList.add("selected");
    cards[i].scrollIntoView({ block: "nearest" });
  }

  function moreLike(sceneId) {
    go(queryUrl("similar", sceneId), true);  // the box is emptied: the scene is the query now
  }

  // -- playing: in the page from the best time, the scene's span on the timeline -------------
  function play(hit) {
    stopFrames();
    state.current = hit;
    const pane = $("player-pane");
    pane.hidden = false;
    $("player-title").textContent = `${hit.name} · ${fmt(hit.start)}–${fmt(hit.end)}`;
    showTranscript(hit);
    const video = $("video");
    const base = hit.media.split("#")[0];
    const canPlay = hit.type && video.canPlayType(hit.type) !== "";
    if (!canPlay) { showFrames(hit); return; }
    $("frames-view").hidden = true;
    video.hidden = false;
    video.onerror = () => { showFrames(hit); };
    video.onloadedmetadata = () => { drawTimeline(); };
    state.stopAtEnd = true;  // the moment plays from its start and stops (or loops) at its end
    video.src = `${base}#t=${hit.start.toFixed(3)}`;
    const p = video.play();
    if (p && p.catch) p.catch(() => {});
    drawTimeline();
    pane.scrollIntoView({ block: "nearest" });
  }

  function duration() {
    const v = $("video"), hit = state.current;
    return (v && isFinite(v.duration) && v.duration > 0) ? v.duration : (hit && hit.duration) || (hit ? hit.end : 1);
  }

  function drawTimeline(now) {
    const hit = state.current;
    if (!hit) return;
    const d = duration();
    $("tl-span").style.left = (100 * hit.start / d) + "%";
    $("tl-span").style.width = Math.max(0.4, 100 * (hit.end - hit.start) / d) + "%";
    $("tl-best").style.left = (100 * hit.best_time / d) + "%";
    const t = now != null ? now : $("video").currentTime;
    $("tl-head").style.left = (100 * Math.min(t, d) / d) + "%";
    $("player-times").textContent = `now ${fmt(t)} · scene ${fmt(hit.start)}–${fmt(hit.end)} · best ${fmt(hit.best_time)} · length ${fmt(d)}`;
  }

  function stopFrames() { if (state.frameTimer) { clearInterval(state.frameTimer); state.frameTimer = null; } }

  // a file the browser cannot play: the scene as a sequence of frames (8 steps across the span)
  function showFrames(hit) {
    stopFrames();
    const video = $("video");
    video.pause(); video.removeAttribute("src"); video.load(); video.hidden = true;
    $("frames-view").hidden = false;
    const n = 8, times = [];
    for (let k = 0; k < n; k++) times.push(hit.start + (hit.end - hit.start) * (k + 0.5) / n);
    let k = Math.max(0, times.findIndex((t) => t >= hit.best_time));
    const img = $("frames-img");
    const show = () => {
      img.src = `/frame/${hit.video_id}?t=${times[k].toFixed(3)}`;
      drawTimeline(times[k]);
      k = (k + 1) % n;
    };
    show();
    state.frameTimer = setInterval(show, 500);
  }

  function closePlayer() {
    stopFrames();
    const v = $("video"); v.pause(); v.removeAttribute("src"); v.load();
    $("player-pane").hidden = true;
    state.current = null;
  }

  async function openInPlayer() {
    const hit = state.current;
    if (!hit) return;
    const v = $("video");
    const t = !v.hidden && v.currentTime ? v.currentTime : hit.best_time;
    try {
      const r = await api("/api/open", { method: "POST", headers: { "content-type": "application/json" },
                                         body: JSON.stringify({ scene: hit.scene_id, t: t }) });
      notice(r.seeks ? `Opened in ${r.player} at ${fmt(r.t)}.`
                     : `Opened in ${r.player}, which cannot start at a time: go to ${fmt(r.t)} yourself.`);
    } catch (e) { notice(e.message, true); }
  }

  // -- a video's scenes as a strip of thumbnails -----------------------------------------------
  async function showVideo(videoId) {
    try {
      const v = await api(`/api/videos/${encodeURIComponent(videoId)}`);
      $("video-view").hidden = false;
      $("video-title").textContent = v.name;
      $("video-title").title = v.video.path;
      $("video-meta").textContent = `${fmt(v.video.duration)} · ${v.video.width}×${v.video.height} · ${v.video.codec} · ${v.scenes.length} scenes`;
      const hits = v.scenes.map((s, i) => sceneHit(s, i, { path: v.video.path, name: v.name, video_id: v.video.video_id,
                                                            media: v.media, type: v.type, duration: v.video.duration }));
      $("strip").replaceChildren(...hits.map(sceneFigure));
      showResults(hits, `${v.name}: all ${hits.length} scenes in time order`);
    } catch (e) { notice(e.message, true); }
  }

  // a scene of a video, shaped like a search hit (so that it plays and shows as a card)
  function sceneHit(s, i, v) {
    return { rank: i + 1, score: 0, path: v.path, name: v.name, start: s.start, end: s.end,
             best_time: s.best_time != null ? s.best_time
               : s.sample_times.length ? s.sample_times[Math.floor(s.sample_times.length / 2)] : s.start,
             scene_id: s.scene_id, scene_index: s.scene_index, video_id: v.video_id, thumbnail: s.thumbnail,
             frames: s.frames, sample_times: s.sample_times, media: v.media, type: v.type, duration: v.duration };
  }

  function sceneFigure(h) {
    return el("figure", { onclick: () => play(h), title: "Play this scene", "data-scene": h.scene_id },
      el("img", { src: h.thumbnail || "", alt: "", loading: "lazy" }),
      el("figcaption", { text: `${fmt(h.start)}–${fmt(h.end)}` }));
  }

  // -- the start page: the library, newest videos first, a strip of scenes each -----------------
  const LIBRARY_PAGE = 12;

  async function showLibrary(fresh) {
    const p = params();
    const offset = fresh || !state.library ? 0 : state.library.offset;
    try {
      const data = await api("/api/library?" + apiParams(p, { limit: String(LIBRARY_PAGE), offset: String(offset), scenes: "12" }, true));
      if (params().toString() !== p.toString()) return;  // the user went elsewhere meanwhile
      showFolders(data.folders);
      state.foldersOf = state.generation;
      const rows = data.videos.map(libraryRow);
      if (offset === 0) $("library-list").replaceChildren(...rows); else $("library-list").append(...rows);
      state.library = { offset: offset + data.videos.length, total: data.total };
      const only = describeFilters(p);
      $("library-count").textContent = `${data.total} videos${only ? " · only " + only : ""}, newest first`;
      $("library-more").hidden = state.library.offset >= data.total;
      $("library-more").textContent = `More videos (${data.total - state.library.offset} more)`;
      $("library").hidden = false;
      document.body.dataset.library = String(state.library.offset);
    } catch (e) { notice(e.message, true); }
  }

  function libraryRow(v) {
    const hits = v.scenes.map((s, i) => sceneHit(s, i, v));
    const open = (ev) => { ev.preventDefault(); go(new URLSearchParams({ video: v.video_id }), true); };
    const shown = v.scenes.length < v.scene_count ? `${v.scenes.length} of ${v.scene_count} scenes` : `${v.scene_count} scenes`;
    return el("article", { class: "lib-video", "data-video": v.video_id },
      el("div", { class: "lib-head" },
        el("a", { class: "lib-title", href: "/?video=" + encodeURIComponent(v.video_id), title: v.path, text: v.name, onclick: open }),
        el("span", { class: "lib-meta", text: `${fmt(v.duration)} · ${day(v.mtime)} · ${shown} · in ${shortPath(v.folder)}`,
                     title: v.folder })),
      el("div", { class: "lib-strip" }, ...hits.map(sceneFigure)));
  }

  // -- wiring ---------------------------------------------------------------------------------
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("q").value.trim(), said = $("said").value.trim(), shows = $("shows").value.trim();
    if (!q && !said && !shows) return;
    const p = queryUrl("q", q);
    if (said) p.set("said", said);
    if (shows) p.set("shows", shows);
    go(p, true);
  });
  $("filter-form").addEventListener("submit", (ev) => { ev.preventDefault(); applyFilters(); });
  for (const id of ["top", "by-video", "f-in", "f-since", "f-until"]) $(id).addEventListener("change", applyFilters);
  $("f-clear").addEventListener("click", () => { for (const [, id] of FILTERS) $(id).value = ""; applyFilters(); });
  $("query-clear").addEventListener("click", () => go(new URLSearchParams(), true));
  $("library-more").addEventListener("click", () => showLibrary(false));
  $("home").addEventListener("click", (ev) => { ev.preventDefault(); go(new URLSearchParams(), true); });
  $("file").addEventListener("change", (ev) => { searchImage(ev.target.files[0]); ev.target.value = ""; });
  document.addEventListener("paste", (ev) => {
    const item = [...(ev.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
    if (item) { ev.preventDefault(); searchImage(item.getAsFile()); }
  });
  let dragDepth = 0;
  document.addEventListener("dragenter", (ev) => { ev.preventDefault(); dragDepth++; $("drop-hint").hidden = false; });
  document.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; $("drop-hint").hidden = true; } });
  document.addEventListener("dragover", (ev) => ev.preventDefault());
  document.addEventListener("drop", (ev) => {
    ev.preventDefault(); dragDepth = 0; $("drop-hint").hidden = true;
    const f = ev.dataTransfer && ev.dataTransfer.files[0];
    if (f) searchImage(f);
  });
  $("video").addEventListener("timeupdate", () => {
    const v = $("video"), hit = state.current;
    if (v.hidden) return;
    if (hit && state.stopAtEnd && v.currentTime >= hit.end - 0.05) {
      if ($("player-loop").checked) {  // round again (a moment at the video's end has ended it: play on)
        v.currentTime = hit.start;
        const p = v.play();
        if (p && p.catch) p.catch(() => {});
      }
      else { v.pause(); v.currentTime = hit.end; state.stopAtEnd = false; }
    }
    drawTimeline();
    markTranscript();
  });
  // seeking back into the moment plays it to its end again; elsewhere the video plays on
  $("video").addEventListener("seeked", () => {
    const v = $("video"), hit = state.current;
    if (hit) state.stopAtEnd = v.currentTime >= hit.start - 0.05 && v.currentTime < hit.end - 0.05;
  });
  $("timeline").addEventListener("click", (ev) => {
    const r = ev.currentTarget.getBoundingClientRect();
    const t = duration() * (ev.clientX - r.left) / r.width;
    if (!$("video").hidden) userSeek(t);
  });
  $("player-close").addEventListener("click", closePlayer);
  $("player-similar").addEventListener("click", () => state.current && moreLike(state.current.scene_id));
  $("player-video").addEventListener("click", () => state.current && go(new URLSearchParams({ video: state.current.video_id }), true));
  $("player-open").addEventListener("click", openInPlayer);
  document.addEventListener("keydown", (ev) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement && document.activeElement.tagName);
    if (ev.key === "Escape") { if (typing) document.activeElement.blur(); else closePlayer(); return; }
    if (typing || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "/") { ev.preventDefault(); $("q").focus(); $("q").select(); return; }
    const step = { ArrowRight: 1, j: 1, ArrowDown: 0, ArrowLeft: -1, k: -1 }[ev.key];
    if (step) {
      ev.preventDefault();
      select(state.selected < 0 ? 0 : state.selected + step);
      if (!$("player-pane").hidden && state.results[state.selected]) play(state.results[state.selected]);
    } else if (ev.key === "Enter" && state.selected >= 0) {
      play(state.results[state.selected]);
    }
  });
  window.addEventListener("popstate", () => route());
  if (window.matchMedia("(min-width: 641px)").matches) $("filters").open = true;  // a phone: folded
  else $("q").placeholder = "Describe a scene";
  pollStatus().then(() => route());
  setInterval(pollStatus, 4000);
})();
