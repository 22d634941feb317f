// The model page's commissioning: ask for a proposal from the line's records, plot both score distributions
// with the active and proposed thresholds (SVG drawn here: no inline script or style, no CDN), show the
// figures side by side, save the proposal as a new version and promote it (then reload: the events table
// and the versions show the change). The versions table's buttons promote a stored version or roll back to
// the previous one, the same way.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const box = document.getElementById("commission");
  if (!box) return; // not an admin: the page is read-only
  const model = box.dataset.model;
  const csrf = box.dataset.csrf;
  const byId = (id) => document.getElementById(id);
  let proposal = null;
  let saved = null;

  async function call(path, body) {
    const answer = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    const data = await answer.json().catch(() => ({}));
    if (!answer.ok) {
      const err = data.error || {};
      const detail = Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : "";
      throw new Error(err.message || detail || "HTTP " + answer.status);
    }
    return data;
  }

  function fail(error, where) {
    const p = byId(where || "commission-error");
    p.textContent = error.message;
    p.hidden = false;
  }

  function utc(value) {
    return value ? value + (value.length === 16 ? ":00" : "") + "Z" : null;
  }

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Each sample's bars are its share of that sample per bin, so a few dozen defects show beside hundreds of
  // good parts; the thresholds are vertical lines.
  function plot(p) {
    const svg = byId("plot");
    svg.replaceChildren();
    const W = 760, H = 280, L = 50, R = 15, T = 30, B = 40;
    const edges = p.histogram.edges;
    const lo = edges[0], hi = edges[edges.length - 1];
    const x = (v) => L + ((v - lo) / (hi - lo)) * (W - L - R);
    const share = (counts) => {
      const n = counts.reduce((a, b) => a + b, 0) || 1;
      return counts.map((c) => c / n);
    };
    const good = share(p.histogram.good), bad = share(p.histogram.defects);
    const top = Math.max(...good, ...bad, 0.01);
    const y = (s) => H - B - (s / top) * (H - T - B);
    svg.append(el("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    svg.append(el("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
    for (let i = 0; i < edges.length - 1; i++) {
      const x0 = x(edges[i]), w = Math.max(x(edges[i + 1]) - x0 - 1, 1);
      if (good[i] > 0) svg.append(el("rect", { class: "good", x: x0, width: w, y: y(good[i]), height: H - B - y(good[i]) }));
      if (bad[i] > 0) svg.append(el("rect", { class: "defect", x: x0, width: w, y: y(bad[i]), height: H - B - y(bad[i]) }));
    }
    for (let k = 0; k <= 4; k++) {
      const v = lo + ((hi - lo) * k) / 4;
      svg.append(el("text", { x: x(v), y: H - B + 16, "text-anchor": "middle" }, v.toFixed(3)));
    }
    svg.append(el("text", { x: (W + L) / 2, y: H - 6, "text-anchor": "middle" }, "score"));
    svg.append(el("text", { x: 4, y: T - 12 }, "share of sample (max " + (top * 100).toFixed(0) + " %)"));
    const lines = [
      ["active", p.active.threshold, "active " + p.active.version],
      ["proposed", p.proposed.threshold, "proposed"],
    ];
    lines.forEach(([cls, t, label], i) => {
      svg.append(el("line", { class: cls, x1: x(t), x2: x(t), y1: T - 4, y2: H - B }));
      svg.append(el("text", { x: x(t) + 4, y: T + 10 + 14 * i }, label + " " + t.toFixed(4)));
    });
    svg.append(el("rect", { class: "good", x: W - 210, y: 6, width: 12, height: 12 }));
    svg.append(el("text", { x: W - 194, y: 16 }, "good (" + p.good_sample.n + ")"));
    svg.append(el("rect", { class: "defect", x: W - 110, y: 6, width: 12, height: 12 }));
    svg.append(el("text", { x: W - 94, y: 16 }, "defects (" + p.defect_sample.n + ")"));
  }

  const pct = (v, d) => (v === null || v === undefined ? "–" : (v * 100).toFixed(d === undefined ? 2 : d) + " %");
  const interval = (i) => (i && i.length === 2 ? pct(i[0]) + " – " + pct(i[1]) : "–");
  const num = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(4));

  function figures(p) {
    const a = p.active, q = p.proposed;
    const rows = [
      ["Threshold", num(a.threshold), num(q.threshold)],
      ["Pixel threshold", num(a.pixel_threshold), num(q.pixel_threshold) + " (kept)"],
      ["Method", a.method, q.method],
      ["Calibration parts (n)", a.n_parts, q.n_parts],
      ["Promised false-reject rate", pct(a.expected_false_reject_rate), pct(q.expected_false_reject_rate)],
      ["90 % interval", interval(a.false_reject_rate_interval), interval(q.false_reject_rate_interval)],
      ["Distribution-free bound (95 %)", pct(a.distribution_free_upper_bound, 1), pct(q.distribution_free_upper_bound, 1)],
      ["Line good parts above it", a.on_the_line.good_above + " of " + p.good_sample.n,
        q.on_the_line.good_above + " of " + p.good_sample.n],
      ["Confirmed defects detected", a.on_the_line.defects_detected + " of " + p.defect_sample.n,
        q.on_the_line.defects_detected + " of " + p.defect_sample.n],
    ];
    const body = byId("figures").tBodies[0];
    body.replaceChildren();
    for (const cells of rows) {
      const tr = document.createElement("tr");
      for (const c of cells) {
        const td = document.createElement("td");
        td.textContent = String(c);
        tr.append(td);
      }
      body.append(tr);
    }
    const warnings = byId("warnings");
    warnings.replaceChildren();
    for (const w of p.warnings) {
      const li = document.createElement("li");
      li.textContent = w;
      warnings.append(li);
    }
  }

  const base = "/ui/api/models/" + encodeURIComponent(model);

  async function switchVersion(action, body) {
    byId("switch-error").hidden = true;
    try {
      await call(base + "/" + action, { ...body, reason: byId("switch-reason").value });
    } catch (error) {
      return fail(error, "switch-error");
    }
    window.location.reload();
  }

  for (const button of document.querySelectorAll("button.promote-version")) {
    button.addEventListener("click", () => switchVersion("promote", { version: button.dataset.version }));
  }
  const rollback = byId("rollback");
  if (rollback) rollback.addEventListener("click", () => switchVersion("rollback", {}));

  byId("commission-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    byId("commission-error").hidden = true;
    const body = { method: byId("method").value, false_reject_rate: Number(byId("rate").value) };
    if (byId("last").value) body.last = Number(byId("last").value);
    if (byId("start").value) body.start = utc(byId("start").value);
    if (byId("end").value) body.end = utc(byId("end").value);
    try {
      proposal = await call("/ui/api/models/" + encodeURIComponent(model) + "/calibrations", body);
    } catch (error) {
      byId("proposal").hidden = true;
      return fail(error);
    }
    saved = null;
    byId("proposal").hidden = false;
    byId("save").disabled = false;
    byId("promote").hidden = true;
    byId("commission-done").hidden = true;
    plot(proposal);
    figures(proposal);
  });

  byId("save").addEventListener("click", async () => {
    if (!proposal) return;
    const path = "/ui/api/models/" + encodeURIComponent(model) + "/calibrations/" + proposal.id + "/save";
    try {
      saved = await call(path, { reason: byId("reason").value });
    } catch (error) {
      return fail(error);
    }
    byId("save").disabled = true;
    const done = byId("commission-done");
    done.textContent = "Saved as version " + saved.version + " (not active yet).";
    done.hidden = false;
    const promote = byId("promote");
    promote.textContent = "Promote version " + saved.version;
    promote.hidden = false;
  });

  byId("promote").addEventListener("click", async () => {
    if (!saved) return;
    try {
      await call("/ui/api/models/" + encodeURIComponent(model) + "/promote", {
        version: saved.version,
        reason: byId("reason").value,
      });
    } catch (error) {
      return fail(error);
    }
    window.location.reload();
  });
})();
