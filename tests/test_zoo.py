"""The model zoo: each torchvision family (random weights, small input) builds with the default sections on an
inner layer chosen by module path; every filter gets patches inside the image and guided backprop; nothing is
absent but the circuit of a block output that no single conv produces (a residual sum, a concatenation).

`REPORTGEN_ZOO_TABLE=FILE` appends one JSON line per model (seconds, what is absent) for the README's table.
"""

import json
import os

import pytest

from tests.helpers.zoo import ZOO, build_zoo_model

BLOCK_OUTPUTS = {"resnet18", "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0", "googlenet",
                 "inception_v3", "shufflenet_v2_x0_5", "squeezenet1_0", "regnet_x_400mf", "convnext_tiny",
                 "mnasnet0_5", "mobilenet_v3_small", "factory:tests.helpers.cifar_resnet:resnet20"}


@pytest.mark.slow
@pytest.mark.parametrize("name, layer, size", ZOO, ids=[z[0].split(":")[-1] for z in ZOO])
def test_zoo_model_builds_with_every_section(tmp_path, name, layer, size):
    report, seconds, lines = build_zoo_model(tmp_path, name, layer, size)
    absent = {a["name"]: a["absent"] for a in report["analyses"] if a["absent"]}
    (entry,) = report["layers"]
    if os.environ.get("REPORTGEN_ZOO_TABLE"):
        with open(os.environ["REPORTGEN_ZOO_TABLE"], "a") as f:
            f.write(json.dumps({"model": name, "layer": layer, "seconds": round(seconds, 1), "absent": absent,
                                "layer_absent": entry["absent"]}) + "\n")
    # SqueezeNet classifies with a conv and a pool: no Linear layer whose input features the overview could show
    expected = {"overview_explorer": "the model has no final Linear layer whose input features to show"} \
        if name == "squeezenet1_0" else {}
    classes, outputs = len(report["dataset"]["classes"]), report["model"]["num_classes"]
    if outputs != classes:   # an ImageNet or CIFAR head over the zoo's few folders: no accuracy, said why
        expected["accuracy"] = f"the model's {outputs} outputs are not the dataset's {classes} classes: no accuracy to state"
    assert absent == expected, absent
    allowed = {"circuits"} if name in BLOCK_OUTPUTS else set()
    assert set(entry["absent"]) <= allowed, entry["absent"]
    h, w = (size, size)
    for f in entry["filters"]:
        assert len(f["top_patches"]) == len(f["top_images"]) > 0
        for p in f["top_patches"]:
            x0, y0, x1, y1 = p["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, p["box"]
            assert (tmp_path / "site" / p["patch"]).is_file()
        assert f["guided_backprop"] and f["feature_vis"]["image"]
    assert report["attribution"]["records"] and report["class_models"]
    assert not any(l.startswith("warning") for l in lines), lines
