// milnce search page: plain JS, no build step, talks only to this server's JSON API.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("search-form"), qInput = $("q"), kSelect = $("k"), byVideo = $("by-video");
  const statusEl = $("status"), list = $("results");
  const player = $("player"), playerEmpty = $("player-empty"), video = $("video"), still = $("still");
  const note = $("player-note"), title = $("player-title"), meta = $("player-meta");
  const replay = $("replay"), openFile = $("open-file");

  let results = [];
  let current = null;     // the moment in the player
  let searchSeq = 0;      // ignore answers to superseded searches
  let merge = true;       // join adjacent windows (only a link's ?merge=false turns it off)

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
      const msg = (body && (body.message || (typeof body.detail === "string" && body.detail))) || r.statusText;
      throw new Error(`${r.status} ${msg}`);
    }
    return body;
  }

  function renderResults(data) {
    list.replaceChildren();
    results = data.results || [];
    results.forEach((m, i) => {
      const li = el("li");
      const btn = el("button", "result" + (m.exists ? "" : " missing"));
      btn.type = "button";
      btn.dataset.index = String(i);
      btn.setAttribute("aria-label", `${m.name} from ${fmtTime(m.start)} to ${fmtTime(m.end)}`);

      const thumb = el("div", "thumb");
      if (m.exists) {
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
      line.append(el("span", "time", `${fmtTime(m.start)} – ${fmtTime(m.end)}`),
                  el("span", "score", `score ${Number(m.score).toFixed(3)}`));
      info.append(line);
      if (!m.exists) info.append(el("span", "badge bad", "file missing"));
      else if (!m.playable) info.append(el("span", "badge", "no in-browser playback"));

      btn.append(thumb, info);
      btn.addEventListener("click", () => play(i));
      li.append(btn);
      list.append(li);
    });
  }

  async function search(push) {
    const q = qInput.value.trim();
    const k = kSelect.value;
    const params = new URLSearchParams({ q, k });
    if (byVideo.checked) params.set("by_video", "true");
    if (!merge) params.set("merge", "false");
    if (push !== false) history.replaceState(null, "", q ? "?" + params.toString() : location.pathname);
    const seq = ++searchSeq;
    setStatus(q ? "Searching…" : "", "busy");
    form.classList.add("busy");
    try {
      const data = await getJSON("/api/search?" + params.toString());
      if (seq !== searchSeq) return;
      renderResults(data);
      const n = data.results.length;
      let text = n ? `${n} moment${n === 1 ? "" : "s"} for “${data.query.trim()}” (${Math.round(data.took_ms)} ms)` : "";
      if (data.message) text = text ? `${text}. ${data.message}` : data.message;
      setStatus(text || "No results.", n ? "" : "empty");
    } catch (err) {
      if (seq !== searchSeq) return;
      list.replaceChildren();
      results = [];
      setStatus(`Search failed: ${err.message}`, "error");
    } finally {
      if (seq === searchSeq) form.classList.remove("busy");
    }
  }

  function showNote(text, kind) {
    note.textContent = text;
    note.className = "note" + (kind ? " " + kind : "");
    note.hidden = !text;
  }

  function seekAndPlay() {
    if (!current) return;
    try { video.currentTime = current.start; } catch (e) { /* not seekable yet */ }
    const p = video.play();
    if (p && p.catch) p.catch(() => { /* autoplay refused: the user presses play */ });
  }

  function play(i) {
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
    meta.textContent = `${fmtTime(m.start)} – ${fmtTime(m.end)} · score ${Number(m.score).toFixed(3)} · video #${m.video_id}`;
    openFile.href = m.file_url;
    openFile.hidden = !m.exists;
    replay.hidden = !(m.exists && m.playable);
    showNote("");

    if (!m.exists) {
      stopVideo();
      still.hidden = true;
      showNote(`File missing: ${m.path} was moved or deleted after indexing. Re-run 'milnce index' to update.`, "bad");
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
    still.src = `/api/videos/${m.video_id}/thumbnail?t=${m.start.toFixed(2)}`;
  }

  function stopVideo() {
    video.pause();
    video.removeAttribute("src");
    delete video.dataset.src;
    video.load();
    video.hidden = true;
  }

  video.addEventListener("loadedmetadata", () => {
    if (current && Math.abs(video.currentTime - current.start) > 0.25) video.currentTime = current.start;
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
  form.addEventListener("submit", (ev) => { ev.preventDefault(); search(); });
  kSelect.addEventListener("change", () => { if (qInput.value.trim()) search(); });
  byVideo.addEventListener("change", () => { if (qInput.value.trim()) search(); });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "/" && document.activeElement !== qInput) { ev.preventDefault(); qInput.focus(); qInput.select(); }
  });

  getJSON("/healthz").then((h) => {
    const v = h.videos === null || h.videos === undefined ? "" : `${h.videos} video${h.videos === 1 ? "" : "s"}, `;
    $("index-info").textContent = `Index: ${v}${h.windows} windows · milnce ${h.version}`;
  }).catch(() => { $("index-info").textContent = "Index status unavailable"; });

  // Restore a search from the address (?q=...&k=...&by_video=true): links can be shared.
  const params = new URLSearchParams(location.search);
  if (params.get("k") && [...kSelect.options].some((o) => o.value === params.get("k"))) kSelect.value = params.get("k");
  byVideo.checked = params.get("by_video") === "true";
  merge = params.get("merge") !== "false";
  if (params.get("q")) {
    qInput.value = params.get("q");
    search(false);
  }
})();
