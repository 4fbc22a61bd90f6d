"""The model zoo: each torchvision family (random weights, small input) builds with the default sections on an
inner layer chosen by module path; every filter gets patches inside the image, guided backprop and a circuit
(a block output's: the terms of its sum, its concatenation's branch, a channel shuffle followed back) whose terms
recompute the unit's value; nothing is absent.

`REPORTGEN_ZOO_TABLE=FILE` appends one JSON line per model (seconds, what is absent) for the README's table.
"""

import json
import os

import pytest

from tests.helpers.zoo import ZOO, build_zoo_model

NO_CIRCUIT: set[str] = set()


@pytest.mark.slow
@pytest.mark.parametrize("name, layer, size", ZOO, ids=[z[0].split(":")[-1] for z in ZOO])
def test_zoo_model_builds_with_every_section(tmp_path, name, layer, size):
    report, seconds, lines = build_zoo_model(tmp_path, name, layer, size)
    absent = {a["name"]: a["absent"] for a in report["analyses"] if a["absent"]}
    (entry,) = report["layers"]
    if os.environ.get("REPORTGEN_ZOO_TABLE"):
        with open(os.environ["REPORTGEN_ZOO_TABLE"], "a") as f:
            circuits = [f["circuits"] for f in entry["filters"] if f["circuits"]]
            f.write(json.dumps({"model": name, "layer": layer, "seconds": round(seconds, 1), "absent": absent,
                                "layer_absent": entry["absent"], "circuits": sorted({c["kind"] for c in circuits}),
                                "terms": max((len(c["terms"]) for c in circuits), default=0)}) + "\n")
    # SqueezeNet classifies with a conv and a pool: no Linear layer whose input features the overview could show
    expected = {"overview_explorer": "the model has no final Linear layer whose input features to show"} \
        if name == "squeezenet1_0" else {}
    expected["amplitude_spectrum"] = "only MACO needs it: feature_vis.param is not maco and feature_vis.compare lists no maco"
    no_checkpoints = "the spec names no model.checkpoints (give 2 or more checkpoints of the model to compare them)"
    expected |= {"evolution": no_checkpoints, "evolution_layers": no_checkpoints}
    classes, outputs = len(report["dataset"]["classes"]), report["model"]["num_classes"]
    if outputs != classes:   # an ImageNet or CIFAR head over the zoo's few folders: no accuracy, said why
        expected["accuracy"] = f"the model's {outputs} outputs are not the dataset's {classes} classes: no accuracy to state"
    assert absent == expected, absent
    allowed = {"circuits"} if name in NO_CIRCUIT else set()
    assert set(entry["absent"]) <= allowed, entry["absent"]
    h, w = (size, size)
    for f in entry["filters"]:
        assert len(f["top_patches"]) == len(f["top_images"]) > 0
        for p in f["top_patches"]:
            x0, y0, x1, y1 = p["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h, p["box"]
            assert (tmp_path / "site" / p["patch"]).is_file()
        assert f["guided_backprop"] and f["feature_vis"]["image"]
        if name not in NO_CIRCUIT:     # the terms, through the activation, give the unit's value
            c = f["circuits"]
            assert c["terms"] and c["check"] is not None and c["check"] <= 1e-3 * max(1.0, f["top_images"][0]["score"])
    assert report["attribution"]["records"] and report["class_models"]
    assert not any(l.startswith("warning") for l in lines), lines
