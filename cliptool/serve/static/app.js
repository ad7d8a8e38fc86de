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

  const state = { results: [], selected: -1, current: null, generation: null, shownGeneration: null,
                  server: {}, frameTimer: null, hoverTimer: null };

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
      if (state.shownGeneration !== null && s.generation !== state.shownGeneration && state.results.length) {
        notice("New videos were indexed since this search.", false, { label: "Search again", run: () => route(false) });
      }
      state.generation = s.generation;
      $("player-open").hidden = !state.server.open_player;
    } catch (e) { $("index-state").textContent = "server unreachable"; }
  }

  // -- the URL holds the query: ?q=...&top=..&videos=1, ?similar=SCENE, ?video=ID --------------
  function params() { return new URLSearchParams(location.search); }
  function go(p, push) {
    const url = "/" + (p.toString() ? "?" + p.toString() : "");
    if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
    route(false);
  }

  async function route() {
    const p = params();
    $("q").value = p.get("q") || "";
    if (p.get("top")) $("top").value = p.get("top");
    $("by-video").checked = p.get("videos") === "1";
    notice("");
    if (p.get("video")) return showVideo(p.get("video"));
    $("video-view").hidden = true;
    if (p.get("similar")) {
      return runQuery(`/api/similar?scene=${encodeURIComponent(p.get("similar"))}&top=${topN()}&videos=${p.get("videos") === "1" ? 1 : 0}`,
                      null, "more like this");
    }
    if (p.get("q")) {
      return runQuery(`/api/search?q=${encodeURIComponent(p.get("q"))}&top=${topN()}&videos=${p.get("videos") === "1" ? 1 : 0}`,
                      null, `“${p.get("q")}”`);
    }
    if (p.has("image")) { notice("Picture queries are not kept in the address; drop or paste the picture again."); }
    showResults([], "");
  }
  const topN = () => parseInt($("top").value, 10) || 24;

  async function runQuery(url, init, label) {
    $("summary").textContent = "searching…";
    const t0 = performance.now();
    const gen = state.generation;
    try {
      const data = await api(url, init);
      state.shownGeneration = gen;
      showResults(data.results, `${data.results.length} results for ${label} in ${Math.round(performance.now() - t0)} ms`);
    } catch (e) {
      showResults([], "");
      notice(e.message, true);
    }
  }

  function searchImage(file) {
    if (!file || !file.type.startsWith("image/")) { notice("That is not a picture.", true); return; }
    const form = new FormData();
    form.append("image", file, file.name || "pasted.png");
    history.pushState(null, "", "/?image");
    $("video-view").hidden = true;
    runQuery(`/api/search?top=${topN()}&videos=${$("by-video").checked ? 1 : 0}`, { method: "POST", body: form },
             `the picture ${file.name || ""}`);
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
        el("div", { class: "times", text: `${fmt(hit.start)}–${fmt(hit.end)} · best ${fmt(hit.best_time)}` })),
      el("div", { class: "actions" },
        el("button", { type: "button", class: "similar", text: "More like this",
                       onclick: (ev) => { ev.stopPropagation(); moreLike(hit.scene_id); } }),
        el("button", { type: "button", class: "whole", text: "Video",
                       onclick: (ev) => { ev.stopPropagation(); go(new URLSearchParams({ video: hit.video_id }), true); } })));
    c.addEventListener("click", () => { select(i); play(hit); });
    return c;
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
    const p = new URLSearchParams({ similar: sceneId, top: String(topN()) });
    if ($("by-video").checked) p.set("videos", "1");
    go(p, true);
  }

  // -- playing: in the page from the best time, the scene's span on the timeline -------------
  function play(hit) {
    stopFrames();
    state.current = hit;
    const pane = $("player-pane");
    pane.hidden = false;
    $("player-title").textContent = `${hit.name} · ${fmt(hit.start)}–${fmt(hit.end)}`;
    const video = $("video");
    const base = hit.media.split("#")[0];
    const canPlay = hit.type && video.canPlayType(hit.type) !== "";
    if (!canPlay) { showFrames(hit); return; }
    $("frames-view").hidden = true;
    video.hidden = false;
    video.onerror = () => { showFrames(hit); };
    video.onloadedmetadata = () => { drawTimeline(); };
    video.src = `${base}#t=${hit.best_time.toFixed(3)}`;
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
      const hits = v.scenes.map((s, i) => ({ rank: i + 1, score: 0, path: v.video.path, name: v.name, start: s.start, end: s.end,
        best_time: s.sample_times.length ? s.sample_times[Math.floor(s.sample_times.length / 2)] : s.start,
        scene_id: s.scene_id, scene_index: s.scene_index, video_id: v.video.video_id, thumbnail: s.thumbnail,
        frames: s.frames, media: v.media, type: v.type, duration: v.video.duration }));
      $("strip").replaceChildren(...hits.map((h) => el("figure", { onclick: () => play(h), title: "Play this scene" },
        el("img", { src: h.thumbnail || "", alt: "", loading: "lazy" }),
        el("figcaption", { text: `${fmt(h.start)}–${fmt(h.end)}` }))));
      showResults(hits, `${v.name}: all ${hits.length} scenes in time order`);
    } catch (e) { notice(e.message, true); }
  }

  // -- wiring ---------------------------------------------------------------------------------
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("q").value.trim();
    if (!q) return;
    const p = new URLSearchParams({ q: q, top: String(topN()) });
    if ($("by-video").checked) p.set("videos", "1");
    go(p, true);
  });
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
  $("video").addEventListener("timeupdate", () => { if (!$("video").hidden) drawTimeline(); });
  $("timeline").addEventListener("click", (ev) => {
    const r = ev.currentTarget.getBoundingClientRect();
    const t = duration() * (ev.clientX - r.left) / r.width;
    if (!$("video").hidden) $("video").currentTime = t;
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
  pollStatus().then(() => route());
  setInterval(pollStatus, 4000);
})();
