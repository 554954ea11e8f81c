// The one-by-one review page: keyboard first, one verdict per key, the next images preloaded,
// decisions sent in order in the background, all through /api/v1/ (next, decisions, undo).
// Data from the server is only ever written with textContent.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const boot = JSON.parse($("boot").textContent);
  const KEYS = {
    a: "accept", 1: "accept", w: "wrong_class", 2: "wrong_class", m: "ambiguous", 3: "ambiguous",
    q: "low_quality", 4: "low_quality", x: "inappropriate", 5: "inappropriate", s: "skip",
    i: "in_distribution", 6: "in_distribution", d: "duplicate", 7: "duplicate",
  };
  const LABELS = {
    accept: "accept", wrong_class: "wrong class", ambiguous: "ambiguous / several objects",
    low_quality: "low quality / not a photo", inappropriate: "inappropriate", skip: "skipped",
    in_distribution: "in-distribution (an ImageNet-1k class)", duplicate: "duplicate: a copy of another image",
  };
  const PRELOAD = 3;
  const MAX_LIMIT = 100; // the most one GET /api/v1/next returns
  const keyOf = (it) => it.sha256 + ":" + it.wnid;

  const items = []; // every item loaded on this page, in queue order
  const known = new Set();
  const votes = new Map(); // key -> verdict cast on this page
  const undoStack = []; // keys, most recent last
  const preloaded = new Map();
  let pos = 0;
  let exhausted = false;
  let loading = null;
  let chain = Promise.resolve();
  let pending = 0;
  let saveError = "";
  let showCrop = false;
  let left = boot.remaining; // the server's count when last asked ...
  let votesAtCount = 0; // ... and how many verdicts this page had cast then

  function add(batch) {
    for (const it of batch) {
      const k = keyOf(it);
      if (!known.has(k)) {
        known.add(k);
        items.push(it);
        if (it.vote) votes.set(k, it.vote);
      }
    }
  }

  // The server never sends a pair this annotator decided, but it does send the loaded ones not yet
  // judged: ask for enough to get new ones. The request waits in the send chain, so the server
  // counts exactly the decisions made before it was asked (the count shown stays exact).
  function fetchMore() {
    if (exhausted) return Promise.resolve();
    if (loading) return loading;
    const counted = votes.size;
    const ahead = items.filter((it) => !votes.has(keyOf(it))).length;
    const limit = Math.min(MAX_LIMIT, ahead + boot.batch);
    const p = new URLSearchParams({ mode: "single", limit: String(limit) });
    if (boot.wnid) p.set("wnid", boot.wnid);
    loading = chain.then(async () => {
      try {
        const r = await fetch("/api/v1/next?" + p.toString(), { credentials: "same-origin" });
        if (!r.ok) throw new Error("HTTP " + r.status);
        const data = await r.json();
        add(data.items);
        if (data.items.length < limit) exhausted = true;
        left = data.remaining;
        votesAtCount = counted;
        const estimate = window.reviewEstimate(data);
        $("estimate").textContent = estimate.short;
        $("estimate-basis").textContent = estimate.line;
      } catch (err) {
        flash("could not load more images (" + err.message + "); press → to retry");
      } finally {
        loading = null;
      }
    });
    chain = loading;
    return loading;
  }

  function imageUrl(it) { return "/image/" + encodeURIComponent(it.sha256); }

  function preload() {
    for (let i = pos + 1; i <= pos + PRELOAD && i < items.length; i++) {
      const url = imageUrl(items[i]);
      if (!preloaded.has(url)) {
        const img = new Image();
        img.decoding = "async";
        img.src = url;
        preloaded.set(url, img);
      }
    }
  }

  // Show the photo as large as the stage allows (up to 4x), so the crop box stays on the image.
  function fit() {
    const it = items[pos];
    const photo = $("photo");
    if (!it || !it.width || !it.height) { photo.style.width = photo.style.height = ""; return; }
    const stage = $("stage");
    const scale = Math.min((stage.clientWidth - 24) / it.width, (stage.clientHeight - 24) / it.height, 4);
    photo.style.width = Math.max(1, Math.floor(it.width * scale)) + "px";
    photo.style.height = Math.max(1, Math.floor(it.height * scale)) + "px";
  }

  function text(id, value) { $(id).textContent = value == null || value === "" ? "—" : String(value); }

  function render() {
    const it = items[pos];
    $("frame").hidden = !it;
    $("done").hidden = !!it || !exhausted;
    $("remaining").textContent = String(Math.max(0, left - (votes.size - votesAtCount)));
    document.querySelectorAll(".verdict").forEach((b) => b.classList.toggle("chosen", !!it && votes.get(keyOf(it)) === b.dataset.verdict));
    if (!it) {
      for (const id of ["class-name", "wnid", "gloss", "title", "source", "author", "license", "size"]) $(id).textContent = "";
      $("predictions").replaceChildren();
      $("copies").hidden = true;
      $("page-link").removeAttribute("href");
      $("current").textContent = exhausted ? "" : "loading…";
      if (!exhausted) fetchMore().then(() => { if (items[pos] || exhausted) render(); });
      return;
    }
    const photo = $("photo");
    const url = imageUrl(it);
    if (photo.getAttribute("src") !== url) photo.src = url;
    photo.alt = "image under review for class " + it.class_name;
    fit();
    $("class-name").textContent = it.class_name;
    $("wnid").textContent = it.wnid;
    $("gloss").textContent = it.gloss || "";
    const list = it.predictions.map((p) => {
      const li = document.createElement("li");
      const name = document.createElement("b");
      name.textContent = p.pred_name;
      const conf = document.createElement("span");
      conf.className = "conf";
      conf.textContent = p.confidence == null ? "?" : Math.round(100 * p.confidence) + "%";
      const model = document.createElement("span");
      model.className = "muted";
      model.textContent = p.model;
      li.append(name, " ", conf, " ", model);
      return li;
    });
    $("predictions").replaceChildren(...list);
    const copies = it.possible_copies || [];
    $("copy-list").replaceChildren(...window.possibleCopies(copies));
    $("copies").hidden = !copies.length;
    text("title", it.title);
    text("source", it.source);
    text("author", it.author);
    text("license", it.license);
    $("size").textContent = it.width ? it.width + " × " + it.height : "—";
    const link = $("page-link");
    if (it.page_url) link.href = it.page_url; // http(s) only: checked by the server
    else link.removeAttribute("href");
    window.placeCrop($("crop"), it.crop, showCrop);
    const mine = votes.get(keyOf(it));
    $("current").textContent = mine ? "your verdict: " + LABELS[mine] + " (press a key to change it)" : "";
    $("note").value = it.note || "";
    preload();
    if (items.length - pos <= boot.batch / 2) fetchMore(); // half a batch ahead: a slow answer never stalls
  }

  function status() {
    const el = $("saving");
    el.textContent = pending ? "saving " + pending + "…" : saveError || "saved";
    el.className = "saving" + (saveError ? " error" : pending ? " busy" : "");
    document.body.dataset.pending = String(pending);
  }

  let flashTimer = 0;
  function flash(message) {
    $("flash").textContent = message;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { $("flash").textContent = ""; }, 2500);
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function post(url, body) {
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await fetch(url, {
          method: "POST",
          credentials: "same-origin",
          keepalive: true,
          headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
          body: JSON.stringify(body),
        });
        if (r.ok) {
          const answer = await r.json();
          if (answer.errors && answer.errors.length) flash("not recorded: " + answer.errors[0].error);
          return;
        }
        let reason = "HTTP " + r.status;
        try { reason = (await r.json()).error || reason; } catch (_) { /* not JSON */ }
        saveError = "not saved: " + reason;
        return;
      } catch (_) {
        if (attempt >= 4) { saveError = "not saved: the server cannot be reached"; return; }
        await sleep(250 * 2 ** attempt);
      }
    }
  }

  // Requests go out one after another, so an undo never overtakes the vote it undoes.
  function send(url, body) {
    pending++;
    status();
    chain = chain.then(() => post(url, body)).finally(() => { pending--; status(); });
  }

  function go(i) {
    pos = Math.max(0, Math.min(i, items.length));
    render();
  }

  function vote(verdict) {
    const it = items[pos];
    if (!it) return;
    const k = keyOf(it);
    it.note = $("note").value.trim();
    votes.set(k, verdict);
    const at = undoStack.indexOf(k);
    if (at >= 0) undoStack.splice(at, 1);
    undoStack.push(k);
    send("/api/v1/decisions", { decisions: [{ id: k, verdict, note: it.note }] });
    go(pos + 1);
  }

  function undo() {
    const k = undoStack.pop();
    if (!k) { flash("nothing to undo"); return; }
    const i = items.findIndex((it) => keyOf(it) === k);
    const it = items[i];
    votes.delete(k);
    send("/api/v1/undo", { ids: [k] });
    go(i);
    flash("undone — judge this image again");
  }

  function forward() {
    const it = items[pos];
    if (!it) { go(pos); return; }
    if (votes.has(keyOf(it))) go(pos + 1);
    else vote("skip");
  }

  function saveNote() {
    const it = items[pos];
    $("note").blur();
    if (!it) return;
    it.note = $("note").value.trim();
    const verdict = votes.get(keyOf(it));
    if (verdict) send("/api/v1/decisions", { decisions: [{ id: keyOf(it), verdict, note: it.note }] });
    flash(verdict ? "note saved" : "note kept: it is saved with your verdict");
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target === $("note")) {
      if (e.key === "Enter") { e.preventDefault(); saveNote(); }
      else if (e.key === "Escape") { e.preventDefault(); $("note").blur(); }
      return;
    }
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement) return;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    let handled = true;
    if (KEYS[key] && boot.verdicts.includes(KEYS[key])) { if (!e.repeat) vote(KEYS[key]); }
    else if (key === "ArrowRight") forward();
    else if (key === "ArrowLeft") go(pos - 1);
    else if (key === "u" || key === "Backspace") undo();
    else if (key === "n") $("note").focus();
    else if (key === "c") { showCrop = !showCrop; render(); flash(showCrop ? "showing the centre crop the model saw" : "crop hidden"); }
    else handled = false;
    if (handled) e.preventDefault();
  });

  document.querySelectorAll(".verdict").forEach((button) => {
    button.addEventListener("click", () => { button.blur(); vote(button.dataset.verdict); });
  });

  window.addEventListener("resize", fit);
  $("photo").addEventListener("error", () => flash("this image cannot be loaded (file missing?): press s to skip it"));
  add(boot.items);
  votesAtCount = votes.size;
  if (boot.pair) exhausted = true; // one pair from the conflicts list: nothing else to load
  status();
  render();
})();
