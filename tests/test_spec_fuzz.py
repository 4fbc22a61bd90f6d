"""Fuzz the spec loader: any YAML document gives a Spec or a SpecError with a key — never another exception.

Random documents almost never get past the top-level keys, so the main fuzzer draws *valid* specs and breaks
at most one nested value in each: a valid one must load with its values kept, a broken one must fail with
errors that all name the broken key (`layers[1].filters`, `feature_vis.steps`, ...).
"""

import copy
import os
import string
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from reportgen.cli import main
from reportgen.errors import SpecError
from reportgen.spec import (AttributionSpec, CircuitSpec, EmbeddingSpec, FeatureVisSpec, RecordSpec, Spec,
                            load_spec, parse_filter_selection)

# -- arbitrary documents -----------------------------------------------------------------------------------
KEYS = ["title", "seed", "output", "device", "model", "dataset", "layers", "record", "feature_vis", "circuit",
        "embedding", "attribution", "torchvision", "weights", "checkpoint", "factory", "format", "root", "split",
        "limit", "name", "filters", "top_k", "images", "methods", "mean", "std", "classes", "channels"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(string.printable, max_size=12), st.sampled_from(["all", "0-63", "cpu", "mnist", "a:b"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=5)),
    max_leaves=20)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=8) | values

# -- valid specs -------------------------------------------------------------------------------------------
names = st.text(string.ascii_letters + string.digits + "_.", min_size=1, max_size=12)
module_callable = st.from_regex(r"[a-z_][a-z0-9_]{0,6}(\.[a-z_][a-z0-9_]{0,6})?:[a-z_][a-z0-9_]{0,6}", fullmatch=True)
paths = st.sampled_from(["data", "data/fashion", "../weights.pt", "/tmp/x/net.pt", "sub dir/a b"])


@st.composite
def filter_selections(draw):
    """Every form the README documents: list, single int, 'a-b', 'a-b,c', 'all', or the default."""
    lo = draw(st.integers(0, 40))
    hi = lo + draw(st.integers(0, 20))
    return draw(st.sampled_from([None, [lo, hi], lo, f"{lo}-{hi}", f"{lo}-{hi},{hi + 3}", "all", f" {lo} "]))


@st.composite
def models(draw):
    source = draw(st.sampled_from(["torchvision", "factory", "checkpoint", "both"]))
    if source == "torchvision":
        model = {"torchvision": draw(st.sampled_from(["resnet18", "vgg16", "x"]))}
        if draw(st.booleans()):
            model["weights"] = draw(st.sampled_from([None, "IMAGENET1K_V1", "DEFAULT"]))
    else:
        model = {}
        if source in ("factory", "both"):
            model["factory"] = draw(module_callable)
        if source in ("checkpoint", "both"):
            model["checkpoint"] = draw(paths)
            if draw(st.booleans()):
                model["trust_checkpoint"] = draw(st.booleans())
    channels = draw(st.sampled_from([None, 1, 3]))
    if channels:
        model["channels"] = channels
    if draw(st.booleans()):
        n = channels or 1
        model["mean"] = draw(st.lists(st.floats(-1, 1), min_size=n, max_size=n))
        model["std"] = draw(st.lists(st.floats(0.01, 2), min_size=n, max_size=n))
    if draw(st.booleans()):
        model["input_size"] = draw(st.integers(8, 2048))
    if draw(st.booleans()):
        model["classes"] = draw(st.one_of(st.lists(names, max_size=4), paths))
    return model


def optional(section: type, **fields):
    """A `section` dict with any subset of `fields`' valid values (keys the schema dropped left out)."""
    return st.fixed_dictionaries({}, optional={k: v for k, v in fields.items() if k in section.model_fields})


sections = {
    "title": names, "seed": st.integers(-10**6, 10**6), "output": paths, "device": st.sampled_from(["cpu", "auto"]),
    "record": optional(RecordSpec, top_k=st.integers(1, 100), negatives=st.booleans(),
                       pooled_limit=st.integers(0, 200_000)),
    "feature_vis": optional(FeatureVisSpec, enabled=st.booleans(), size=st.integers(0, 1024),
                            steps=st.integers(1, 10_000), lr=st.floats(0.001, 1),
                            objective=st.sampled_from(["channel", "neuron"]), variants=st.integers(1, 4), diversity=st.floats(0, 2), compare_plain=st.booleans(),
                            classes=st.lists(st.integers(0, 9), max_size=4)),
    "circuit": optional(CircuitSpec, enabled=st.booleans(), top_n=st.integers(1, 512), expand=st.booleans()),
    "embedding": optional(EmbeddingSpec, max_points=st.integers(10, 200_000)),
    "attribution": optional(AttributionSpec, enabled=st.booleans(),
                            images=st.integers(1, 16) | st.lists(st.integers(0, 99), min_size=1, max_size=3),
                            methods=st.lists(st.sampled_from(["occlusion", "saliency", "gradcam", "guided_backprop",
                                                              "guided_gradcam"]), max_size=5),
                            target=st.sampled_from(["predicted", "true", "both"]), window=st.integers(0, 30),
                            stride=st.integers(0, 30), layer=names, sanity_check=st.booleans()),
}
valid_specs = st.fixed_dictionaries({
    "model": models(),
    "dataset": st.fixed_dictionaries(
        {"format": st.sampled_from(["imagefolder", "fashion-mnist", "mnist", "cifar10"]), "root": paths},
        optional={"split": st.sampled_from(["train", "test"]), "limit": st.integers(1, 10**6),
                  "on_error": st.sampled_from(["skip", "raise"]), "samples": st.integers(1, 64),
                  "batch_size": st.integers(1, 4096), "workers": st.integers(0, 64)}),
    "layers": st.lists(st.fixed_dictionaries({"name": names}, optional={
        "filters": filter_selections(), "embedding": st.sampled_from(["tsne", "pca", "both", "none"])}),
        min_size=1, max_size=3),
}, optional=sections)

# -- targeted mutations: (key path, bad values); `L` is replaced by a drawn index into `layers` ---------------
L = "L"
MISSING, UNKNOWN = object(), object()
MUTATIONS = [   # nested keys first: hypothesis draws the first entries of a sampled_from more often
    (("layers", L, "filters"), ["5-2", "first", [], [-1], "1-", {"a": 1}, [1.5], "3-a"]),
    (("feature_vis", "steps"), [0, "many", 20000]), (("layers", L, "name"), ["", None, MISSING]),
    (("layers", L, "embedding"), ["umap"]), (("layers", L, "colour"), [UNKNOWN]),
    (("model", "factory"), ["a.b", "no colon", ":x", "a:"]),
    (("model", "input_size"), [4, 4096, "big"]), (("model", "channels"), [2, 4, "rgb"]),
    (("model", "mean"), ["x", {"a": 1}, [0.5, "x"]]), (("model", "trust_checkpoint"), ["maybe"]),
    (("model", "colour"), [UNKNOWN]),
    (("dataset", "format"), ["jpeg", None, MISSING]),
    (("dataset", "root"), [MISSING, None]), (("dataset", "split"), ["val"]), (("dataset", "limit"), [0, -5]),
    (("dataset", "samples"), [0, 65]), (("dataset", "batch_size"), [0, 5000]), (("dataset", "workers"), [-1]),
    (("dataset", "on_error"), ["ignore"]), (("dataset", "labels"), ["guess", 1]), (("layers", L), ["block1_conv1", 3]),
    (("accuracy", "confusions"), [-1, "x"]), (("feature_vis", "batch_size"), [-1, 5000]),
    (("record", "top_k"), [0, 101]), (("record", "pooled_limit"), [-1]),
    (("feature_vis", "lr"), [0, -1]),
    (("feature_vis", "variants"), [5]), (("feature_vis", "diversity"), [-0.1, 3]),
    (("feature_vis", "objective"), ["pixel"]), (("feature_vis", "classes"), ["x", [0, "y"]]),
    (("circuit", "top_n"), [0, "x"]), (("circuit", "colour"), [UNKNOWN]),
    (("embedding", "max_points"), [5]),
    (("attribution", "methods"), [["x"], "saliency"]), (("attribution", "target"), ["both-ish"]),
    (("attribution", "images"), ["x", [1, "x"], 0, [-1], []]),
    (("title",), [None, ["a"]]), (("seed",), ["x", 1.5]), (("device",), ["tpu", 3]), (("output",), [5, None]),
    (("model",), [MISSING, "resnet18"]), (("dataset",), [MISSING, []]), (("layers",), [MISSING, [], "block1_conv1"]),
    ((), [UNKNOWN]),
]


def key_of(path: tuple) -> str:
    """('layers', 1, 'filters') → 'layers[1].filters', the form SpecError.key takes."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else part
    return out


def mutate(doc: dict, path: tuple, bad) -> str:
    """Put `bad` at `path` of `doc` (MISSING: delete it; UNKNOWN: add a key 'colour' below it); return its key."""
    if bad is UNKNOWN:
        path = path if path and path[-1] == "colour" else path + ("colour",)
        bad = "red"
    *parents, last = path
    node = doc
    for part in parents:
        if isinstance(part, str) and part not in node:
            node[part] = {}
        node = node[part]
    if bad is MISSING:
        node.pop(last, None)
    else:
        node[last] = bad
    return key_of(path)


@st.composite
def cases(draw):
    """(document, the key its one fault is at, or None when it is valid)."""
    doc = draw(valid_specs)
    if not draw(st.booleans()):        # booleans() is close to even; none() | ... is mostly none()
        return doc, None
    path, bads = draw(st.sampled_from(MUTATIONS))
    path = tuple(draw(st.integers(0, len(doc["layers"]) - 1)) if p == L else p for p in path)
    return doc, mutate(doc, path, draw(st.sampled_from(bads)))


def check_kept(spec: Spec, doc: dict, base):
    """What the document said is what the Spec holds (defaults elsewhere)."""
    assert spec.title == doc.get("title", "reportgen report") and spec.seed == doc.get("seed", 0)
    assert spec.dataset.format == doc["dataset"]["format"]
    assert spec.dataset.root == Path(os.path.normpath(base / doc["dataset"]["root"]))   # relative to the spec
    assert spec.feature_vis.steps == doc.get("feature_vis", {}).get("steps", 128)
    assert [l.name for l in spec.layers] == [l["name"] for l in doc["layers"]]
    for got, want in zip(spec.layers, doc["layers"]):
        if want.get("filters") is not None:
            assert parse_filter_selection(got.filters) == parse_filter_selection(want["filters"])
    if "factory" in doc["model"]:
        assert spec.model.factory == doc["model"]["factory"]


def load_case(tmp_path, doc, key):
    """Load `doc`; assert it loads (key None) or fails with every error at `key`. Returns the outcome."""
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        spec = load_spec(path)
    except SpecError as exc:
        errors = getattr(exc, "errors", [exc])
        assert key is not None, f"a valid spec was refused: {exc}"
        assert exc.key == key or exc.key.startswith((key + ".", key + "[")), (key, str(exc))
        for err in errors:   # one fault, so every error is about it (a union gives one error per branch)
            assert err.key == key or err.key.startswith((key + ".", key + "[")), (key, str(err))
            assert err.message and "\n" not in err.message
        return exc.key
    assert key is None, f"{key} = {mutated_value(doc, key)!r} was accepted"
    check_kept(spec, doc, tmp_path.resolve())
    return None


def mutated_value(doc, key):
    node = doc
    for part in key.replace("[", ".").replace("]", "").split("."):
        node = node[int(part)] if part.isdigit() else node.get(part) if isinstance(node, dict) else None
    return node


def test_mostly_valid_specs_reach_nested_validators(tmp_path):
    outcomes = Counter()

    @settings(max_examples=300, deadline=None, database=None, derandomize=True)   # a coverage count: same draws
    @given(case=cases())
    def run(case):
        doc, key = case
        got = load_case(tmp_path, doc, key)
        outcome = "valid" if got is None else "nested" if "." in got or "[" in got else "top-level"
        event(outcome)
        outcomes[outcome] += 1
        if got:
            outcomes[f"key {got}"] += 1

    run()
    total = outcomes["valid"] + outcomes["nested"] + outcomes["top-level"]
    assert outcomes["valid"] >= 0.4 * total, outcomes                  # the fuzzer reaches valid specs
    assert outcomes["nested"] >= 0.15 * total, outcomes                # and faults below the top level
    nested_keys = {k for k in outcomes if k.startswith("key ") and ("." in k or "[" in k)}
    assert len(nested_keys) >= 12, sorted(nested_keys)
    print(f"{total} specs: {outcomes['valid']} valid, {outcomes['nested']} nested faults, {len(nested_keys)} keys")


@pytest.mark.parametrize("path, bad, key, message", [
    (("layers", 0, "filters"), "5-2", "layers[0].filters", "range '5-2' runs backwards; write '2-5'"),
    (("layers", 0, "filters"), "first", "layers[0].filters",
     "'first' is not a filter selection; use a list like [0, 31], a range like '0-63', or 'all'"),
    (("layers", 0, "filters"), [], "layers[0].filters",
     "filter indices must be a non-empty list of non-negative integers"),
    (("layers", 1, "name"), MISSING, "layers[1].name", "required key is missing"),
    (("layers", 1, "colour"), UNKNOWN, "layers[1].colour",
     "unknown key; check its spelling against the README's spec reference"),
    (("feature_vis", "steps"), 0, "feature_vis.steps", "Input should be greater than or equal to 1"),
    (("feature_vis", "steps"), "many", "feature_vis.steps",
     "Input should be a valid integer, unable to parse string as an integer"),
    (("model", "factory"), "a.b", "model.factory",
     "'a.b' is not 'module:callable' (e.g. 'mynet:build' for build() in mynet.py)"),
    (("model", "torchvision"), "resnet18", "model", "give either 'torchvision' or 'checkpoint'/'factory', not both"),
    (("dataset", "root"), MISSING, "dataset.root", "required key is missing"),
    (("attribution", "methods"), ["x"], "attribution.methods[0]",
     "Input should be 'occlusion', 'saliency', 'gradcam', 'guided_backprop' or 'guided_gradcam'"),
])
def test_nested_errors_name_their_key(tmp_path, path, bad, key, message):
    doc = {"model": {"factory": "mynet:build"}, "dataset": {"format": "mnist", "root": "data"},
           "layers": [{"name": "block1_conv1", "filters": [0, 1]}, {"name": "block2_conv1"}]}
    mutate(doc, path, bad)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "spec.yaml")
    assert [(e.key, e.message) for e in info.value.errors] == [(key, message)]


@pytest.mark.parametrize("path, bad, key", [
    (("layers", 0, "filters"), True, "layers[0].filters"),      # YAML `filters: yes` would select filter 1
    (("model", "classes"), 5, "model.classes"),                   # must not leak pydantic's union branch names
])
def test_loader_faults_the_fuzzer_found(tmp_path, path, bad, key):
    """Faults the fuzzer found (fixed in 9fa271d): each is refused, with errors at exactly `key`."""
    doc = {"model": {"factory": "mynet:build"}, "dataset": {"format": "mnist", "root": "data"},
           "layers": [{"name": "block1_conv1"}]}
    mutate(doc, path, bad)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "spec.yaml")
    assert {e.key for e in info.value.errors} == {key}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=documents)
def test_loader_never_crashes(tmp_path, doc):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        assert isinstance(load_spec(path), Spec)
    except SpecError as exc:
        assert exc.key and exc.message and "\n" not in exc.message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=200))
def test_loader_survives_arbitrary_text(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_spec(path)
    except SpecError as exc:
        assert exc.key


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases().filter(lambda c: c[1] is not None))
def test_cli_reports_each_fault_with_its_key(tmp_path, case, capsys):
    """Through the CLI: exit 2, and stderr is `error: KEY: ...` lines, every one at the broken key."""
    doc, key = case
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(copy.deepcopy(doc)))
    code = main(["build", "-q", str(path), "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and lines, lines
    assert all(line.startswith((f"error: {key}: ", f"error: {key}.", f"error: {key}[")) for line in lines), (key, lines)
