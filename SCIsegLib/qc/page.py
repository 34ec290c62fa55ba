"""The static page ``qc/index.html``: reads ``entries.js`` (a ``<script>``, so it works from ``file://``),
lists the scans, shows the selected one, and keeps the rater's decisions in the browser's local storage.

Keys: up/down or k/j move; right arrow toggles the contours; ``f`` cycles Pass / Fail / Artifact; digits set a
rank; ``/`` focuses the search; a click on a column header sorts by it (again: reverse; n/a last). "Save fails"
downloads ``qc_fails.yml`` (the files marked Fail), "Save all" ``qc_decisions.json`` (every decision); ``sciseg queue
qc`` reads both. "qc_fail.yml" and "qc_artifact.yml" download the Fail and Artifact lists in SCT's format (the
``FILES_SEG`` / ``FILES_LESION`` keys of SCT's QC report and of its ``manual-correction`` scripts). The viewer shows
each scan's date, command and version, its flags, and why a number is n/a. All user text goes in as textContent.

A scan marked Fail that lies in a BIDS dataset (its ``case_id``, from :func:`report.review_case_id`) gets an "Open in
sciseg review" link: the review address the rater sets once in the header (kept in local storage; default
:data:`DEFAULT_REVIEW_ADDRESS`, http/https only) with ``?case=<case id>`` set through the URL API, so ``sciseg review``
opens that case in a new tab. While an input has the focus, keys go to it, not to the report.
"""

#: Where ``sciseg review`` listens by default (its --host and --port defaults).
DEFAULT_REVIEW_ADDRESS = "http://127.0.0.1:8080"

INDEX_HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>SCIseg QC report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0; background: #1e1e1e; color: #ddd; height: 100vh;
       display: flex; flex-direction: column; overflow: hidden; }
header { flex: 0 0 auto; padding: 8px 12px; background: #2b2b2b; display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
header h1 { font-size: 17px; margin: 0 12px 0 0; }
button, select, input { background: #3a3a3a; color: #eee; border: 1px solid #555; padding: 4px 8px; }
#keys { font-size: 12px; color: #aaa; }
main { display: flex; flex: 1 1 auto; min-height: 0; }
#list { flex: 0 1 auto; max-width: 55%; overflow: auto; border-right: 1px solid #444; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 3px 6px; text-align: left; border-bottom: 1px solid #333; white-space: nowrap; }
tr.selected { background: #31506b; }
td.Pass { color: #6c6; } td.Fail { color: #f66; font-weight: bold; } td.Artifact { color: #fc3; }
#viewer { flex: 1; min-width: 0; padding: 10px; display: flex; flex-direction: column; overflow: hidden; }
#images { flex: 1 1 auto; min-height: 0; display: flex; align-items: flex-start; gap: 10px; overflow: auto; }
.stack { position: relative; flex: 0 0 auto; }
#axial { zoom: 1; }
#sagittal { height: 100%; }
#sagittal img { height: 100%; width: auto; }
th { cursor: pointer; user-select: none; }
#meta, #notes, #slices { font-size: 12px; color: #aaa; margin: 3px 0; }
#flags { color: #fc3; font-size: 13px; margin: 3px 0; }
.stack img { display: block; image-rendering: pixelated; }
.stack img.overlay { position: absolute; left: 0; top: 0; }
.hidden-overlay .overlay { visibility: hidden; }
#numbers { font-size: 14px; margin: 6px 0; }
#reason { color: #f88; }
#open-review { color: #8cf; font-size: 14px; margin: 3px 0; display: block; }
</style>
</head>
<body>
<header>
<h1>SCIseg QC</h1>
<label>site <select id="site"><option value="">all</option></select></label>
<input id="search" placeholder="subject or file ( / )" size="24">
<button id="save-fails">Save fails</button>
<button id="save-all">Save all</button>
<button id="save-sct-fail" title="the Fail list in SCT's format (FILES_SEG, FILES_LESION)">qc_fail.yml</button>
<button id="save-sct-artifact" title="the Artifact list in SCT's format (FILES_SEG, FILES_LESION)">qc_artifact.yml</button>
<label title="where sciseg review answers (kept in this browser); a Fail opens its case there">review
<input id="review-address" size="22"></label>
<span id="counts"></span>
<span id="keys">&uarr;&darr;/j k move &middot; &rarr; contours &middot; f Pass/Fail/Artifact &middot; 0-9 rank &middot; / search</span>
</header>
<main>
<div id="list"><table><thead><tr id="header"></tr></thead><tbody id="rows"></tbody></table></div>
<div id="viewer"><div id="title"></div><div id="meta"></div><div id="numbers"></div><div id="flags"></div>
<div id="notes"></div><div id="reason"></div><div id="slices"></div>
<a id="open-review" target="_blank" rel="noopener noreferrer" style="display: none"></a>
<div id="images"><div class="stack" id="sagittal"><img class="base" alt="sagittal view along the cord"><img class="overlay" alt=""></div>
<div class="stack" id="axial"><img class="base" alt="axial mosaic"><img class="overlay" alt=""></div></div></div>
</main>
<script src="entries.js"></script>
<script>
"use strict";
const DATA = window.SCISEG_QC || {report: "", entries: []};
const STORE = "sciseg-qc:" + DATA.report;
const CYCLE = ["Pass", "Fail", "Artifact"];
let decisions = {};
try { decisions = JSON.parse(localStorage.getItem(STORE) || "{}"); } catch (e) { decisions = {}; }
let shown = [];
let current = 0;
let overlay = true;
const COLUMNS = [["subject", "subject"], ["session", "session"], ["scan", "scan"], ["site", "site"],
  ["labels", "measured_on"], ["flags", "flags"], ["mm\u00b3", "volume_mm3"], ["len mm", "length_mm"],
  ["damage", "damage_ratio"], ["date", "date"], ["QC", "decision"], ["rank", "rank"]];
const REVIEW_STORE = "sciseg-qc-review-address";
const DEFAULT_REVIEW = "@DEFAULT_REVIEW@";
const reviewInput = document.getElementById("review-address");
reviewInput.value = localStorage.getItem(REVIEW_STORE) || DEFAULT_REVIEW;
let sortKey = "";
let sortDir = 1;

function save() { localStorage.setItem(STORE, JSON.stringify(decisions)); }
function decisionOf(entry) { return decisions[entry.file] || {decision: "", rank: ""}; }
function fmt(value, digits) { return (value === null || value === undefined || Number.isNaN(value)) ? "n/a" : Number(value).toFixed(digits); }
function cell(row, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; row.appendChild(td); }

function reviewLink(entry) {
  // the review address with ?case=<entry's case id>, "" when the address is not http(s), null when no link applies
  if (!entry.case_id || decisionOf(entry).decision !== "Fail") return null;
  let url;
  try { url = new URL(reviewInput.value.trim() || DEFAULT_REVIEW); } catch (e) { return ""; }
  if (url.protocol !== "http:" && url.protocol !== "https:") return "";
  url.searchParams.set("case", entry.case_id);
  return url.toString();
}

function showReviewLink(entry) {
  const link = document.getElementById("open-review");
  const href = entry ? reviewLink(entry) : null;
  link.style.display = href === null ? "none" : "block";
  if (href) { link.href = href; link.textContent = "Open in sciseg review: " + entry.case_id; }
  else { link.removeAttribute("href"); link.textContent = href === "" ? "the review address is not an http(s) address" : ""; }
}

function sortValue(entry, key) {
  if (key === "decision") return decisionOf(entry).decision || null;
  if (key === "rank") return decisionOf(entry).rank === "" ? null : Number(decisionOf(entry).rank);
  if (key === "flags") return (entry.flags || []).length;
  const value = entry[key];
  return (value === null || value === undefined || value === "" || Number.isNaN(value)) ? null : value;
}

function compareEntries(a, b) {
  const x = sortValue(a, sortKey), y = sortValue(b, sortKey);
  if (x === y) return 0;
  if (x === null) return 1;  // n/a last, whatever the direction
  if (y === null) return -1;
  const order = (typeof x === "number" && typeof y === "number") ? x - y :
    String(x).localeCompare(String(y), undefined, {numeric: true});
  return order * sortDir;
}

function fillHeader() {
  const header = document.getElementById("header");
  header.replaceChildren();
  for (const [label, key] of COLUMNS) {
    const th = document.createElement("th");
    th.dataset.key = key;
    th.textContent = label + (key === sortKey ? (sortDir > 0 ? " \u25b2" : " \u25bc") : "");
    th.addEventListener("click", () => {
      sortDir = (sortKey === key) ? -sortDir : 1;
      sortKey = key;
      const file = shown[current] && shown[current].file;
      fillHeader(); render(file);
    });
    header.appendChild(th);
  }
}

function fillSites() {
  const sites = [...new Set(DATA.entries.map(e => e.site).filter(s => s))].sort();
  const select = document.getElementById("site");
  for (const site of sites) { const o = document.createElement("option"); o.value = site; o.textContent = site; select.appendChild(o); }
}

function render(keepFile) {
  const site = document.getElementById("site").value;
  const text = document.getElementById("search").value.toLowerCase();
  shown = DATA.entries.filter(e => (!site || e.site === site) &&
    (!text || e.subject.toLowerCase().includes(text) || e.file.toLowerCase().includes(text)));
  if (sortKey) shown.sort(compareEntries);
  if (keepFile) current = Math.max(0, shown.findIndex(e => e.file === keepFile));
  current = Math.min(current, Math.max(shown.length - 1, 0));
  const body = document.getElementById("rows");
  body.replaceChildren();
  shown.forEach((entry, index) => {
    const row = document.createElement("tr");
    const d = decisionOf(entry);
    row.dataset.file = entry.file;
    if (index === current) row.className = "selected";
    cell(row, entry.subject); cell(row, entry.session); cell(row, entry.scan); cell(row, entry.site || "");
    cell(row, entry.measured_on || ""); cell(row, (entry.flags || []).length ? "\u26a0 " + entry.flags.length : "");
    cell(row, fmt(entry.volume_mm3, 1)); cell(row, fmt(entry.length_mm, 1)); cell(row, fmt(entry.damage_ratio, 2));
    cell(row, (entry.date || "").slice(0, 10));
    cell(row, entry.status === "failed" ? "run failed" : d.decision, d.decision); cell(row, d.rank);
    row.addEventListener("click", () => { current = index; render(); });
    body.appendChild(row);
  });
  const marked = Object.values(decisions).filter(d => d.decision === "Fail").length;
  document.getElementById("counts").textContent = `${shown.length} of ${DATA.entries.length} scans, ${marked} Fail`;
  showCurrent();
}

function showCurrent() {
  const entry = shown[current];
  const images = document.getElementById("images");
  images.className = overlay ? "" : "hidden-overlay";
  if (!entry) {
    document.getElementById("title").textContent = "no scan matches the filters";
    for (const id of ["meta", "numbers", "flags", "notes", "reason", "slices"]) document.getElementById(id).textContent = "";
    for (const view of ["axial", "sagittal"]) document.getElementById(view).style.display = "none";
    showReviewLink(null);
    return;
  }
  document.getElementById("title").textContent = entry.file;
  showReviewLink(entry);
  document.getElementById("numbers").textContent = entry.status === "failed" ? "" :
    `lesions ${fmt(entry.lesion_count, 0)}, volume ${fmt(entry.volume_mm3, 1)} mm3, length ${fmt(entry.length_mm, 1)} mm, ` +
    `max axial damage ratio ${fmt(entry.damage_ratio, 2)}, CSA above ${fmt(entry.csa_above_mm2, 1)} mm2`;
  document.getElementById("reason").textContent = entry.reason || "";
  document.getElementById("meta").textContent = entry.status === "failed" ? "" :
    [entry.date ? "made " + entry.date : "", entry.version || "", entry.measured_on ? "measured on " + entry.measured_on : "",
     entry.command ? "by: " + entry.command : ""].filter(Boolean).join(" \u00b7 ");
  const flags = document.getElementById("flags");
  flags.replaceChildren();
  for (const reason of entry.flags || []) { const line = document.createElement("div"); line.textContent = "\u26a0 " + reason; flags.appendChild(line); }
  const notes = document.getElementById("notes");
  notes.replaceChildren();
  for (const note of entry.notes || []) { const line = document.createElement("div"); line.textContent = note; notes.appendChild(line); }
  document.getElementById("slices").textContent = (entry.slices || []).length ?
    "axial tiles: slices " + entry.slices.join(", ") + " (z = Slice (I->S) of the CSA table, superior first); " +
    "sagittal: along the cord's R-L centre, contours projected along R-L" : "";
  for (const view of ["axial", "sagittal"]) {
    const stack = document.getElementById(view);
    const files = entry.images || {};
    stack.style.display = files[view] ? "inline-block" : "none";
    stack.querySelector(".base").src = files[view] || "";
    stack.querySelector(".overlay").src = files[view + "_overlay"] || "";
  }
  const row = document.querySelector("tr.selected");
  if (row) row.scrollIntoView({block: "nearest"});
}

function download(name, text, type) {
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], {type}));
  link.download = name;
  document.body.appendChild(link);
  link.click();
  link.remove();
}

function saveFails() {
  const fails = DATA.entries.filter(e => decisionOf(e).decision === "Fail");
  const lines = ["# SCIseg QC: the scans marked Fail (sciseg queue qc reads this file)",
    "report: " + JSON.stringify(DATA.report), "fails:"];
  for (const e of fails) lines.push("  - file: " + JSON.stringify(e.file), "    subject: " + JSON.stringify(e.subject));
  if (!fails.length) lines[2] = "fails: []";
  download("qc_fails.yml", lines.join("\n") + "\n", "text/yaml");
}

function saveSct(decision, name) {
  const chosen = DATA.entries.filter(e => decisionOf(e).decision === decision);
  const lines = [`# SCIseg QC: the scans marked ${decision}, in SCT's QC-report format (FILES_SEG: cord masks, FILES_LESION: lesion masks)`,
    `# e.g. manual_correction.py -config ${name} -path-img <BIDS root> -path-label <this derivatives folder> ` +
    "-suffix-files-seg _sc_seg -suffix-files-lesion _lesion_seg"];
  for (const key of ["FILES_SEG", "FILES_LESION"]) {
    if (!chosen.length) { lines.push(key + ": []"); continue; }
    lines.push(key + ":");
    for (const e of chosen) lines.push("- " + JSON.stringify(e.file));
  }
  download(name, lines.join("\n") + "\n", "text/yaml");
}

function saveAll() {
  const rows = DATA.entries.map(e => ({file: e.file, subject: e.subject, session: e.session, scan: e.scan, ...decisionOf(e)}));
  download("qc_decisions.json", JSON.stringify({report: DATA.report, saved: new Date().toISOString(), decisions: rows}, null, 2),
           "application/json");
}

document.addEventListener("keydown", event => {
  const focused = document.activeElement;
  if (focused && focused.tagName === "INPUT") {
    if (event.key === "Escape" || event.key === "Enter") focused.blur();
    return;
  }
  const entry = shown[current];
  if (event.key === "ArrowDown" || event.key === "j") { current = Math.min(current + 1, shown.length - 1); render(); }
  else if (event.key === "ArrowUp" || event.key === "k") { current = Math.max(current - 1, 0); render(); }
  else if (event.key === "ArrowRight") { overlay = !overlay; showCurrent(); }
  else if (event.key === "f" && entry) {
    const d = decisionOf(entry);
    d.decision = CYCLE[(CYCLE.indexOf(d.decision) + 1) % CYCLE.length];
    decisions[entry.file] = d; save(); render();
  }
  else if (/^[0-9]$/.test(event.key) && entry) { const d = decisionOf(entry); d.rank = event.key; decisions[entry.file] = d; save(); render(); }
  else if (event.key === "/") { event.preventDefault(); document.getElementById("search").focus(); }
  else return;
  event.preventDefault();
});
document.getElementById("site").addEventListener("change", render);
document.getElementById("search").addEventListener("input", render);
reviewInput.addEventListener("change", () => { localStorage.setItem(REVIEW_STORE, reviewInput.value.trim()); showCurrent(); });
document.getElementById("save-fails").addEventListener("click", saveFails);
document.getElementById("save-all").addEventListener("click", saveAll);
document.getElementById("save-sct-fail").addEventListener("click", () => saveSct("Fail", "qc_fail.yml"));
document.getElementById("save-sct-artifact").addEventListener("click", () => saveSct("Artifact", "qc_artifact.yml"));
fillHeader();
fillSites();
render();
</script>
</body>
</html>
""".replace("@DEFAULT_REVIEW@", DEFAULT_REVIEW_ADDRESS)
