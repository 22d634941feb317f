// The part view: regions drawn over the anomaly map (in the upload's pixel frame) with their area and length,
// labels never over each other nor past the picture's edge; and the review keys: a key presses the matching button (not while typing in
// a field).
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
    // "1: 3.91 mm², 3.85 mm": area and longest extent; "?" where the cloud had no point under the region.
    // A record from before lengths were measured has no length_mm at all: its label shows the area only.
    function size(r) {
      const area = r.area_mm2 === null || r.area_mm2 === undefined ? "? mm²" : r.area_mm2.toFixed(2) + " mm²";
      if (r.length_mm === undefined) return area;
      return area + ", " + (r.length_mm === null ? "? mm" : r.length_mm.toFixed(2) + " mm");
    }
    function overlaps(a, b) {
      return a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height;
    }
    // Each label goes above its box, else below it, else further down the picture: the first place that
    // overlaps no earlier label (near regions would otherwise print their labels over each other).
    function place(label, r, stroke, height, placed) {
      const gap = stroke;
      const tries = [Math.max(r.y - gap, height), r.y + r.height + gap + 0.8 * height];
      for (let y = tries[1] + height; y <= height * 200; y += height) tries.push(y);
      let box = null;
      for (const baseline of tries) {
        label.setAttribute("y", baseline);
        box = label.getBBox();
        if (!placed.some(function (other) { return overlaps(box, other); })) break;
      }
      placed.push(box);
    }
    function draw() {
      svg.setAttribute("viewBox", "0 0 " + img.naturalWidth + " " + img.naturalHeight);
      const stroke = Math.max(1, img.naturalWidth / 200);
      const fontSize = 8 * stroke;
      svg.replaceChildren();
      const placed = [];
      regions.forEach(function (r, i) {
        const rect = document.createElementNS(SVG, "rect");
        rect.setAttribute("x", r.x); rect.setAttribute("y", r.y);
        rect.setAttribute("width", r.width); rect.setAttribute("height", r.height);
        rect.setAttribute("stroke-width", stroke);
        const label = document.createElementNS(SVG, "text");
        label.setAttribute("x", r.x);
        label.setAttribute("font-size", fontSize);
        label.textContent = (i + 1) + ": " + size(r);
        svg.append(rect, label);  // in the document, so that the label's box can be measured
        // A small region near the right edge would have its label cut off by the picture's edge: end the
        // label at the edge instead.
        const width = label.getBBox().width;
        if (r.x + width > img.naturalWidth) label.setAttribute("x", Math.max(0, img.naturalWidth - width));
        place(label, r, stroke, fontSize, placed);
      });
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
