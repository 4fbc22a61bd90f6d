"""Fuzz the spec loader: any YAML document gives a Spec or a SpecError with a key — never another exception."""

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reportgen.cli import main
from reportgen.errors import SpecError
from reportgen.spec import Spec, load_spec

KEYS = ["title", "seed", "output", "device", "model", "dataset", "layers", "record", "feature_vis", "circuit",
        "embedding", "attribution", "torchvision", "weights", "checkpoint", "factory", "format", "root", "split",
        "limit", "name", "filters", "top_k", "images", "methods", "mean", "std", "classes", "channels"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(string.printable, max_size=12), st.sampled_from(["all", "0-63", "cpu", "mnist", "a:b"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=5)),
    max_leaves=20)
documents = st.dictionaries(st.sampled_from(KEYS), values, max_size=8) | values


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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
@given(doc=documents)
def test_cli_exits_0_or_2(tmp_path, doc, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(doc))
    code = main(["build", "-q", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code in (0, 2) and "Traceback" not in err
