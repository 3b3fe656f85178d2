// Shared by both pages: tooltips, hover highlighting (data-t: a tip, data-l: a linked item),
// sortable tables, ?only=IDS. Returns what page scripts need.
var wafer = (function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var tip = document.getElementById("tip");

  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) {
      return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c];
    });
  }
  function tipHtml(i) {
    var t = data.tips[i];
    if (!t) return "";
    var rows = t[1].map(function (r) {
      return "<tr><td>" + esc(r[0]) + "</td><td>" + esc(r[1]) + "</td></tr>";
    }).join("");
    return "<b>" + esc(t[0]) + "</b><table>" + rows + "</table>";
  }
  function place(ev) {
    var pad = 14, w = tip.offsetWidth, h = tip.offsetHeight;
    var x = ev.clientX + pad, y = ev.clientY + pad;
    if (x + w > window.innerWidth - 4) x = Math.max(4, ev.clientX - w - pad);
    if (y + h > window.innerHeight - 4) y = Math.max(4, ev.clientY - h - pad);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }
  function target(ev) {
    var el = ev.target;
    while (el && el !== document && !(el.dataset && el.dataset.t !== undefined)) el = el.parentNode;
    return el && el !== document ? el : null;
  }
  var current = null;
  function highlight(layer, cls, on) {
    if (layer === undefined || layer === null) return;
    document.querySelectorAll('[data-l="' + layer + '"]').forEach(function (el) {
      el.classList.toggle(cls, on);
    });
  }
  document.addEventListener("mouseover", function (ev) {
    var el = target(ev);
    if (el === current) return;
    if (current) highlight(current.dataset.l, "hl", false);
    current = el;
    if (!el) { tip.hidden = true; return; }
    tip.innerHTML = tipHtml(+el.dataset.t);
    tip.hidden = false;
    place(ev);
    highlight(el.dataset.l, "hl", true);
  });
  document.addEventListener("mousemove", function (ev) { if (!tip.hidden) place(ev); });

  // Sortable tables: keys are JSON in data-k (numbers sort as numbers).
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.querySelectorAll("th");
    heads.forEach(function (th, col) {
      th.addEventListener("click", function () {
        var asc = !th.classList.contains("asc");
        heads.forEach(function (h) { h.classList.remove("asc", "desc"); });
        th.classList.add(asc ? "asc" : "desc");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = JSON.parse(a.dataset.k)[col], y = JSON.parse(b.dataset.k)[col];
          if (x === null || y === null) return (x === null) - (y === null);  // blanks last
          var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
  // ?only=memory,timeline shows just those sections or figures (for screenshots of one part).
  var only = new URLSearchParams(window.location.search).get("only");
  if (only) {
    var keep = only.split(",").map(function (id) { return document.getElementById(id); })
      .filter(function (el) { return el; });
    document.querySelectorAll("main > section, .figs > figure").forEach(function (el) {
      el.hidden = !keep.some(function (k) { return el.contains(k) || k.contains(el); });
    });
    document.body.classList.add("solo");
  }
  return {data: data, esc: esc, highlight: highlight};
})();
