/* Jump to a filter: client-side, no server. Works in the site (relative URLs) and in the single file (#anchors). */
(function () {
  function init() {
    var form = document.querySelector("form.jump");
    if (!form) { return; }
    var layer = form.querySelector("select"), input = form.querySelector("input"), note = form.querySelector("output");
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var option = layer.options[layer.selectedIndex];
      var filters = option.dataset.filters.split(",");
      var n = String(parseInt(input.value, 10));
      if (filters.indexOf(n) < 0) {
        note.textContent = "filter " + input.value + " is not in this report (" + option.textContent + ": " +
          filters.slice(0, 12).join(", ") + (filters.length > 12 ? ", …" : "") + ")";
        return;
      }
      note.textContent = "";
      var anchor = "p-layers-" + option.value + "-f" + n;
      if (document.getElementById(anchor)) { location.hash = anchor; return; }   // the single-file report
      location.href = form.dataset.root + "layers/" + option.value + "/f" + n + ".html";
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
