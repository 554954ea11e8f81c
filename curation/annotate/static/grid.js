// The grid review page: a page of one class, every image starting at the page's default verdict
// (the server's predicted majority); the reviewer flips only the exceptions (a click, Space, or a
// verdict key) and submits the page with Enter. All through /api/v1/ (next, decisions, undo).
// Data from the server is only ever written with textContent.
(() => {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const boot = JSON.parse($("boot").textContent);
  const KEYS = {
    a: "accept", w: "wrong_class", m: "ambiguous", q: "low_quality", x: "inappropriate", i: "in_distribution",
    d: "duplicate",
  };
  const LABELS = {
    accept: "accept", wrong_class: "wrong class", ambiguous: "ambiguous", low_quality: "low quality",
    inappropriate: "inappropriate", in_distribution: "in-distribution", skip: "skip", duplicate: "duplicate",
  };
  const GONE = new Set(["complete", "not_reviewable", "unknown_id"]); // nothing the reviewer can fix

  let page = null; // {wnid, class_name, default_verdict, ...} of the page shown
  let items = [];
  let chosen = new Map(); // id -> verdict, for every item of the page
  let focus = 0;
  let last = null; // the last submitted page: {page, items, chosen, ids recorded}
  let busy = false; // a submit, undo or load in flight: keys wait
  let showCrop = false;
  let viewing = false;

  const opposite = (verdict) => (verdict === "accept" ? "wrong_class" : "accept");

  let flashTimer = 0;
  function flash(message) {
    $("flash").textContent = message;
    clearTimeout(flashTimer);
    flashTimer = setTimeout(() => { $("flash").textContent = ""; }, 4000);
  }

  function setBusy(value, label) {
    busy = value;
    document.body.dataset.pending = value ? "1" : "0";
    $("saving").textContent = value ? label : "saved";
    $("saving").className = "saving" + (value ? " busy" : "");
  }

  async function call(url, body) {
    const init = body === undefined ? { credentials: "same-origin" } : {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    };
    for (let attempt = 0; ; attempt++) {
      let r;
      try {
        r = await fetch(url, init);
      } catch (_) {
        if (attempt >= 4) throw new Error("the server cannot be reached");
        await new Promise((resolve) => setTimeout(resolve, 250 * 2 ** attempt));
        continue;
      }
      let answer = {};
      try { answer = await r.json(); } catch (_) { /* not JSON */ }
      if (!r.ok) throw new Error(answer.error || "HTTP " + r.status);
      return answer;
    }
  }

  function badge(el, verdict) {
    el.textContent = LABELS[verdict] || verdict;
    el.className = "badge v-" + verdict;
  }

  function cell(it, index) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "thumb";
    button.tabIndex = -1; // keys go to the page's handler, never to a focused button
    button.dataset.index = String(index);
    button.dataset.id = it.id;
    const img = document.createElement("img");
    img.src = it.image; // /image/<sha256>: by catalog id only
    img.alt = "candidate " + (index + 1) + " for " + it.class_name;
    img.decoding = "async";
    const tag = document.createElement("span");
    const num = document.createElement("b");
    num.className = "num";
    num.textContent = label(index);
    const zoom = document.createElement("span");
    zoom.className = "zoom";
    zoom.textContent = "⤢";
    zoom.title = "large view (v)";
    zoom.addEventListener("click", (e) => { e.stopPropagation(); setFocus(index); openViewer(); });
    button.append(img, tag, num, zoom);
    const copies = it.possible_copies || [];
    if (copies.length) { // dedup's undecided near-copies: the large view lists them
      const mark = document.createElement("i");
      mark.className = "copy-mark";
      mark.textContent = "copy?";
      mark.title = "possible copy of " + copies.length + " other image" + (copies.length > 1 ? "s" : "") + ": large view (v)";
      mark.addEventListener("click", (e) => { e.stopPropagation(); setFocus(index); openViewer(); });
      button.classList.add("maybe-copy");
      button.append(mark);
    }
    button.addEventListener("click", () => {
      button.blur();
      if (!busy) { setFocus(index); flip(index); }
    });
    return button;
  }

  // Each thumbnail's number, typed as shown (two digits from ten images up): flips it in 2 keys,
  // where arrows take 5 on average to reach a random one of 48 (benchmarks/grid_actions.py).
  const width = () => (items.length >= 10 ? 2 : 1);
  const label = (index) => String(index + 1).padStart(width(), "0");
  let typed = "";
  let typedTimer = 0;

  function digit(d) {
    typed += d;
    clearTimeout(typedTimer);
    if (typed.length < width()) {
      typedTimer = setTimeout(() => { typed = ""; }, 2000);
      flash("image " + typed + "…");
      return;
    }
    const n = Number(typed);
    typed = "";
    if (n < 1 || n > items.length) { flash("no image " + n + " on this page"); return; }
    setFocus(n - 1);
    flip(n - 1);
  }

  function paint(index) {
    const it = items[index];
    const button = $("grid").children[index];
    const verdict = chosen.get(it.id);
    badge(button.querySelector("span"), verdict);
    button.classList.toggle("exception", verdict !== page.default_verdict);
    button.classList.toggle("focus", index === focus);
    button.dataset.verdict = verdict;
    if (viewing && index === focus) badge($("viewer-verdict"), verdict);
  }

  function show(answerPage, pageItems, verdicts) {
    page = answerPage;
    items = pageItems;
    chosen = verdicts || new Map(items.map((it) => [it.id, page.default_verdict]));
    focus = 0;
    typed = "";
    $("class-name").textContent = page ? page.class_name : "";
    $("wnid").textContent = page ? page.wnid : "";
    $("gloss").textContent = items.length ? items[0].gloss || "" : "";
    $("default-verdict").hidden = !page;
    if (page) badge($("default-verdict"), page.default_verdict);
    $("default-basis").textContent = page ? "why: " + page.default_basis : "";
    $("grid").replaceChildren(...items.map(cell));
    $("grid").hidden = !items.length;
    $("done").hidden = !!items.length;
    $("grid").classList.toggle("cropped", showCrop);
    items.forEach((_, i) => paint(i));
    document.body.dataset.page = page && items.length ? page.wnid + ":" + items.length : "none";
  }

  function counts(answer) {
    $("remaining").textContent = String(answer.remaining);
    const estimate = window.reviewEstimate(answer);
    $("estimate").textContent = estimate.short;
    $("estimate-basis").textContent = estimate.line;
  }

  async function load() {
    setBusy(true, "loading…");
    try {
      const p = new URLSearchParams({ mode: "grid", limit: String(boot.grid_size) });
      if (boot.wnid) p.set("wnid", boot.wnid);
      const answer = await call("/api/v1/next?" + p.toString());
      counts(answer);
      show(answer.page, answer.items, null);
    } catch (err) {
      flash("could not load a page (" + err.message + "); reload to retry");
    } finally {
      setBusy(false);
    }
  }

  function setFocus(index) {
    if (!items.length) return;
    const before = focus;
    focus = Math.max(0, Math.min(index, items.length - 1));
    paint(before);
    paint(focus);
    $("grid").children[focus].scrollIntoView({ block: "nearest" });
    if (viewing) openViewer();
  }

  function flip(index) {
    const it = items[index];
    if (!it) return;
    const now = chosen.get(it.id);
    chosen.set(it.id, now === page.default_verdict ? opposite(page.default_verdict) : page.default_verdict);
    paint(index);
  }

  function choose(index, verdict) {
    const it = items[index];
    if (!it) return;
    chosen.set(it.id, chosen.get(it.id) === verdict ? page.default_verdict : verdict);
    paint(index);
  }

  async function submit() {
    if (!items.length) return;
    setBusy(true, "saving " + items.length + "…");
    const shown = { page, items, chosen: new Map(chosen) };
    let todo = items.map((it) => ({ id: it.id, verdict: chosen.get(it.id) }));
    const recorded = new Set(todo.map((d) => d.id));
    const problems = [];
    let gone = 0;
    try {
      for (let round = 0; todo.length && round < 3; round++) {
        if (round) await new Promise((resolve) => setTimeout(resolve, 500 * round)); // busy: wait, resend
        const answer = await call("/api/v1/decisions", { decisions: todo });
        const retry = [];
        for (const e of answer.errors) {
          if (e.code === "busy") { retry.push(todo[e.index]); continue; }
          recorded.delete(e.id);
          if (GONE.has(e.code)) gone++;
          else problems.push(e.error);
        }
        todo = retry;
      }
      for (const d of todo) { recorded.delete(d.id); problems.push("the catalog stayed busy: not saved"); }
    } catch (err) {
      setBusy(false);
      flash("page not saved (" + err.message + "): press Enter to try again");
      return;
    }
    last = { ...shown, ids: [...recorded] };
    setBusy(false);
    let message = "saved " + recorded.size + " verdicts";
    if (gone) message += "; " + gone + " already finished by other reviewers";
    if (problems.length) message += "; not saved: " + problems[0];
    flash(message);
    await load();
  }

  async function undo() {
    if (!last) { flash("nothing to undo"); return; }
    const previous = last;
    last = null;
    setBusy(true, "undoing…");
    try {
      if (previous.ids.length) await call("/api/v1/undo", { ids: previous.ids });
    } catch (err) {
      last = previous;
      setBusy(false);
      flash("undo failed (" + err.message + ")");
      return;
    }
    setBusy(false);
    $("remaining").textContent = String(Number($("remaining").textContent) + previous.ids.length);
    show(previous.page, previous.items, previous.chosen);
    flash("the last page is back, with your verdicts: change them and submit again");
  }

  function openViewer() {
    const it = items[focus];
    if (!it) return;
    viewing = true;
    $("viewer").hidden = false;
    const photo = $("photo");
    if (photo.getAttribute("src") !== it.image) photo.src = it.image;
    if (it.width && it.height) { // as large as the window allows (up to 4x), so the crop box stays on it
      const scale = Math.min((window.innerWidth - 360) / it.width, (window.innerHeight - 24) / it.height, 4);
      photo.style.width = Math.max(1, Math.floor(it.width * scale)) + "px";
      photo.style.height = Math.max(1, Math.floor(it.height * scale)) + "px";
    }
    window.placeCrop($("crop"), it.crop, showCrop);
    $("predictions").replaceChildren(...it.predictions.map((p) => {
      const li = document.createElement("li");
      const conf = p.confidence == null ? "?" : Math.round(100 * p.confidence) + "%";
      li.textContent = p.pred_name + " " + conf + " (" + p.model + ")";
      return li;
    }));
    for (const key of ["title", "source", "license"]) $(key).textContent = it[key] || "—";
    const copies = it.possible_copies || [];
    $("copy-list").replaceChildren(...window.possibleCopies(copies));
    $("copies").hidden = !copies.length;
    $("size").textContent = it.width ? it.width + " × " + it.height : "—";
    badge($("viewer-verdict"), chosen.get(it.id));
  }

  function closeViewer() {
    viewing = false;
    $("viewer").hidden = true;
  }

  function columns() {
    const cells = $("grid").children;
    if (!cells.length) return 1;
    const top = cells[0].offsetTop;
    let n = 0;
    while (n < cells.length && cells[n].offsetTop === top) n++;
    return Math.max(1, n);
  }

  function toggleCrop() {
    showCrop = !showCrop;
    $("grid").classList.toggle("cropped", showCrop);
    if (viewing) openViewer();
    flash(showCrop ? "showing the centre crop the model saw" : "whole images");
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement) return;
    const key = e.key.length === 1 ? e.key.toLowerCase() : e.key;
    let handled = true;
    if (busy || (e.repeat && !key.startsWith("Arrow"))) { e.preventDefault(); return; } // held arrows move on
    if (key === "ArrowRight") setFocus(focus + 1);
    else if (key === "ArrowLeft") setFocus(focus - 1);
    else if (key === "ArrowDown" && !viewing) setFocus(focus + columns());
    else if (key === "ArrowUp" && !viewing) setFocus(focus - columns());
    else if (key === " " || key === "f") flip(focus);
    else if (/^[0-9]$/.test(key)) digit(key);
    else if (KEYS[key] && boot.verdicts.includes(KEYS[key])) choose(focus, KEYS[key]);
    else if (key === "Enter") { closeViewer(); submit(); }
    else if (key === "u" || key === "Backspace") { closeViewer(); undo(); }
    else if (key === "v" || key === "z") { if (viewing) closeViewer(); else openViewer(); }
    else if (key === "Escape") closeViewer();
    else if (key === "c") toggleCrop();
    else handled = false;
    if (handled) e.preventDefault();
  });

  $("submit").addEventListener("click", (e) => { e.currentTarget.blur(); if (!busy) submit(); });
  $("undo").addEventListener("click", (e) => { e.currentTarget.blur(); if (!busy) undo(); });
  $("viewer").addEventListener("click", (e) => { if (e.target === $("viewer")) closeViewer(); });
  $("grid").style.setProperty("--crop-scale", String(1 / boot.crop_fraction));
  load();
})();
