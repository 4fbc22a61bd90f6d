/* Search the report: units, layers, concepts and classes from window.REPORTGEN_SEARCH (search-index.js, written
   by reportgen/search.py). No server and no library: the index is a script, so it loads from file:// too.
   Query: words match labels, classes and layer names (case-insensitive prefixes, all must match); a number
   matches a filter (or concept) index; auc>0.9, auc>=0.8, p<0.01 keep the entries that pass. */
(function () {
  var LIMIT = 20;
  var OPS = {">": function (a, b) { return a > b; }, ">=": function (a, b) { return a >= b; },
             "<": function (a, b) { return a < b; }, "<=": function (a, b) { return a <= b; },
             "=": function (a, b) { return a === b; }};

  function lower(s) { return String(s).toLowerCase(); }

  // a text's search terms: the whole text and its alphanumeric parts ("block3_conv1" → block3_conv1, block3, conv1)
  function terms(texts) {
    var out = [];
    texts.forEach(function (t) {
      if (t === undefined || t === null) { return; }
      t = lower(t);
      out.push(t);
      t.split(/[^a-z0-9]+/).forEach(function (w) { if (w && w !== t) { out.push(w); } });
    });
    return out;
  }

  function prepare(e, order) {
    // what the entry is called: a label that is not significant is no name (it is still searched)
    var own = e.kind === "class" ? e.name : e.kind === "layer" ? e.layer :
      e.significant === false ? undefined : e.label;
    return {e: e, order: order, own: own === undefined ? "" : lower(own), ownTerms: terms([own]),
            terms: terms([e.kind, e.label, e.name, e.layer, e.path].concat(e.classes || [])),
            classes: (e.classes || []).map(function (c) { return terms([c]); })};
  }

  function parse(q) {
    var query = {words: [], numbers: [], tests: []};
    lower(q).replace(/\s*(>=|<=|>|<|=)\s*/g, "$1").split(/\s+/).forEach(function (t) {
      var m = /^(auc|p)(>=|<=|>|<|=)(\d*\.?\d+)$/.exec(t);
      if (m) { query.tests.push({field: m[1], op: OPS[m[2]], value: parseFloat(m[3])}); }
      else if (/^\d+$/.test(t)) { query.numbers.push(parseInt(t, 10)); }
      else if (t) { query.words.push(t); }
    });
    return query;
  }

  function prefixed(list, word) {
    return list.some(function (t) { return t.indexOf(word) === 0; });
  }

  // null if `p` does not match, else its sort key: exact name first, then own-name matches, then by AUC
  // (significant labels before the others), then by how high the matched class ranks among the unit's classes
  function rank(p, query) {
    var e = p.e;
    if (!query.words.every(function (w) { return prefixed(p.terms, w); })) { return null; }
    if (!query.numbers.every(function (n) { return n === e.filter || n === e.concept; })) { return null; }
    if (!query.tests.every(function (t) { return typeof e[t.field] === "number" && t.op(e[t.field], t.value); })) {
      return null;
    }
    var said = query.words.join(" ");
    var tier = said && p.own === said ? 0 : query.words.every(function (w) { return prefixed(p.ownTerms, w); }) ? 1 : 2;
    var classRank = p.classes.length;
    p.classes.forEach(function (c, i) {
      if (i < classRank && query.words.some(function (w) { return prefixed(c, w); })) { classRank = i; }
    });
    return [tier, e.significant === false ? 1 : 0, typeof e.auc === "number" ? -e.auc : 1, classRank, p.order];
  }

  function compare(a, b) {
    for (var i = 0; i < a.key.length; i++) { if (a.key[i] !== b.key[i]) { return a.key[i] - b.key[i]; } }
    return 0;
  }

  function search(prepared, q) {
    var query = parse(q);
    if (!query.words.length && !query.numbers.length && !query.tests.length) { return []; }
    var hits = [];
    prepared.forEach(function (p) { var key = rank(p, query); if (key) { hits.push({p: p, key: key}); } });
    return hits.sort(compare).map(function (h) { return h.p.e; });
  }

  function describe(e) {
    if (e.kind === "layer") {
      return "layer " + e.layer + (e.path ? " (" + e.path + ")" : "") + ", " + e.channels + " channels";
    }
    if (e.kind === "class") { return "class " + e.name; }
    var head = e.kind === "unit" ? e.layer + " filter " + e.filter : e.layer + " concept " + e.concept;
    var said = e.label ? " — " + e.label + (e.significant === false ? " (not significant)" : "") : "";
    var auc = typeof e.auc === "number" ? ", AUC " + e.auc.toFixed(2) : "";
    var classes = e.classes && e.classes.length ? " · top classes: " + e.classes.join(", ") : "";
    return head + said + auc + classes;
  }

  // the single-file report has each page as a section with this id (reportgen/single_file.py page_id)
  function pageId(rel) { return "p-" + rel.replace(/\.html$/, "").replace(/[^A-Za-z0-9_-]/g, "-"); }

  // there a section's own ids are prefixed with its page's id where other pages use them too (concept-3)
  function href(root, rel) {
    var parts = rel.split("#"), page = pageId(parts[0]), frag = parts[1];
    if (!document.getElementById(page)) { return root + rel; }
    if (!frag) { return "#" + page; }
    return "#" + (document.getElementById(page + "-" + frag) ? page + "-" + frag : frag);
  }

  function init() {
    var form = document.querySelector("form.search");
    var index = window.REPORTGEN_SEARCH;
    if (!form || !index) { return; }
    var input = form.querySelector("input"), list = form.querySelector("ul"), status = form.querySelector("p");
    var prepared = index.map(prepare);

    function links() { return Array.prototype.slice.call(list.querySelectorAll("a")); }
    function close() { list.hidden = true; }
    function show() {
      var found = search(prepared, input.value);
      list.textContent = "";
      found.slice(0, LIMIT).forEach(function (e) {
        var li = document.createElement("li"), a = document.createElement("a");
        a.href = href(form.dataset.root, e.page);
        a.textContent = describe(e);
        li.appendChild(a);
        list.appendChild(li);
      });
      var asked = input.value.trim() !== "";
      list.hidden = !asked;
      if (asked && !found.length) {
        var li = document.createElement("li");
        li.className = "muted";
        li.textContent = "nothing matches";
        list.appendChild(li);
      }
      var count = found.length + (found.length === 1 ? " result" : " results");
      status.textContent = !asked ? "" : found.length > LIMIT ? count + ", the first " + LIMIT + " listed" : count;
    }

    form.hidden = false;
    input.addEventListener("input", show);
    form.addEventListener("submit", function (event) {   // Enter in the box opens the first result
      event.preventDefault();
      var first = links()[0];
      if (first) { first.click(); }
    });
    form.addEventListener("keydown", function (event) {
      var all = links(), at = all.indexOf(document.activeElement);
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        if (!all.length) { return; }
        event.preventDefault();
        list.hidden = false;
        var next = event.key === "ArrowDown" ? Math.min(at + 1, all.length - 1) : at - 1;
        (next < 0 ? input : all[next]).focus();
      } else if (event.key === "Escape") {
        close();
        input.focus();
      }
    });
    list.addEventListener("click", function (event) { if (event.target.closest("a")) { close(); } });
    document.addEventListener("click", function (event) { if (!form.contains(event.target)) { close(); } });
    input.addEventListener("focus", function () { if (input.value.trim()) { list.hidden = false; } });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", init); } else { init(); }
})();
