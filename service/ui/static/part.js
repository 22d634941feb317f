// The part view: regions drawn over the anomaly map (in the upload's pixel frame) with their area, and the
// review keys: a key presses the matching button (not while typing in a field).
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  // The score bar's geometry comes as data attributes: the page's CSP refuses inline style attributes.
  const fill = document.getElementById("bar-fill");
  const mark = document.getElementById("bar-mark");
  if (fill) fill.style.width = fill.dataset.percent + "%";
  if (mark) mark.style.left = mark.dataset.percent + "%";
  const overlay = document.getElementById("overlay");
  if (overlay) {
    const img = document.getElementById("img-overlay");
    const svg = document.getElementById("regions");
    const regions = JSON.parse(overlay.dataset.regions || "[]");
    function draw() {
      svg.setAttribute("viewBox", "0 0 " + img.naturalWidth + " " + img.naturalHeight);
      const stroke = Math.max(1, img.naturalWidth / 200);
      const items = [];
      regions.forEach(function (r, i) {
        const rect = document.createElementNS(SVG, "rect");
        rect.setAttribute("x", r.x); rect.setAttribute("y", r.y);
        rect.setAttribute("width", r.width); rect.setAttribute("height", r.height);
        rect.setAttribute("stroke-width", stroke);
        const label = document.createElementNS(SVG, "text");
        label.setAttribute("x", r.x); label.setAttribute("y", Math.max(r.y - stroke, 10 * stroke));
        label.setAttribute("font-size", 8 * stroke);
        const area = r.area_mm2 === null || r.area_mm2 === undefined ? "? mm²" : r.area_mm2.toFixed(2) + " mm²";
        label.textContent = (i + 1) + ": " + area;
        items.push(rect, label);
      });
      svg.replaceChildren.apply(svg, items);
    }
    if (img.complete && img.naturalWidth) draw(); else img.addEventListener("load", draw);
  }

  const keys = {};
  document.querySelectorAll("#review-form button[data-key]").forEach(function (b) { keys[b.dataset.key] = b; });
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA" || target.tagName === "SELECT")) return;
    const button = keys[event.key];
    if (button) { event.preventDefault(); button.click(); return; }
    if (event.key === "n") { const next = document.getElementById("next-part"); if (next) next.click(); }
    if (event.key === "l") { window.location = "/ui/"; }
  });
})();
