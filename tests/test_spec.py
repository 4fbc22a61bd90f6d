"""Spec validation: every error names its key path and says how to fix it; the CLI exits 2 with one line."""

import textwrap

import pytest

from reportgen.cli import main
from reportgen.errors import SpecError
from reportgen.spec import load_spec, parse_filter_selection

BASE = """
model:
  factory: tests.helpers.tiny:tiny_cnn
dataset:
  format: fashion-mnist
  root: data
layers:
  - name: block1_conv1
"""


def write(tmp_path, text):
    (tmp_path / "data").mkdir(exist_ok=True)
    p = tmp_path / "spec.yaml"
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("text, key, fragment", [
    (BASE + "seed: abc\n", "seed", "valid integer"),
    (BASE + "device: tpu\n", "device", "'cpu', 'cuda' or 'auto'"),
    (BASE + "colour: red\n", "colour", "unknown key"),
    (BASE.replace("format: fashion-mnist", "format: svhn"), "dataset.format", "'imagefolder'"),
    (BASE.replace("  root: data\n", ""), "dataset.root", "required key is missing"),
    (BASE + "  - name: x\n    filters: 9-2\n", "layers[1].filters", "runs backwards"),
    (BASE + "  - name: x\n    filters: [1, -2]\n", "layers[1].filters", "non-negative"),
    (BASE + "  - name: x\n    filters: some\n", "layers[1].filters", "not a filter selection"),
    (BASE + "  - filters: all\n", "layers[1].name", "required key is missing"),
    (BASE.replace("  root: data\n", "  root: data\n  limit: 0\n"), "dataset.limit", "greater than or equal to 1"),
    (BASE.replace("factory: tests.helpers.tiny:tiny_cnn", "factory: not a factory"), "model.factory", "is not 'module:callable'"),
    (BASE.replace("factory: tests.helpers.tiny:tiny_cnn", "torchvision: vgg19\n  factory: a.b:c"), "model",
     "not both"),
    (BASE.replace("  factory: tests.helpers.tiny:tiny_cnn\n", "  input_size: 32\n"), "model", "name the model"),
    (BASE + "record:\n  top_k: 0\n", "record.top_k", "greater than or equal to 1"),
    (BASE.replace("layers:\n  - name: block1_conv1\n", "layers: []\n"), "layers", "at least 1 item"),
    (BASE + "attribution:\n  methods: [lime]\n", "attribution.methods[0]", "'occlusion'"),
    (BASE + "attribution:\n  images: -1\n", "attribution.images", "-1 images: give at least 1"),
    (BASE + "attribution:\n  images: [3, -2]\n", "attribution.images", "non-empty list of dataset indices"),
    (BASE + "record:\n  histogram_bins: 40\n", "record.histogram_bins", "removed: it never changed the histograms"),
    (BASE + "  - name: x\n    filters: yes\n", "layers[1].filters", "give filter indices"),
])
def test_spec_errors_name_the_key(tmp_path, text, key, fragment):
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, text))
    assert info.value.key == key
    assert fragment in info.value.message


def test_yaml_syntax_error_names_the_line(tmp_path):
    with pytest.raises(SpecError, match=r"spec.yaml is not valid YAML at line 3: "):
        load_spec(write(tmp_path, "model:\n  factory: a:b\n bad: 1\n"))


def test_relative_paths_are_relative_to_the_spec(tmp_path):
    spec = load_spec(write(tmp_path, BASE + "output: out/site\n"))
    assert spec.dataset.root == tmp_path / "data"
    assert spec.output == tmp_path / "out" / "site"


@pytest.mark.parametrize("value, expected", [
    ("0-3", [0, 1, 2, 3]), ("0-2,7", [0, 1, 2, 7]), ([5, 1, 5], [1, 5]), (4, [4]), ("all", None)])
def test_filter_selection(value, expected):
    assert parse_filter_selection(value) == expected


def test_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    code = main(["build", str(write(tmp_path, BASE + "device: tpu\n"))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: device: Input should be 'cpu', 'cuda' or 'auto'"]
    assert not (tmp_path / "site").exists()


def test_cli_unknown_layer_suggests_closest(tmp_path, capsys):
    spec = write(tmp_path, BASE.replace("block1_conv1", "block9_conv1"))
    from tests.helpers.tiny import write_mnist
    write_mnist(tmp_path / "data")
    assert main(["build", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: layers[0].name: no layer 'block9_conv1'; closest: block2_conv1, block1_conv1, "
                   "block1_conv2 (run 'reportgen layers SPEC' to list them)"]


def with_input_size(value: str) -> str:
    return BASE.replace("  factory: tests.helpers.tiny:tiny_cnn\n",
                        f"  factory: tests.helpers.tiny:tiny_cnn\n  input_size: {value}\n")


@pytest.mark.parametrize("value, expected", [("28", 28), ("[40, 32]", (40, 32)), ("[8, 2048]", (8, 2048))])
def test_input_size_is_a_side_or_height_and_width(tmp_path, value, expected):
    spec = load_spec(write(tmp_path, with_input_size(value)))
    assert spec.model.input_size == expected
    assert spec.model.model_dump(mode="json")["input_size"] == (list(expected) if value.startswith("[") else expected)


@pytest.mark.parametrize("value, message", [
    ("4", "4 px is out of range; each side must be 8 to 2048 pixels"),
    ("4096", "4096 px is out of range; each side must be 8 to 2048 pixels"),
    ("[40, 4]", "[40, 4] is out of range; each side must be 8 to 2048 pixels"),
    ("[40]", "[40] is not [height, width]; give two sides, or one int for a square"),
    ("[40, 32, 3]", "[40, 32, 3] is not [height, width]; give two sides, or one int for a square"),
    ("big", "'big' is not a size; give one int for a square (e.g. 224) or [height, width] (e.g. [40, 32])"),
    ("true", "True is not a size; give one int for a square (e.g. 224) or [height, width] (e.g. [40, 32])"),
    ("40.5", "40.5 is not a size; give one int for a square (e.g. 224) or [height, width] (e.g. [40, 32])"),
    ("[40, 32.0]", "[40, 32.0] is not a size; give one int for a square (e.g. 224) or [height, width] "
                   "(e.g. [40, 32])"),
])
def test_input_size_errors_name_the_key(tmp_path, value, message):
    with pytest.raises(SpecError) as info:
        load_spec(write(tmp_path, with_input_size(value)))
    assert [(e.key, e.message) for e in info.value.errors] == [("model.input_size", message)]
