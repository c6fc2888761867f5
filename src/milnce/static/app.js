// milnce search page: plain JS, no build step, talks only to this server's JSON API.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), qInput = $("q"), kSelect = $("k"), byVideo = $("by-video");
  const statusEl = $("status"), list = $("results");
  const player = $("player"), playerEmpty = $("player-empty"), video = $("video"), still = $("still");
  const note = $("player-note"), title = $("player-title"), meta = $("player-meta");
  const replay = $("replay"), openFile = $("open-file"), playerLike = $("player-like");
  const timeline = $("timeline"), curveSvg = $("curve"), band = $("moment-band"), playhead = $("playhead");
  const legend = $("timeline-legend");
  const moreBtn = $("more"), clipLink = $("clip-link"), indexPick = $("index-pick");
  const FILTERS = { under: $("f-under"), path_glob: $("f-glob"), after: $("f-after"), before: $("f-before"),
                    min_duration: $("f-min"), max_duration: $("f-max") };
  const weightInput = $("speech-weight"), weightOut = $("speech-weight-value");
  const likeFile = $("like-file"), likeStart = $("like-start"), likeEnd = $("like-end");
  let weightTouched = false;  // send speech_weight only once the user moved the slider (else the server's default)
  let upload = null;      // {file, start, end}: "search by clip" mode (an uploaded clip instead of words)
  let maxClip = 300;      // seconds (/api/config)
  let lastParams = null;  // the parameters of the results shown (for "More results")
  const SVG = curveSvg.namespaceURI;  // the SVG namespace, from the page (no URL in this file)

  let results = [];
  let current = null;     // the moment in the player
  let shown = null;       // what the results answer: {q, like, source}
  let searchSeq = 0;      // ignore answers to superseded searches
  let curveSeq = 0;       // ignore curves of moments no longer in the player
  let curve = null;       // {starts, ends, scores} of the video in the player
  let stopAt = null;      // playback pauses here: the end of the moment
  let merge = true;       // join adjacent windows (only a link's ?merge=false turns it off)
  let like = "";          // VIDEO_ID@SECONDS: "more like this" mode instead of words
  let pickedK = false;    // the user chose a number of results before /api/config answered
  const defaultPlaceholder = qInput.placeholder;

  function fmtTime(s) {
    s = Math.max(0, Number(s) || 0);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const ss = sec.toFixed(1).padStart(4, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;  // never innerHTML: names come from the file system
    return e;
  }

  function setStatus(text, kind) {
    statusEl.textContent = text;
    statusEl.className = "status" + (kind ? " " + kind : "");
  }

  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    let body = null;
    try { body = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) {
      const msg = (body && body.error && body.error.message) || r.statusText;  // {"error": {status, message}}
      throw new Error(`${r.status} ${msg}`);
    }
    return body;
  }

  // "score 812.345 · cos 0.412": the raw dot product and the normalised score.
  function scoreText(m) {
    let t = `score ${Number(m.score).toFixed(3)}`;
    if (m.cosine !== undefined && m.cosine !== null) t += ` · cos ${Number(m.cosine).toFixed(3)}`;
    if (m.percentile !== undefined && m.percentile !== null) t += ` · percentile ${Number(m.percentile).toFixed(1)}`;
    if (typeof m.visual_score === "number") t += ` · visual ${m.visual_score.toFixed(3)}`;
    if (typeof m.speech_score === "number") t += ` · speech ${m.speech_score.toFixed(3)}`;
    return t;
  }

  // The search mode ("" = the server's default) and speech weight, as /api/search and the upload take them.
  function modeParams(params) {
    const picked = document.querySelector('input[name="mode"]:checked');
    const mode = picked ? picked.value : "";
    if (mode) params.set("mode", mode);
    if (weightTouched && mode !== "visual" && mode !== "speech") params.set("speech_weight", weightInput.value);
  }

  function syncWeight() {
    const picked = document.querySelector('input[name="mode"]:checked');
    const off = picked && (picked.value === "visual" || picked.value === "speech");
    weightInput.disabled = Boolean(off);
    weightInput.parentElement.classList.toggle("off", Boolean(off));
    weightOut.textContent = Number(weightInput.value).toFixed(2);
  }

  // A cue's text with the matched words marked: text nodes and <mark> elements, never HTML
  // (cue text comes from subtitle files: hostile input). "matches" are [start, end) offsets in
  // characters (code points, as the server counts them), so the text is split by code point.
  function cueText(text, matches) {
    const chars = Array.from(String(text));
    const spans = (Array.isArray(matches) ? matches : [])
      .filter((m) => Array.isArray(m) && m.length === 2 && Number.isInteger(m[0]) && Number.isInteger(m[1]))
      .map(([a, b]) => [Math.max(0, a), Math.min(chars.length, b)])
      .filter(([a, b]) => a < b)
      .sort((x, y) => x[0] - y[0]);
    const out = el("span", "cue-text");
    let at = 0;
    for (const [a, b] of spans) {
      if (a < at) continue;  // overlapping spans: the first one wins
      if (a > at) out.append(document.createTextNode(chars.slice(at, a).join("")));
      out.append(el("mark", null, chars.slice(a, b).join("")));
      at = b;
    }
    if (at < chars.length) out.append(document.createTextNode(chars.slice(at).join("")));
    return out;
  }

  // The cue lines of a moment (what was said during it), or null when there are none.
  function cueList(m) {
    if (!Array.isArray(m.cues) || !m.cues.length) return null;
    const ol = el("ol", "cues");
    ol.setAttribute("aria-label", "What is said");
    for (const c of m.cues) {
      if (!c || typeof c !== "object") continue;
      const li = el("li", "cue");
      li.append(el("span", "cue-time", `${fmtTime(c.start)} – ${fmtTime(c.end)}`));
      if (c.lang) li.append(el("span", "cue-lang", String(c.lang)));
      li.append(cueText(c.text === undefined || c.text === null ? "" : c.text, c.matches));
      ol.append(li);
    }
    return ol;
  }

  const sameMoment = (a, b) => a && b && a.video_id === b.video_id && a.start === b.start && a.end === b.end;

  function renderResults(data) {
    list.replaceChildren();
    results = data.results || [];
    results.forEach((m, i) => {
      const li = el("li", "item");
      const btn = el("button", "result" + (m.exists && m.file_state !== "changed" ? "" : " missing"));
      btn.type = "button";
      btn.dataset.index = String(i);
      btn.setAttribute("aria-label", `${m.name} from ${fmtTime(m.start)} to ${fmtTime(m.end)}`);

      const thumb = el("div", "thumb");
      if (m.exists && m.file_state !== "changed") {
        const img = el("img");
        img.loading = "lazy";
        img.decoding = "async";
        img.alt = "";
        img.width = 192;
        img.height = 108;
        img.src = m.thumbnail_url;
        img.addEventListener("error", () => { img.remove(); thumb.classList.add("no-thumb"); });
        thumb.append(img);
      } else {
        thumb.classList.add("no-thumb");
      }
      thumb.append(el("span", "stamp", fmtTime(m.start)));

      const info = el("div", "info");
      info.append(el("span", "rank", `#${i + 1}`), el("span", "name", m.name));
      info.lastChild.title = m.path;
      const line = el("span", "line");
      line.append(el("span", "time", `${fmtTime(m.start)} – ${fmtTime(m.end)}`), el("span", "score", scoreText(m)));
      info.append(line);
      if (!m.exists) info.append(el("span", "badge bad", "file missing"));
      else if (m.file_state === "changed") info.append(el("span", "badge bad", "changed since indexing"));
      else if (!m.playable) info.append(el("span", "badge", "no in-browser playback"));

      btn.append(thumb, info);
      btn.addEventListener("click", () => play(i));
      const more = el("button", "like", "More like this");
      more.type = "button";
      more.title = `Search for moments like ${m.name} at ${fmtTime(m.start)}`;
      more.addEventListener("click", () => searchLike(m));
      li.append(btn, more);
      const cues = cueList(m);
      if (cues) { li.append(cues); li.classList.add("has-cues"); }
      list.append(li);
    });
    // The player follows the results: the same moment stays (its caption and curve are
    // refreshed for the new query), any other is closed.
    if (current) {
      const i = results.findIndex((m) => sameMoment(m, current));
      if (i >= 0) play(i, true);
      else resetPlayer();
    }
  }

  function describe(data, n) {
    const noun = data.by_video ? "video" : "moment";
    const what = data.like_file ? `like ${data.like_file.still ? "the image" : "the clip"} ${data.like_file.name}` +
        (data.like_file.still ? "" : ` (${fmtTime(data.like_file.start)} – ${fmtTime(data.like_file.end)})`)
      : data.like ? `like ${data.like.name} at ${fmtTime(data.like.start)}` : `for “${data.query.trim()}”`;
    const mode = data.mode ? `, ${data.mode}` : "";
    return `${n} ${noun}${n === 1 ? "" : "s"} ${what} (${Math.round(data.took_ms)} ms${mode})`;
  }

  // POST the clip (multipart, one part "file"); the search parameters go in the address.
  async function postClip(params) {
    const body = new FormData();
    body.append("file", upload.file, upload.file.name);
    const r = await fetch("/api/search/like-upload?" + params.toString(),
                          { method: "POST", body, headers: { Accept: "application/json" } });
    let data = null;
    try { data = await r.json(); } catch (e) { /* not JSON */ }
    if (!r.ok) throw new Error(`${r.status} ${(data && data.error && data.error.message) || r.statusText}`);
    return data;
  }

  async function more() {
    if (!lastParams) return;
    const params = new URLSearchParams(lastParams);
    params.set("offset", String(results.length));
    const seq = ++searchSeq;
    moreBtn.disabled = true;
    try {
      const data = upload ? await postClip(params) : await getJSON("/api/search?" + params.toString());
      if (seq !== searchSeq) return;
      const n = data.results.length;
      data.results = results.concat(data.results);
      renderResults(data);
      moreBtn.hidden = n < Number(params.get("k"));
      setStatus(describe(data, data.results.length) + (data.message ? `. ${data.message}` : ""), "");
    } catch (err) {
      if (seq === searchSeq) setStatus(`More results failed: ${err.message}`, "error");
    } finally {
      moreBtn.disabled = false;
    }
  }

  async function search(push) {
    const q = like || upload ? "" : qInput.value.trim();
    const k = kSelect.value;
    const params = new URLSearchParams(upload ? { k } : like ? { like, k } : { q, k });
    if (upload && upload.start !== "") params.set("start", upload.start);
    if (upload && upload.end !== "") params.set("end", upload.end);
    modeParams(params);
    if (byVideo.checked) params.set("by_video", "true");
    if (!merge) params.set("merge", "false");
    for (const [name, input] of Object.entries(FILTERS)) if (input.value.trim()) params.set(name, input.value.trim());
    if (indexPick.value) params.set("index", indexPick.value);
    lastParams = params.toString();
    moreBtn.hidden = true;
    if (push !== false && !upload) history.replaceState(null, "", (q || like) ? "?" + params.toString() : location.pathname);
    const seq = ++searchSeq;
    setStatus(upload ? `Uploading and embedding ${upload.file.name}…` : q || like ? "Searching…" : "", "busy");
    form.classList.add("busy");
    try {
      const data = upload ? await postClip(params) : await getJSON("/api/search?" + params.toString());
      if (seq !== searchSeq) return;
      shown = { q: data.like || data.like_file ? "" : data.query.trim(), like: data.like ? like : "", source: data.like,
                file: data.like_file || null };
      renderResults(data);
      const n = data.results.length;
      moreBtn.hidden = n < Number(k);
      let text = n ? describe(data, n) : "";
      if (data.message) text = text ? `${text}. ${data.message}` : data.message;
      setStatus(text || "No results.", n ? "" : "empty");
    } catch (err) {
      if (seq !== searchSeq) return;
      list.replaceChildren();
      results = [];
      resetPlayer();
      setStatus(`Search failed: ${err.message}`, "error");
    } finally {
      if (seq === searchSeq) form.classList.remove("busy");
    }
  }

  function searchLike(m) {
    upload = null;
    likeFile.value = "";
    like = `${m.like_prefix || ""}${m.video_id}@${Number(m.start).toFixed(2)}`;
    qInput.value = "";
    qInput.placeholder = `Moments like ${m.name} at ${fmtTime(m.start)} (type words to search by text)`;
    search();
  }

  function showNote(text, kind) {
    note.textContent = text;
    note.className = "note" + (kind ? " " + kind : "");
    note.hidden = !text;
  }

  function seekAndPlay() {
    if (!current) return;
    stopAt = current.end;
    try { video.currentTime = current.start; } catch (e) { /* not seekable yet */ }
    const p = video.play();
    if (p && p.catch) p.catch(() => { /* autoplay refused: the user presses play */ });
  }

  function resetPlayer() {
    current = null;
    curve = null;
    stopAt = null;
    curveSeq++;
    stopVideo();
    still.hidden = true;
    player.hidden = true;
    playerEmpty.hidden = false;
    timeline.hidden = true;
    legend.hidden = true;
    list.querySelectorAll(".result.selected").forEach((b) => b.classList.remove("selected"));
  }

  // keep: the same moment after a new search (refresh the caption and curve, do not restart playback)
  function play(i, keep) {
    const m = results[i];
    if (!m) return;
    current = m;
    list.querySelectorAll(".result.selected").forEach((b) => b.classList.remove("selected"));
    const btn = list.querySelector(`.result[data-index="${i}"]`);
    if (btn) btn.classList.add("selected");

    playerEmpty.hidden = true;
    player.hidden = false;
    title.textContent = m.name;
    title.title = m.path;
    meta.textContent = `${fmtTime(m.start)} – ${fmtTime(m.end)} · ${scoreText(m)} · video #${m.video_id}`;
    openFile.href = m.file_url;
    const servable = m.exists && m.file_state !== "changed";
    openFile.hidden = !servable;
    const clipEnd = Math.min(m.end, m.start + maxClip);
    clipLink.href = `${m.file_url.replace(/\/file(\?|$)/, "/clip$1")}${m.file_url.includes("?") ? "&" : "?"}` +
      `start=${m.start.toFixed(2)}&end=${clipEnd.toFixed(2)}`;
    clipLink.hidden = !servable;
    replay.hidden = !(servable && m.playable);
    loadCurve(m);
    if (keep) return;
    showNote("");

    if (!m.exists) {
      stopVideo();
      still.hidden = true;
      showNote(`File missing: ${m.path} was moved or deleted after indexing. Re-run 'milnce index' to update.`, "bad");
      return;
    }
    if (m.file_state === "changed") {
      stopVideo();
      still.hidden = true;
      showNote(`File changed since indexing: ${m.path} is not the file that was indexed, so it is not served. Re-run 'milnce index' to update.`, "bad");
      return;
    }
    if (!m.playable) {
      stopVideo();
      showStill(m);
      const ext = (m.name.split(".").pop() || "").toUpperCase();
      showNote(`Browsers cannot play ${ext} files. Open ${m.path} in a desktop player at ${fmtTime(m.start)}.`);
      return;
    }
    still.hidden = true;
    video.hidden = false;
    stopAt = m.end;
    const src = new URL(m.file_url, location.href).href;
    if (video.dataset.src === src && video.readyState >= 1) {
      seekAndPlay();
    } else {
      video.dataset.src = src;
      video.src = `${m.file_url}#t=${m.start.toFixed(2)}`;  // media fragment: start at the moment
      video.load();
    }
    if (window.matchMedia("(max-width: 860px)").matches) player.scrollIntoView({ behavior: "smooth", block: "start" });
  }

  function showStill(m) {
    video.hidden = true;
    still.hidden = false;
    still.src = `/api/videos/${m.video_id}/thumbnail?t=${m.start.toFixed(2)}` +
      (m.like_prefix ? `&index=${encodeURIComponent(m.index)}` : "");
  }

  function stopVideo() {
    video.pause();
    video.removeAttribute("src");
    delete video.dataset.src;
    video.load();
    video.hidden = true;
  }

  // ----- the timeline: the query's score over the video, the moment, the playhead ----------

  function duration() {
    if (Number.isFinite(video.duration) && video.duration > 0 && !video.hidden) return video.duration;
    const ends = curve && curve.ends.length ? curve.ends[curve.ends.length - 1] : 0;
    return Math.max(ends, curve && curve.duration ? curve.duration : 0, current ? current.end : 0) || 1;
  }

  function drawTimeline() {
    if (!current) return;
    const d = duration();
    band.style.left = `${(100 * current.start) / d}%`;
    band.style.width = `${Math.max(0.5, (100 * (current.end - current.start)) / d)}%`;
    curveSvg.replaceChildren();
    if (curve && curve.scores.length) {
      const lo = Math.min(...curve.scores), hi = Math.max(...curve.scores), span = hi - lo || 1;
      const pts = curve.scores.map((s, i) => {
        const x = (1000 * (curve.starts[i] + curve.ends[i])) / 2 / d;
        const y = 58 - (54 * (s - lo)) / span;
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      });
      const area = document.createElementNS(SVG, "polygon");
      const first = pts[0].split(",")[0], last = pts[pts.length - 1].split(",")[0];
      area.setAttribute("points", `${first},60 ${pts.join(" ")} ${last},60`);
      area.setAttribute("class", "curve-area");
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", pts.join(" "));
      line.setAttribute("class", "curve-line");
      curveSvg.append(area, line);
    }
    timeline.hidden = false;
    movePlayhead();
  }

  function movePlayhead() {
    if (!current || timeline.hidden) return;
    const t = video.hidden ? current.start : video.currentTime;
    playhead.style.left = `${(100 * t) / duration()}%`;
  }

  async function loadCurve(m) {
    const seq = ++curveSeq;
    curve = null;
    drawTimeline();
    if (shown && shown.file) {
      legend.textContent = "No score curve for an uploaded clip · highlighted: this moment";
      legend.hidden = false;
      return;
    }
    if (!shown || !(shown.q || shown.like)) return;
    const params = new URLSearchParams(shown.like ? { like: shown.like } : { q: shown.q });
    if (m.like_prefix) params.set("index", m.index);
    try {
      const c = await getJSON(`/api/videos/${m.video_id}/curve?` + params.toString());
      if (seq !== curveSeq) return;
      curve = c;
      drawTimeline();
      legend.textContent = (shown.like ? `Similarity over time to ${shown.source.name} at ${fmtTime(shown.source.start)}`
        : `Score over time for “${shown.q}”`) + " · highlighted: this moment · click to seek";
      legend.hidden = false;
    } catch (e) {
      if (seq === curveSeq) { legend.textContent = `No score curve: ${e.message}`; legend.hidden = false; }
    }
  }

  timeline.addEventListener("click", (ev) => {
    if (!current || video.hidden || !video.getAttribute("src")) return;
    const r = timeline.getBoundingClientRect();
    stopAt = null;  // the user goes elsewhere: play on
    video.currentTime = Math.max(0, Math.min(1, (ev.clientX - r.left) / r.width)) * duration();
  });

  // Stop at the end of the moment (once per replay; playing on afterwards is the user's choice).
  function checkEnd() {
    movePlayhead();
    if (stopAt !== null && current && video.currentTime >= stopAt - 0.02) {
      stopAt = null;
      video.pause();
      showNote(`End of the moment (${fmtTime(current.end)}). Press play to go on, or replay the moment.`);
    }
  }
  function watchEnd() {
    checkEnd();
    if (!video.paused && !video.ended) requestAnimationFrame(watchEnd);
  }
  video.addEventListener("play", () => { if (note.textContent.startsWith("End of the moment")) showNote(""); requestAnimationFrame(watchEnd); });
  video.addEventListener("timeupdate", checkEnd);
  video.addEventListener("seeked", () => {
    movePlayhead();
    if (current && stopAt !== null && (video.currentTime < current.start - 0.5 || video.currentTime > current.end)) stopAt = null;
  });
  video.addEventListener("loadedmetadata", () => {
    if (current && Math.abs(video.currentTime - current.start) > 0.25) video.currentTime = current.start;
    drawTimeline();
    seekAndPlay();
  });
  video.addEventListener("error", () => {
    if (!current || !video.getAttribute("src")) return;
    const code = video.error ? video.error.code : 0;
    showStill(current);
    showNote(code === 4
      ? `This browser cannot play ${current.name} (format or codec not supported). Open the file in a desktop player at ${fmtTime(current.start)}.`
      : `Playback failed (${video.error ? video.error.message || "error " + code : "error"}).`, "bad");
  });

  replay.addEventListener("click", seekAndPlay);
  moreBtn.addEventListener("click", more);
  playerLike.addEventListener("click", () => { if (current) searchLike(current); });
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    like = "";
    upload = null;
    likeFile.value = "";
    qInput.placeholder = defaultPlaceholder;
    search();
  });
  const searching = () => Boolean(like || upload || qInput.value.trim());
  kSelect.addEventListener("change", () => { pickedK = true; if (searching()) search(); });
  byVideo.addEventListener("change", () => { if (searching()) search(); });
  document.querySelectorAll('input[name="mode"]').forEach((r) => r.addEventListener("change", () => {
    syncWeight();
    if (searching()) search();
  }));
  weightInput.addEventListener("input", () => { weightTouched = true; syncWeight(); });
  weightInput.addEventListener("change", () => { if (searching()) search(); });
  function searchClip() {
    const file = likeFile.files && likeFile.files[0];
    if (!file) return;
    like = "";
    upload = { file, start: likeStart.value.trim(), end: likeEnd.value.trim() };
    qInput.value = "";
    qInput.placeholder = `Moments like ${file.name} (type words to search by text)`;
    search();
  }
  likeFile.addEventListener("change", searchClip);
  for (const input of [likeStart, likeEnd]) input.addEventListener("change", () => { if (upload) searchClip(); });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "/" && document.activeElement !== qInput) { ev.preventDefault(); qInput.focus(); qInput.select(); }
  });

  getJSON("/healthz").then((h) => {
    const v = h.videos === null || h.videos === undefined ? "" : `${h.videos} video${h.videos === 1 ? "" : "s"}, `;
    const degraded = h.status === "ok" ? "" : ` · ${h.status}: approximate index unusable, searching exactly`;
    const model = h.model ? ` · model ${h.model}` : "";
    $("index-info").textContent = `Index: ${v}${h.windows} windows${model} · milnce ${h.version}${degraded}`;
  }).catch(() => { $("index-info").textContent = "Index status unavailable"; });

  // Several indexes: pick one or search all (merged).
  getJSON("/api/indexes").then((d) => {
    if (!d.several) return;
    const keep = indexPick.value;
    indexPick.replaceChildren(el("option", null, "all indexes"), ...d.indexes.map((x) => el("option", null, x.name)));
    indexPick.options[0].value = "";
    indexPick.value = keep;
    indexPick.parentElement.hidden = false;
  }).catch(() => {});
  indexPick.addEventListener("change", () => { if (searching()) search(); });

  // The number of results: the API's default and choices (/api/config), one source for both.
  function setChoices(cfg) {
    const wanted = kSelect.value;
    kSelect.replaceChildren(...cfg.k_choices.map((c) => el("option", null, String(c))));
    kSelect.value = pickedK && cfg.k_choices.includes(Number(wanted)) ? wanted : String(cfg.default_k);
    if (cfg.max_clip_seconds) maxClip = cfg.max_clip_seconds;
    if (typeof cfg.speech_weight === "number") weightInput.value = String(cfg.speech_weight);
    if (cfg.upload_max_mb) likeFile.title = `at most ${cfg.upload_max_mb} MiB and ${cfg.upload_max_seconds} s of clip`;
    syncWeight();
  }

  // Restore a search from the address (?q=...&k=...&by_video=true or ?like=ID@SECONDS): links can be shared.
  const params = new URLSearchParams(location.search);
  getJSON("/api/config").then(setChoices).catch(() => { /* keep the page's options */ }).finally(() => {
    const k = params.get("k");
    if (k && [...kSelect.options].some((o) => o.value === k)) kSelect.value = k;
    byVideo.checked = params.get("by_video") === "true";
    merge = params.get("merge") !== "false";
    like = params.get("like") || "";
    if (params.get("q") && !like) qInput.value = params.get("q");
    const mode = document.querySelector(`input[name="mode"][value="${CSS.escape(params.get("mode") || "")}"]`);
    if (mode) mode.checked = true;
    if (params.get("speech_weight") && Number.isFinite(Number(params.get("speech_weight")))) {
      weightInput.value = params.get("speech_weight");
      weightTouched = true;
    }
    syncWeight();
    for (const [name, input] of Object.entries(FILTERS)) if (params.get(name)) input.value = params.get(name);
    if (params.get("index")) {
      indexPick.append(el("option", null, params.get("index")));
      indexPick.value = params.get("index");
    }
    if (Object.keys(FILTERS).some((name) => params.get(name))) $("filters").open = true;
    if (qInput.value.trim() || like) search(false);
    document.body.dataset.ready = "true";
  });
})();
