"""The static page ``qc/index.html``: reads ``entries.js`` (a ``<script>``, so it works from ``file://``),
lists the scans, shows the selected one, and keeps the rater's decisions in the browser's local storage.

Keys: up/down or k/j move; right arrow toggles the contours; ``f`` cycles Pass / Fail / Artifact; digits set a
rank; ``/`` focuses the search. "Save fails" downloads ``qc_fails.yml`` (the files marked Fail), "Save all"
``qc_decisions.json`` (every decision); ``sciseg queue qc`` reads both. All user text goes in as textContent.
"""

INDEX_HTML = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>SCIseg QC report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0; background: #1e1e1e; color: #ddd; }
header { padding: 8px 12px; background: #2b2b2b; display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
header h1 { font-size: 17px; margin: 0 12px 0 0; }
button, select, input { background: #3a3a3a; color: #eee; border: 1px solid #555; padding: 4px 8px; }
#keys { font-size: 12px; color: #aaa; }
main { display: flex; height: calc(100vh - 48px); }
#list { flex: 0 0 auto; max-width: 48%; overflow-y: auto; border-right: 1px solid #444; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: 3px 6px; text-align: left; border-bottom: 1px solid #333; white-space: nowrap; }
tr.selected { background: #31506b; }
td.Pass { color: #6c6; } td.Fail { color: #f66; font-weight: bold; } td.Artifact { color: #fc3; }
#viewer { flex: 1; padding: 10px; overflow-y: auto; }
.stack { zoom: 1.5; position: relative; display: inline-block; margin: 4px 8px 8px 0; vertical-align: top; }
.stack img { display: block; image-rendering: pixelated; }
.stack img.overlay { position: absolute; left: 0; top: 0; }
.hidden-overlay .overlay { visibility: hidden; }
#numbers { font-size: 14px; margin: 6px 0; }
#reason { color: #f88; }
</style>
</head>
<body>
<header>
<h1>SCIseg QC</h1>
<label>site <select id="site"><option value="">all</option></select></label>
<input id="search" placeholder="subject or file ( / )" size="24">
<button id="save-fails">Save fails</button>
<button id="save-all">Save all</button>
<span id="counts"></span>
<span id="keys">&uarr;&darr;/j k move &middot; &rarr; contours &middot; f Pass/Fail/Artifact &middot; 0-9 rank &middot; / search</span>
</header>
<main>
<div id="list"><table><thead><tr><th>subject</th><th>session</th><th>scan</th><th>site</th><th>lesion mm&sup3;</th>
<th>length mm</th><th>damage</th><th>QC</th><th>rank</th></tr></thead><tbody id="rows"></tbody></table></div>
<div id="viewer"><div id="title"></div><div id="numbers"></div><div id="reason"></div>
<div id="images"><div class="stack" id="axial"><img class="base" alt="axial mosaic"><img class="overlay" alt=""></div>
<div class="stack" id="sagittal"><img class="base" alt="sagittal view"><img class="overlay" alt=""></div></div></div>
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

function save() { localStorage.setItem(STORE, JSON.stringify(decisions)); }
function decisionOf(entry) { return decisions[entry.file] || {decision: "", rank: ""}; }
function fmt(value, digits) { return (value === null || value === undefined || Number.isNaN(value)) ? "n/a" : Number(value).toFixed(digits); }
function cell(row, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; row.appendChild(td); }

function fillSites() {
  const sites = [...new Set(DATA.entries.map(e => e.site).filter(s => s))].sort();
  const select = document.getElementById("site");
  for (const site of sites) { const o = document.createElement("option"); o.value = site; o.textContent = site; select.appendChild(o); }
}

function render() {
  const site = document.getElementById("site").value;
  const text = document.getElementById("search").value.toLowerCase();
  shown = DATA.entries.filter(e => (!site || e.site === site) &&
    (!text || e.subject.toLowerCase().includes(text) || e.file.toLowerCase().includes(text)));
  current = Math.min(current, Math.max(shown.length - 1, 0));
  const body = document.getElementById("rows");
  body.replaceChildren();
  shown.forEach((entry, index) => {
    const row = document.createElement("tr");
    const d = decisionOf(entry);
    row.dataset.file = entry.file;
    if (index === current) row.className = "selected";
    cell(row, entry.subject); cell(row, entry.session); cell(row, entry.scan); cell(row, entry.site || "");
    cell(row, fmt(entry.volume_mm3, 1)); cell(row, fmt(entry.length_mm, 1)); cell(row, fmt(entry.damage_ratio, 2));
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
    document.getElementById("numbers").textContent = "";
    document.getElementById("reason").textContent = "";
    for (const view of ["axial", "sagittal"]) document.getElementById(view).style.display = "none";
    return;
  }
  document.getElementById("title").textContent = entry.file;
  document.getElementById("numbers").textContent = entry.status === "failed" ? "" :
    `lesions ${entry.lesion_count}, volume ${fmt(entry.volume_mm3, 1)} mm3, length ${fmt(entry.length_mm, 1)} mm, ` +
    `max axial damage ratio ${fmt(entry.damage_ratio, 2)}, CSA above ${fmt(entry.csa_above_mm2, 1)} mm2`;
  document.getElementById("reason").textContent = entry.reason || "";
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

function saveAll() {
  const rows = DATA.entries.map(e => ({file: e.file, subject: e.subject, session: e.session, scan: e.scan, ...decisionOf(e)}));
  download("qc_decisions.json", JSON.stringify({report: DATA.report, saved: new Date().toISOString(), decisions: rows}, null, 2),
           "application/json");
}

document.addEventListener("keydown", event => {
  const search = document.getElementById("search");
  if (document.activeElement === search) {
    if (event.key === "Escape" || event.key === "Enter") search.blur();
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
  else if (event.key === "/") { event.preventDefault(); search.focus(); }
  else return;
  event.preventDefault();
});
document.getElementById("site").addEventListener("change", render);
document.getElementById("search").addEventListener("input", render);
document.getElementById("save-fails").addEventListener("click", saveFails);
document.getElementById("save-all").addEventListener("click", saveAll);
fillSites();
render();
</script>
</body>
</html>
"""
