// The compile report's own: selecting a layer, picture toggles, timeline tabs.
(function () {
  "use strict";
  var data = wafer.data, esc = wafer.esc, highlight = wafer.highlight;

  // Clicking a layer anywhere selects it: outlined in every picture, its ONNX nodes listed.
  var selected = null;
  function select(layer) {
    if (selected !== null) highlight(selected, "sel", false);
    selected = layer;
    highlight(layer, "sel", true);
    var box = document.getElementById("details");
    var nodes = data.nodes[+layer] || [];
    box.innerHTML = "<h3>" + esc(data.layers[+layer]) + ": " + nodes.length + " ONNX node(s)</h3>" +
      "<div class=\"nodes\">" + nodes.map(esc).join("<br>") + "</div>";
  }
  document.addEventListener("click", function (ev) {
    var el = ev.target.closest ? ev.target.closest("[data-l]") : null;
    if (el) select(el.dataset.l);
  });

  // Toggles: each checkbox switches a body class that hides a layer of every picture.
  document.querySelectorAll("input[data-toggle]").forEach(function (box) {
    var apply = function () { document.body.classList.toggle("no-" + box.dataset.toggle, !box.checked); };
    box.addEventListener("change", apply);
    apply();
  });

  // Timeline tabs.
  document.querySelectorAll(".tabs button").forEach(function (b) {
    b.addEventListener("click", function () {
      document.querySelectorAll(".tabs button").forEach(function (o) { o.classList.toggle("on", o === b); });
      document.querySelectorAll(".tl").forEach(function (t) { t.hidden = t.id !== b.dataset.show; });
    });
  });
})();
