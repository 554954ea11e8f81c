// Shared by both review pages: an item's "possible copy of ..." list (GET /api/v1/next's
// possible_copies: near-copies dedup could neither prove nor refuse, never links) as <li> elements.
// A crawled image is shown as a small thumbnail by its catalog id; a reference set's item as text
// (set and key, verbatim). Everything is written with textContent: keys are anyone's text.
window.possibleCopies = (list) => {
  "use strict";
  const WHY = {
    "embed+orb:band": "just below the proof threshold",
    "embed+orb:few-keypoints": "too few keypoints to prove it",
    "embed+orb:no-decode": "could not be decoded to prove it",
  };
  return list.map((copy) => {
    const li = document.createElement("li");
    li.className = "copy";
    if (copy.image) {
      const img = document.createElement("img");
      img.className = "copy-thumb";
      img.src = copy.image; // /image/<sha256>: by catalog id only
      img.alt = "the crawled image it may copy";
      img.decoding = "async";
      const name = document.createElement("span");
      name.className = "mono";
      name.textContent = "crawled image " + copy.sha256.slice(0, 12) + "…";
      li.append(img, name);
    } else {
      const set = document.createElement("b");
      set.textContent = copy.reference == null ? "crawl" : copy.reference;
      const key = document.createElement("span");
      key.className = "mono copy-key";
      key.textContent = copy.key;
      li.append(set, ": ", key);
    }
    const why = document.createElement("span");
    why.className = "muted copy-why";
    const inliers = copy.score == null ? "?" : String(Math.round(copy.score)); // the verifier's score
    const cosine = copy.cosine == null ? "?" : Number(copy.cosine).toFixed(2);
    why.textContent = (WHY[copy.kind] || copy.kind) + " · " + inliers + " inliers · cos " + cosine;
    li.append(why);
    return li;
  });
};
