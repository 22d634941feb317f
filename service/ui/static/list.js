// The live list: asks /ui/api/parts for the page's filters every few seconds and redraws the rows and the
// counts per hour. Built with DOM calls (textContent), never HTML strings: part ids come from the line.
"use strict";
(function () {
  const table = document.getElementById("parts");
  const body = document.getElementById("parts-body");
  const empty = document.getElementById("empty");
  const live = document.getElementById("live");
  const bars = document.getElementById("hour-bars");
  const pollMs = Number(table.dataset.pollMs) || 2000;

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function renderParts(parts) {
    const rows = parts.map(function (p) {
      const tr = document.createElement("tr");
      tr.className = p.verdict;
      tr.dataset.requestId = p.request_id;
      cell(tr, p.created.slice(0, 19).replace("T", " "));
      const link = document.createElement("a");
      link.href = "/ui/parts/" + encodeURIComponent(p.request_id);
      link.textContent = p.part_id || p.request_id;
      cell(tr, "").appendChild(link);
      cell(tr, p.model + " " + p.model_version);
      cell(tr, p.verdict.toUpperCase(), "verdict");
      cell(tr, p.score.toFixed(4) + " / " + p.threshold.toFixed(4));
      cell(tr, p.review ? p.review.outcome.replace("_", " ") : "", "review");
      return tr;
    });
    body.replaceChildren.apply(body, rows);
    empty.hidden = parts.length > 0;
  }

  function renderCounts(counts) {
    const most = Math.max(1, ...counts.map(function (c) { return c.ok + c.ng; }));
    const columns = counts.map(function (c) {
      const col = document.createElement("div");
      col.className = "hour";
      col.title = c.hour.slice(0, 13).replace("T", " ") + ":00 UTC: " + c.ok + " OK, " + c.ng + " NG";
      const stack = document.createElement("div");
      stack.className = "stack";
      const ng = document.createElement("div");
      ng.className = "ng";
      ng.style.height = (100 * c.ng / most) + "%";
      const ok = document.createElement("div");
      ok.className = "ok";
      ok.style.height = (100 * c.ok / most) + "%";
      stack.append(ng, ok);
      const label = document.createElement("span");
      label.textContent = c.hour.slice(11, 13) + "h";
      col.append(stack, label);
      return col;
    });
    bars.replaceChildren.apply(bars, columns);
  }

  // One poll at a time: the next is scheduled only once this one has its answer (or gave up after
  // POLL_TIMEOUT_MS), so a slow service never piles requests up; a 503 waits its Retry-After.
  const POLL_TIMEOUT_MS = 10000;
  async function refresh() {
    let wait = pollMs;
    const abort = new AbortController();
    const timer = window.setTimeout(function () { abort.abort(); }, POLL_TIMEOUT_MS);
    try {
      const answer = await fetch("/ui/api/parts" + window.location.search, { credentials: "same-origin", signal: abort.signal });
      if (answer.status === 401) { window.location = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search); return; }
      if (!answer.ok) {
        const after = Number(answer.headers.get("Retry-After"));
        if (after > 0) wait = Math.max(wait, after * 1000);
        throw new Error("HTTP " + answer.status);
      }
      const data = await answer.json();
      renderParts(data.parts);
      renderCounts(data.counts);
      live.className = "live";
      live.textContent = "live";
    } catch (err) {
      live.className = "live stale";
      live.textContent = "not updating (" + (err.name === "AbortError" ? "no answer" : err.message) + ")";
    } finally {
      window.clearTimeout(timer);
    }
    window.setTimeout(refresh, wait);
  }

  renderCounts(JSON.parse(document.getElementById("counts-data").textContent));
  // Filters apply at once; the form's button stays for use without JavaScript.
  document.querySelectorAll("#filters select").forEach(function (s) {
    s.addEventListener("change", function () { s.form.submit(); });
  });
  window.setTimeout(refresh, pollMs);
})();
