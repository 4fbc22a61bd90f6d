"""Compare two built sites (e.g. the committed demo `site/` and a fresh build): a report, always exit 0.

    python benchmarks/compare_sites.py site /tmp/site-new [--context 1] [--pages 0] [--top 40]

1. pages: HTML pages only in one site; for every page in both, a unified diff of what a reader sees —
   visible text (no <script>/<style>), one line per block element, whitespace collapsed, with every
   <img> as a line `[img SRC | ALT]` where it stands — then the changed lines that recur over most pages
   (digits folded to '#'), which is where systematic changes show;
2. links: href/src on every page that point at a file the site lacks;
3. files: images, then the other files (sprites, data, static): per extension, only in one site,
   byte-identical vs changed in both;
4. report.json: values that must not change with the page design (accuracy, samples and their top3,
   every filter's top/bottom images, patches, classes, histograms, and the analyses' numbers), matched
   across the schema change (old `filters[].circuit` → new `filters[].circuits.channels`, old top-level
   `attribution` list → new `attribution.records`, old `embedding` → new `explorer`/`overview_explorer`;
   kernel cells compared as the page shows them); keys only on one side are listed apart.

The build's wall-clock timings differ between any two builds: `timings.json` and build.html's
`<section id="timings">` are left out of every comparison.

The HTML parser is the standard library's: the pages are our own templates' output, and a text diff
needs no DOM.
"""

import argparse
import difflib
import hashlib
import json
import re
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

IMAGE_EXTS = {".png", ".webp", ".jpg", ".jpeg", ".svg", ".gif"}
BLOCK = {"p", "div", "section", "article", "header", "footer", "main", "nav", "ul", "ol", "li", "dl", "dt", "dd",
         "table", "thead", "tbody", "tr", "td", "th", "caption", "figure", "figcaption", "h1", "h2", "h3", "h4",
         "h5", "h6", "pre", "br", "hr", "form", "label", "select", "option", "button", "output", "details",
         "summary", "title", "svg", "blockquote"}
HIDDEN = {"script", "style", "template", "noscript"}
# Bokeh model ids and explorer panel ids are named after the plot (its layer); names, not content
PLOT_IDS = [(re.compile(r"\brg-[\w.-]*?-(\d+)\b"), r"rg-ID-\1"),
            (re.compile(r"\bpanel-[\w.-]+?-(tsne|pca|umap)\b"), r"panel-ID-\1")]


def _unid(text: str) -> str:
    for pattern, repl in PLOT_IDS:
        text = pattern.sub(repl, text)
    return text


# -- 1. what a reader sees ----------------------------------------------------------------------------
class _Visible(HTMLParser):
    """Visible text as lines (a new line at every block element) plus images and link targets, in order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = []
        self.current: list[str] = []
        self.hidden = 0
        self.pre = 0
        self.links: list[str] = []     # every href/src, for the link check
        self.markup: list[str] = []    # every start tag with its attributes, and script bodies

    def _flush(self):
        text = " ".join("".join(self.current).split())
        if text:
            self.lines.append(text)
        self.current = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.markup.append(_unid(f"<{tag}" + "".join(
            f" {k}={' '.join((v or '').split())!r}" for k, v in sorted(attrs)) + ">"))
        for key in ("href", "src"):
            if a.get(key) and not (tag == "link" and a.get("rel") in ("icon",)):
                self.links.append(a[key])
        if tag in HIDDEN:
            self.hidden += 1
        elif tag in BLOCK:
            self._flush()
        self.pre += tag == "pre"
        if tag == "img":
            self._flush()
            self.lines.append(f"[img {a.get('src', '')} | {' '.join((a.get('alt') or '').split())}]")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag in HIDDEN:
            self.hidden -= 1

    def handle_endtag(self, tag):
        self.pre = max(0, self.pre - (tag == "pre"))
        if tag in HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in BLOCK:
            self._flush()

    def handle_data(self, data):
        if self.hidden:
            if data.strip():
                self.markup.append(_unid(" ".join(data.split())))
        elif self.pre:       # preformatted text (the spec's YAML) keeps its lines
            *done, rest = data.split("\n")
            for part in done:
                self.current.append(part)
                self._flush()
            self.current.append(rest)
        else:
            self.current.append(data)

    def close(self):
        super().close()
        self._flush()


TIMINGS = "timings.json"
TIMINGS_SECTION = re.compile(r'<section id="timings">.*?</section>', re.S)   # build.html's wall-clock table


def visible(path: Path) -> _Visible:
    parser = _Visible()
    parser.feed(TIMINGS_SECTION.sub("", path.read_text(encoding="utf-8", errors="replace")))
    parser.close()
    return parser


def files(root: Path, exts: set[str] | None = None) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and (exts is None or p.suffix.lower() in exts)}


def fold(line: str) -> str:
    """A changed line with its numbers folded, so one change repeated on 160 filter pages counts once."""
    return re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", line)


def compare_pages(old: Path, new: Path, context: int, max_pages: int, top: int, markup: bool) -> None:
    a, b = files(old, {".html"}), files(new, {".html"})
    print(f"== pages: {len(a)} in {old}, {len(b)} in {new}, {len(a & b)} in both")
    for label, only in (("only in OLD", a - b), ("only in NEW", b - a)):
        print(f"  {label} ({len(only)}): {', '.join(sorted(only)) or '-'}")
    same, changed, markup_same, markup_changed = 0, [], 0, []
    recurring, recurring_markup = Counter(), Counter()
    examples: dict[str, str] = {}
    for rel in sorted(a & b, key=_page_order):
        va, vb = visible(old / rel), visible(new / rel)
        if va.markup == vb.markup:
            markup_same += 1
        else:
            diff = list(difflib.unified_diff(va.markup, vb.markup, f"OLD/{rel}", f"NEW/{rel}", n=0, lineterm=""))
            markup_changed.append((rel, diff))
            _count(diff, rel, recurring_markup, examples, shape)
        if va.lines == vb.lines:
            same += 1
            continue
        diff = list(difflib.unified_diff(va.lines, vb.lines, f"OLD/{rel}", f"NEW/{rel}", n=context, lineterm=""))
        changed.append((rel, diff))
        _count(diff, rel, recurring, examples)
    print(f"  visible text: {same} identical, {len(changed)} changed; markup (tags, attributes, scripts; "
          f"whitespace and plot ids ignored): {markup_same} identical, {len(markup_changed)} changed")
    shown = changed if max_pages <= 0 else changed[:max_pages]
    for rel, diff in shown:
        print(f"\n-- {rel} (+{sum(d.startswith('+') for d in diff[2:])} -{sum(d.startswith('-') for d in diff[2:])})")
        print("\n".join(diff))
    if len(shown) < len(changed):
        print(f"\n  ({len(changed) - len(shown)} more changed pages not shown; --pages 0 shows all)")
    if markup:
        for rel, diff in markup_changed:
            print(f"\n-- markup of {rel}")
            print("\n".join(line[:300] for line in diff))
    for what, table in (("visible text", recurring), ("markup", recurring_markup)):
        how = "numbers folded to '#'" if table is recurring else "attribute values left out"
        print(f"\n== changed {what} lines by how many pages have them ({how}; top {top})")
        for key, n in table.most_common(top):
            print(f"  {n:4d} pages  {key[:160]}")
            print(f"             e.g. {examples[key][:160]}")


def _count(diff: list[str], rel: str, table: Counter, examples: dict, key_of=fold) -> None:
    """Count each kind of changed line once per page (pages, not lines: one change on 160 pages shows as 160)."""
    keys = {}
    for line in diff[2:]:
        if line[:1] in "+-":
            keys.setdefault(line[0] + " " + key_of(line[1:]), line)
    for key, line in keys.items():
        table[key] += 1
        examples.setdefault(key, f"{rel}: {line}")


def shape(markup_line: str) -> str:
    """A tag with its attribute values left out (`<td class=… style=…>`); a script by its first words."""
    if markup_line.startswith("<"):
        return re.sub(r"='[^']*'|=\"[^\"]*\"", "=…", markup_line)
    return "script: " + fold(markup_line[:60])


def _page_order(rel: str):
    m = re.search(r"f(\d+)\.html$", rel)    # filter pages in numeric order
    return (rel.count("/"), re.sub(r"f\d+\.html$", "", rel), int(m.group(1)) if m else -1, rel)


# -- 2. links ------------------------------------------------------------------------------------------
def broken_links(root: Path) -> dict[str, list[str]]:
    """page → local href/src targets that do not exist in the site."""
    out: dict[str, list[str]] = {}
    for rel in sorted(files(root, {".html"})):
        page = root / rel
        missing = []
        for link in visible(page).links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("#", "data:", "mailto:", "javascript:")):
                continue
            target = (page.parent / unquote(parts.path)).resolve()
            if parts.path and not target.exists():
                missing.append(link)
        if missing:
            out[rel] = missing
    return out


def compare_links(old: Path, new: Path) -> None:
    print("\n== links to files the site lacks")
    bo, bn = broken_links(old), broken_links(new)
    for name, broken in (("OLD", bo), ("NEW", bn)):
        targets = Counter(fold(t) for links in broken.values() for t in links)
        print(f"  {name}: {sum(map(len, broken.values()))} broken links on {len(broken)} pages")
        for t, n in targets.most_common(10):
            print(f"    {n:5d} x {t}")
    new_only = {p: sorted(set(l) - set(bo.get(p, []))) for p, l in bn.items()}
    new_only = {p: l for p, l in new_only.items() if l}
    for p, links in list(new_only.items())[:10]:
        print(f"  new in NEW: {p}: {', '.join(links[:5])}")


# -- 3. images and other files ------------------------------------------------------------------------
def compare_files(old: Path, new: Path) -> None:
    """Images first, then every other file but the pages, report.json and timings.json (sprite sheets, data,
    static)."""
    for title, exts in (("image files", IMAGE_EXTS), ("other files (not .html, not images)", None)):
        a, b = files(old), files(new)
        keep = (lambda p: Path(p).suffix.lower() in IMAGE_EXTS) if exts else \
            (lambda p: Path(p).suffix.lower() not in IMAGE_EXTS | {".html"} and p not in ("report.json", TIMINGS))
        a, b = {p for p in a if keep(p)}, {p for p in b if keep(p)}
        print(f"\n== {title}")
        for name, s in (("OLD", a), ("NEW", b)):
            by_ext = Counter(Path(p).suffix.lower() or Path(p).name for p in s)
            print(f"  {name}: {len(s)} ({', '.join(f'{e} {n}' for e, n in sorted(by_ext.items()))})")
        for label, only in (("only in OLD", sorted(a - b)), ("only in NEW", sorted(b - a))):
            groups = Counter(fold(p) for p in only)
            print(f"  {label}: {len(only)}" + "".join(f"\n    {n:5d} x {g}" for g, n in groups.most_common(15)))
        same = [p for p in a & b if _sha(old / p) == _sha(new / p)]
        diff = sorted(set(a & b) - set(same))
        groups = Counter(fold(p) for p in diff)
        print(f"  in both: {len(a & b)}, byte-identical {len(same)}, changed {len(diff)}"
              + "".join(f"\n    {n:5d} x {g}" for g, n in groups.most_common(15)))
        for p in diff:
            if p.endswith(".npz"):
                _compare_npz(old / p, new / p)


def _compare_npz(a: Path, b: Path) -> None:
    """Which arrays of a changed .npz differ, and by how much (bytes can differ by float rounding alone)."""
    import numpy as np
    with np.load(a) as x, np.load(b) as y:
        names = sorted(set(x.files) | set(y.files))
        rows = []
        for k in names:
            if k not in x.files or k not in y.files:
                rows.append(f"{k}: only in {'NEW' if k in y.files else 'OLD'}")
            elif x[k].shape != y[k].shape or x[k].dtype != y[k].dtype:
                rows.append(f"{k}: {x[k].dtype}{list(x[k].shape)} -> {y[k].dtype}{list(y[k].shape)}")
            elif not np.array_equal(x[k], y[k]):
                d = np.abs(x[k].astype(np.float64) - y[k].astype(np.float64))
                rows.append(f"{k}: max |diff| {d.max():.3g} (max |value| {np.abs(x[k]).max():.3g})")
    print(f"    {a.name}: {len(rows)} of {len(names)} arrays differ" + "".join(f"\n      {r}" for r in rows[:20]))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# -- 4. report.json ------------------------------------------------------------------------------------
def _by(items, *keys) -> dict:
    return {tuple(i.get(k) for k in keys): i for i in items or []}


def _as_new(report: dict) -> dict:
    """The report with the parts whose place changed in schema 2 moved to their new keys (values untouched);
    a schema-2 report comes back as it was."""
    old = json.loads(json.dumps(report))
    for layer in old.get("layers", []):
        if "embedding" in layer:                          # schema 1: the layer's explorer panels
            panels = layer.pop("embedding")
            layer["explorer"] = {"explorers": panels} if panels is not None else None
        for f in layer.get("filters", []):
            if "circuit" in f:
                info = f.pop("circuit_info", None) or {}
                f["circuits"] = None if f["circuit"] is None else info | {"channels": f["circuit"]}
                del f["circuit"]
            for ch in (f.get("circuits") or {}).get("channels", []):
                # schema 1 kept each kernel cell as its page text (and colour); schema 2 the weight. Compare
                # what the page shows: the weight as the old page formatted it (2 significant digits)
                ch["kernel"] = [[_kernel_text(v) for v in row] for row in ch.get("kernel", [])]
    if isinstance(old.get("embedding"), list):            # schema 1: the overview's explorer panels
        old["overview_explorer"] = {"explorers": old.pop("embedding")}
    if isinstance(old.get("attribution"), list):
        old["attribution"] = {"records": old["attribution"]}
    if isinstance(old.get("first_layer_filters"), str):
        old["first_layer_filters"] = {"image": old["first_layer_filters"]}
    return old


def _kernel_text(v) -> str:
    if isinstance(v, dict):
        return v.get("text")
    return f"{v:.2g}" if abs(v) >= 1e-3 else f"{v:.0e}"


class Walk:
    """Walks old and new side by side: numbers compared, strings compared, keys present on one side noted."""

    def __init__(self, rel_tol: float):
        self.rel_tol = rel_tol
        self.checked = Counter()      # folded path → values compared
        self.numbers = defaultdict(list)   # folded path → [(path, old, new)]
        self.strings = defaultdict(list)
        self.lengths = defaultdict(list)
        self.only = defaultdict(set)       # "OLD"/"NEW" → folded key paths

    def __call__(self, old, new, path: str = "") -> None:
        fp = re.sub(r"\[\d+\]", "[]", path)
        if isinstance(old, dict) and isinstance(new, dict):
            for k in old.keys() - new.keys():
                self.only["OLD"].add(f"{fp}.{k}")
            for k in new.keys() - old.keys():
                self.only["NEW"].add(f"{fp}.{k}")
            for k in old.keys() & new.keys():
                self(old[k], new[k], f"{path}.{k}")
        elif isinstance(old, list) and isinstance(new, list):
            if len(old) != len(new):
                self.lengths[fp].append((path, len(old), len(new)))
            for i, (x, y) in enumerate(zip(old, new)):
                self(x, y, f"{path}[{i}]")
        elif _num(old) and _num(new):
            self.checked[fp] += 1
            if abs(old - new) > self.rel_tol * max(abs(old), abs(new), 1e-12):
                self.numbers[fp].append((path, old, new))
        elif isinstance(old, str) and isinstance(new, str):
            self.checked[fp] += 1
            if old != new:
                self.strings[fp].append((path, old, new))
        elif old != new:
            if old is None or new is None or type(old) is not type(new):
                self.numbers[fp].append((path, old, new))
            else:
                self.strings[fp].append((path, old, new))


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# the values the page redesign must leave alone: (label, folded path prefix)
MUST_KEEP = [("accuracy", ".accuracy"), ("samples (index, label, pred)", ".samples[]"),
             ("samples top3", ".samples[].top3"), ("top_images", ".layers[].filters[].top_images"),
             ("bottom_images", ".layers[].filters[].bottom_images"), ("top_patches", ".layers[].filters[].top_patches"),
             ("top_classes", ".layers[].filters[].top_classes"), ("histograms", ".layers[].filters[].histogram"),
             ("feature_vis", ".layers[].filters[].feature_vis"), ("circuits", ".layers[].filters[].circuits"),
             ("guided_backprop", ".layers[].filters[].guided_backprop"), ("class_models", ".class_models"),
             ("attribution", ".attribution"), ("first_layer_filters", ".first_layer_filters"),
             ("layer explorer", ".layers[].explorer"), ("overview explorer", ".overview_explorer"),
             ("model/dataset", ".model"), ("dataset", ".dataset")]


def compare_reports(old_path: Path, new_path: Path, rel_tol: float, top: int) -> None:
    print("\n== report.json")
    if not (old_path.is_file() and new_path.is_file()):
        print(f"  missing: {old_path if not old_path.is_file() else new_path}")
        return
    old, new = _as_new(json.loads(old_path.read_text())), _as_new(json.loads(new_path.read_text()))
    print(f"  schema_version: OLD {old.get('schema_version', '(none: 1)')}, NEW {new.get('schema_version')}")
    # filters and layers matched by name/index, attribution records by what they show, not by position
    walk = Walk(rel_tol)
    top_level = {k: v for k, v in old.items() if k not in ("layers", "attribution")}
    walk(top_level, {k: v for k, v in new.items() if k not in ("layers", "attribution")})
    ol, nl = _by(old.get("layers"), "name"), _by(new.get("layers"), "name")
    for name in sorted(ol.keys() - nl.keys()):
        print(f"  layer only in OLD: {name}")
    for name in sorted(nl.keys() - ol.keys()):
        print(f"  layer only in NEW: {name}")
    for i, name in enumerate(k for k in ol if k in nl):
        lo, ln = dict(ol[name]), dict(nl[name])
        fo, fn = _by(lo.pop("filters"), "index"), _by(ln.pop("filters"), "index")
        if fo.keys() != fn.keys():
            walk.lengths[".layers[].filters"].append((f"layer {name[0]}", len(fo), len(fn)))
        walk(lo, ln, f".layers[{i}]")
        for f in sorted(fo.keys() & fn.keys()):
            walk(fo[f], fn[f], f".layers[{i}].filters[{f[0]}]")
    ao, an = old.get("attribution"), new.get("attribution")
    if isinstance(ao, dict) and isinstance(an, dict):
        keys = ("dataset_index", "method", "target_kind")
        ro, rn = _by(ao.get("records"), *keys), _by(an.get("records"), *keys)
        if ro.keys() != rn.keys():
            walk.lengths[".attribution.records"].append((".attribution.records", len(ro), len(rn)))
        walk({k: v for k, v in ao.items() if k != "records"}, {k: v for k, v in an.items() if k != "records"},
             ".attribution")
        for n, k in enumerate(sorted(ro.keys() & rn.keys(), key=str)):
            walk(ro[k], rn[k], f".attribution.records[{n}]")
    else:
        walk(ao, an, ".attribution")

    print("  values that must not change (compared, differing):")
    for label, prefix in MUST_KEEP:
        n = sum(c for p, c in walk.checked.items() if p.startswith(prefix))
        bad = sum(len(v) for p, v in walk.numbers.items() if p.startswith(prefix))
        text = sum(len(v) for p, v in walk.strings.items() if p.startswith(prefix))
        lens = sum(len(v) for p, v in walk.lengths.items() if p.startswith(prefix))
        mark = "ok  " if not (bad or text or lens) else "DIFF"
        print(f"    {mark} {label}: {n} values compared, {bad} numbers and {text} strings differ, "
              f"{lens} lists of another length")
    for title, table in (("numbers (or null/type) that differ", walk.numbers), ("strings that differ", walk.strings)):
        print(f"  {title}: {sum(map(len, table.values()))} at {len(table)} paths")
        for fp, items in sorted(table.items(), key=lambda kv: -len(kv[1]))[:top]:
            path, a, b = items[0]
            print(f"    {len(items):6d} x {fp}   e.g. {path}: {_short(a)} -> {_short(b)}")
    print(f"  lists of another length: {sum(map(len, walk.lengths.values()))}")
    for fp, items in sorted(walk.lengths.items(), key=lambda kv: -len(kv[1]))[:top]:
        path, a, b = items[0]
        print(f"    {len(items):6d} x {fp}   e.g. {path}: {a} -> {b}")
    for side in ("OLD", "NEW"):
        keys = sorted(walk.only[side])
        print(f"  keys only in {side} ({len(keys)}):" + "".join(f"\n    {k}" for k in keys))


def _short(v) -> str:
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= 70 else text[:67] + "..."


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--context", type=int, default=1, help="lines of context in each page's diff")
    p.add_argument("--pages", type=int, default=0, help="show at most this many page diffs (0: all)")
    p.add_argument("--markup", action="store_true", help="also print each page's markup diff (long)")
    p.add_argument("--top", type=int, default=40, help="rows in each 'most frequent' table")
    p.add_argument("--rel-tol", type=float, default=1e-9, help="relative tolerance for numbers in report.json")
    args = p.parse_args()
    compare_pages(args.old, args.new, args.context, args.pages, args.top, args.markup)
    compare_links(args.old, args.new)
    compare_files(args.old, args.new)
    compare_reports(args.old / "report.json", args.new / "report.json", args.rel_tol, args.top)


if __name__ == "__main__":
    main()
