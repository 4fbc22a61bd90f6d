"""Circuits of modern blocks, on a model whose circuits can be written by hand (tests/helpers/block_models.py):
the terms of each unit, their shares of the pre-activation and the input channels of each conv term, in the
report of a real build on Fashion-MNIST, against values read from the model with forward hooks and ranks
computed from its weights."""

import json

import numpy as np
import pytest
import torch

from reportgen.pipeline import build
from reportgen.data import load_idx_split
from reportgen.spec import load_spec
from tests.helpers.block_models import blocks
from tests.helpers.tiny import FASHION_DIR

SPEC = f"""
seed: 2
model:
  factory: tests.helpers.block_models:blocks
  mean: [0.5]
  std: [0.25]
  input_size: 28
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: 120
  samples: 2
layers:
  - name: res
    filters: [0, 3]
  - name: proj
    filters: [1]
  - name: cat
    filters: [1, 8]
  - name: mix
    filters: [0]
  - name: dw
    filters: [5]
  - name: grouped
    filters: [6]
record: {{top_k: 5}}
feature_vis: {{enabled: false}}
attribution: {{enabled: false}}
embedding: {{max_points: 50}}
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blocks")
    (tmp / "spec.yaml").write_text(SPEC)
    out = build(load_spec(tmp / "spec.yaml"), progress=False, log=lambda *_: None)
    report = json.loads((out / "report.json").read_text())
    return out, {l["name"]: {f["index"]: f for f in l["filters"]} for l in report["layers"]}


def hooked(modules: list[str], f: dict) -> dict[str, np.ndarray]:
    """Each module's output at the filter's top images, at each image's position: {module: (k, C)}."""
    images, _ = load_idx_split(FASHION_DIR, "test")
    tops = f["top_images"]
    x = (torch.from_numpy(images[[t["dataset_index"] for t in tops]]).float().unsqueeze(1) / 255 - 0.5) / 0.25
    model, got = blocks(), {}
    named = dict(model.named_modules())
    handles = [named[m].register_forward_hook(lambda mod, i, o, m=m: got.update({m: o.detach().clone()}))
               for m in modules]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return {m: np.stack([v[i, :, y, xx].numpy() for i, (y, xx) in enumerate(t["location"] for t in tops)])
            for m, v in got.items()}


def shares_by_hand(terms: list[np.ndarray], unit: np.ndarray, relu: bool = True) -> list[float]:
    pre = sum(terms)
    np.testing.assert_allclose(np.maximum(pre, 0) if relu else pre, unit, atol=1e-5)   # the terms are all of it
    return [float(t.sum() / pre.sum()) for t in terms]


def test_identity_skip(site):
    _, layers = site
    for ch, f in layers["res"].items():
        c = f["circuits"]
        assert c["kind"] == "sum" and c["label"] == "res.conv2 → bn2 (folded) + skip from stem → relu (res.relu)"
        assert [(t["kind"], t["skip"], t["channel"]) for t in c["terms"]] == [("conv", False, ch), ("layer", True, ch)]
        v = hooked(["res.bn2", "stem", "res"], f)
        want = shares_by_hand([v["res.bn2"][:, ch], v["stem"][:, ch]], v["res"][:, ch])
        assert [t["share"] for t in c["terms"]] == pytest.approx(want, rel=1e-3, abs=1e-4)
        assert c["check"] <= 1e-4 and c["bias"] == 0
        assert c["terms"][1]["source"]["layer"] == "stem" and c["terms"][1]["conv"] is None
        # the branch's input channels: conv2's kernels with bn2 folded, ranked by L2
        model = blocks()
        bn = model.res.bn2
        w = (model.res.conv2.weight[ch] * bn.weight[ch] / torch.sqrt(bn.running_var[ch] + bn.eps)).detach().numpy()
        l2 = np.sqrt((w ** 2).sum((1, 2)))
        listed = c["terms"][0]["conv"]["channels"]
        assert [x["channel"] for x in listed] == np.argsort(-l2, kind="stable")[:8].tolist()
        assert [x["l2"] for x in listed] == pytest.approx(np.sort(l2)[::-1][:8], rel=1e-4)


def test_projection_skip(site):
    _, layers = site
    c = layers["proj"][1]["circuits"]
    assert [(t["label"], t["skip"]) for t in c["terms"]] == [
        ("proj.conv2 → bn2 (folded)", False), ("skip through proj.down.0 → proj.down.1 (folded)", True)]
    v = hooked(["proj.bn2", "proj.down", "proj"], layers["proj"][1])
    want = shares_by_hand([v["proj.bn2"][:, 1], v["proj.down"][:, 1]], v["proj"][:, 1])
    assert [t["share"] for t in c["terms"]] == pytest.approx(want, rel=1e-3, abs=1e-4)
    # the projection's kernels: 1×1, BN folded, over the block input's 8 channels
    model = blocks()
    bn = model.proj.down[1]
    w = (model.proj.down[0].weight[1, :, 0, 0] * bn.weight[1] / torch.sqrt(bn.running_var[1] + bn.eps)).detach()
    listed = c["terms"][1]["conv"]["channels"]
    assert [x["channel"] for x in listed] == np.argsort(-w.abs().numpy(), kind="stable").tolist()
    assert [x["kernel"][0][0] for x in listed] == pytest.approx(w.numpy()[[x["channel"] for x in listed]], abs=1e-6)


def test_concatenation_maps_a_channel_to_its_branch(site):
    _, layers = site
    for ch, branch, inner in ((1, "a", 1), (8, "b", 2)):
        c = layers["cat"][ch]["circuits"]
        assert c["selected"] == [f"branch {'ab'.index(branch) + 1} of 2 (cat.{branch}), channel {inner}"]
        (term,) = c["terms"]
        assert (term["kind"], term["channel"], term["label"]) == ("conv", inner, f"cat.{branch}.0 → cat.{branch}.1 (folded)")
        assert c["activation"] == f"relu (cat.{branch}.2)" and term["share"] + (c["bias_share"] or 0) == pytest.approx(1)
        v = hooked([f"cat.{branch}.1", "cat"], layers["cat"][ch])
        np.testing.assert_allclose(np.maximum(v[f"cat.{branch}.1"][:, inner], 0), v["cat"][:, ch], atol=1e-6)
        assert c["check"] <= 1e-4


def test_a_conv_reading_a_concatenation_groups_its_inputs_by_branch(site):
    _, layers = site
    conv = layers["mix"][0]["circuits"]["terms"][0]["conv"]
    w = blocks().mix[0].weight[0].detach().numpy()
    l2 = np.sqrt((w ** 2).sum((1, 2)))
    assert [(b["layer"], b["first"], b["channels"]) for b in conv["branches"]] == [("cat.a", 0, 6), ("cat.b", 6, 6)]
    assert [b["l2_share"] for b in conv["branches"]] == pytest.approx(
        [l2[:6].sum() / l2.sum(), l2[6:].sum() / l2.sum()], abs=1e-4)
    assert sum(b["shown"] for b in conv["branches"]) == len(conv["channels"]) == 10
    for x in conv["channels"]:
        assert x["sources"][0]["layer"].startswith("cat.a." if x["channel"] < 6 else "cat.b.")


def test_a_depthwise_filter_goes_through_to_the_pointwise_conv(site):
    _, layers = site
    (term,) = layers["dw"][5]["circuits"]["terms"]
    assert term["conv"]["conv"] == "dw.dw" and [x["channel"] for x in term["conv"]["channels"]] == [5]
    hop = term["through"]
    assert (hop["layer"], hop["channel"]) == ("dw.act", 5)
    assert hop["label"] == "dw.pw → pw_bn (folded) → relu6 (dw.act)"
    model = blocks()
    bn = model.dw.pw_bn
    w = (model.dw.pw.weight[5, :, 0, 0] * bn.weight[5] / torch.sqrt(bn.running_var[5] + bn.eps)).detach().numpy()
    listed = hop["conv"]["channels"]
    assert [x["channel"] for x in listed] == np.argsort(-np.abs(w), kind="stable").tolist()
    assert [x["l2"] for x in listed] == pytest.approx(np.abs(w)[[x["channel"] for x in listed]], rel=1e-4)
    assert all(x["contribution"] is None for x in listed)


def test_a_grouped_filter_lists_only_its_group(site):
    _, layers = site
    conv = layers["grouped"][6]["circuits"]["terms"][0]["conv"]
    assert (conv["groups"], conv["group"], conv["group_channels"], conv["in_channels"]) == (2, 1, [8, 15], 8)
    w = blocks().grouped[0].weight[6].detach().numpy()          # (8, 3, 3): input channels 8..15
    l2 = np.sqrt((w ** 2).sum((1, 2)))
    assert [x["channel"] for x in conv["channels"]] == (8 + np.argsort(-l2, kind="stable")).tolist()


def test_the_filter_page_shows_terms_branches_and_hops(site):
    out, layers = site
    page = (out / layers["res"][0]["page"]).read_text()
    assert "skip from stem" in page and "Share" in page and "res.conv2 → bn2 (folded)" in page
    page = (out / layers["mix"][0]["page"]).read_text()
    assert "by branch of the concatenation" in page and "cat.b" in page
    page = (out / layers["dw"][5]["page"]).read_text()
    assert "Through to the unit that makes its one input channel" in page and "dw.pw" in page
    page = (out / layers["grouped"][6]["page"]).read_text()
    assert "group 1 of 2, input channels 8–15" in page


def test_expanded_weights_in_the_report(tmp_path):
    """circuit.expand_through: the identity block's unit read on the stem's output through its whole branch
    (ReLU crossed as the identity, said so) equals the composition of its kernels, computed here by hand."""
    spec = SPEC.replace("record: {top_k: 5}", "record: {top_k: 5}\ncircuit: {expand_through: activations, "
                                              "expand_from: stem, top_n: 8}")
    spec = spec.replace("  - name: proj\n    filters: [1]\n", "").replace("  - name: cat\n    filters: [1, 8]\n", "")
    (tmp_path / "spec.yaml").write_text(spec)
    out = build(load_spec(tmp_path / "spec.yaml"), progress=False, log=lambda *_: None)
    report = json.loads((out / "report.json").read_text())
    res = next(l for l in report["layers"] if l["name"] == "res")
    model = blocks()

    def folded(conv, bn):
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return (conv.weight * a[:, None, None, None]).detach().double()

    w1, w2 = folded(model.res.conv1, model.res.bn1), folded(model.res.conv2, model.res.bn2)
    for f in res["filters"]:
        (e,) = f["circuits"]["expanded"]
        assert e["source"] == "stem" and e["crossed"] == ["ReLU 'res.relu'"] and e["activation"] == "ReLU 'res.relu'"
        # by hand: conv2 ∘ conv1 is a 5×5 kernel (the full convolution of the two 3×3 kernels), plus the skip's
        # delta at the centre of channel f
        want = torch.zeros(8, 5, 5, dtype=torch.float64)
        for m in range(8):                               # conv1's output channel
            for dy in range(3):
                for dx in range(3):
                    want[:, dy:dy + 3, dx:dx + 3] += w2[f["index"], m, dy, dx] * w1[m]
        want[f["index"], 2, 2] += 1
        assert e["kernel_size"] == [5, 5]
        for ch in e["channels"]:
            np.testing.assert_allclose(ch["kernel"], want[ch["channel"]].numpy(), atol=1e-5)
        l2 = want.reshape(8, -1).norm(dim=1).numpy()
        assert [ch["channel"] for ch in e["channels"]] == np.argsort(-l2, kind="stable").tolist()
    page = (out / res["filters"][0]["page"]).read_text()
    assert "Expanded weights on <code>stem</code>" in page and "An approximation" in page


def test_the_issue_case_a_released_cifar_resnet20_gets_every_circuit(tmp_path):
    """The case the issue was filed on: a CIFAR-10 ResNet-20 checkpoint as the popular release ships it
    (legacy format, DataParallel keys) with spec layers layer1, layer2, layer3 (16 units): every unit has a
    circuit whose terms recompute it and top patches; layer2's first block reads an option-A (pad) shortcut."""
    from torch import nn

    from tests.helpers.cifar_resnet import resnet20
    from tests.helpers.tiny import write_cifar10
    from tests.test_checkpoints import trained

    net = trained(resnet20)
    state = {k: v for k, v in nn.DataParallel(net).state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"best_prec1": 91.78, "state_dict": state}, tmp_path / "resnet20.th",
               _use_new_zipfile_serialization=False)
    write_cifar10(tmp_path / "cifar", n=60)
    (tmp_path / "spec.yaml").write_text(f"""
model:
  factory: tests.helpers.cifar_resnet:resnet20
  checkpoint: resnet20.th
  mean: [0.4914, 0.4822, 0.4465]
  std: [0.247, 0.243, 0.261]
  input_size: 32
dataset: {{format: cifar10, root: cifar, samples: 2}}
layers:
  - {{name: layer1, filters: 0-5}}
  - {{name: layer2, filters: 0-4}}
  - {{name: layer3, filters: 0-4}}
  - {{name: layer2.0, filters: [0, 20]}}
record: {{top_k: 4}}
feature_vis: {{enabled: false}}
attribution: {{enabled: false}}
embedding: {{max_points: 50}}
""")
    out = build(load_spec(tmp_path / "spec.yaml"), progress=False, log=lambda *_: None)
    report = json.loads((out / "report.json").read_text())
    units = [(l["name"], f) for l in report["layers"] for f in l["filters"] if l["name"] != "layer2.0"]
    assert len(units) == 16
    for f in report["layers"][-1]["filters"]:      # the first block of a stage: a strided slice, zero-padded
        c = f["circuits"]
        assert c["label"] == "layer2.0.conv2 → bn2 (folded) + skip from layer2.0.shortcut → relu" and c["check"] <= 1e-4
        assert [t["skip"] for t in c["terms"]] == [False, True]
    for name, f in units:
        c = f["circuits"]
        assert c and c["kind"] == "sum" and c["check"] <= 1e-4, (name, f["index"], c)
        assert [t["skip"] for t in c["terms"]] == [False, True]
        assert c["label"].startswith(f"{name}.2.conv2 → bn2 (folded) + skip from {name}.1")
        assert len(f["top_patches"]) == len(f["top_images"]) == 4
