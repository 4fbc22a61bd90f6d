"""Checkpoint evolution: linear CKA against the paper's HSIC formula written here with centering matrices, unit
matching on a model whose channels were permuted by hand (the permuted copy saved as an earlier checkpoint),
accuracy and loss against the checkpoints run in the test, one cached pass per checkpoint, the `model.checkpoints`
spec (glob, natural sort), and a build through the real CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from reportgen.analyses.evolution import best_matches, cka_matrix, linear_cka
from reportgen.checkpoints import checkpoint_passes
from reportgen.cli import main
from reportgen.errors import SpecError
from reportgen.evidence import gather_evidence
from reportgen.pipeline import prepare
from reportgen.idx import load_idx_split
from reportgen.spec import load_spec
from tests.helpers.tiny import FASHION_DIR, TinyCNN, tiny_cnn

LAYER = "features.r2"          # 6 channels, after c2: permuting c2's outputs and c3's inputs keeps the function
PERM = np.array([3, 0, 5, 1, 2, 4])   # the permuted model's unit j is the original's unit PERM[j]


# ---- CKA against an independent implementation ----

def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. 2019, eq. 3-4: HSIC(K, L) = tr(K H L H) / (n-1)^2 with H = I - 11^T/n, K = X X^T, L = Y Y^T;
    CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_cka_equals_the_hsic_formula_on_random_features():
    rng = np.random.default_rng(0)
    for p, q in [(5, 7), (12, 3), (20, 20)]:
        x = rng.normal(size=(60, p)) + rng.normal(size=p)        # uncentred on purpose
        y = x[:, :min(p, q)] @ rng.normal(size=(min(p, q), q)) + 0.5 * rng.normal(size=(60, q))
        assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y), rel=1e-10)
        z = rng.normal(size=(60, q))
        assert linear_cka(x, z) == pytest.approx(hsic_cka(x, z), rel=1e-10)
        assert linear_cka(x, z) < linear_cka(x, y)               # related features are more similar


def test_cka_is_one_with_itself_and_invariant_to_rotations_and_isotropic_scaling():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(50, 8)), rng.normal(size=(50, 6))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x @ q, y) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert linear_cka(3.7 * x, 0.01 * y) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert linear_cka(x, x @ q * 2.5) == pytest.approx(1.0, abs=1e-10)
    # not invariant to an anisotropic scaling: the test above can fail
    assert abs(linear_cka(x * np.arange(1, 9) ** 2, y) - linear_cka(x, y)) > 1e-3
    m = cka_matrix([x, y, x @ q])
    assert np.allclose(m, m.T) and np.allclose(np.diag(m), 1) and m[0, 2] == pytest.approx(1.0)


# ---- checkpoints written by the test ----

def permuted(model: TinyCNN) -> TinyCNN:
    """The same function with c2's output channels (and c3's input channels) in PERM's order."""
    out = TinyCNN()
    out.load_state_dict(model.state_dict())
    with torch.no_grad():
        out.features.c2.weight.copy_(model.features.c2.weight[PERM])
        out.features.c2.bias.copy_(model.features.c2.bias[PERM])
        out.features.c3.weight.copy_(model.features.c3.weight[:, PERM])
    return out


def other_model() -> TinyCNN:
    torch.manual_seed(5)
    return TinyCNN()


SPEC = f"""
title: evolution
seed: 0
model:
  factory: tests.helpers.tiny:tiny_cnn
  mean: [0.5]
  std: [0.25]
  input_size: 28
  checkpoints: {{checkpoints}}
dataset:
  format: fashion-mnist
  root: {FASHION_DIR}
  limit: 300
  samples: 1
layers:
  - name: {LAYER}
    filters: 0-5
    embedding: none
feature_vis: {{{{steps: 8, classes: []}}}}
circuit: {{{{enabled: false}}}}
attribution: {{{{enabled: false}}}}
concepts: {{{{enabled: false}}}}
unit_labels: {{{{enabled: false}}}}
"""
ENTRIES = {"early": "a.pt", "mid": "b.pt", "final": "c.pt"}


def write_spec(folder: Path, names: list[str]) -> Path:
    items = ", ".join(f"{{name: {n}, path: {ENTRIES[n]}}}" for n in names)
    (folder / "spec.yaml").write_text(SPEC.format(checkpoints=f"[{items}]"))
    return folder / "spec.yaml"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evolution")
    final = tiny_cnn()
    torch.save(permuted(final).state_dict(), tmp / "a.pt")
    torch.save(other_model().state_dict(), tmp / "b.pt")
    torch.save(final.state_dict(), tmp / "c.pt")
    return tmp


@pytest.fixture(scope="module")
def built(folder):
    spec = write_spec(folder, ["early", "mid", "final"])
    assert main(["build", "-q", str(spec), "--out", str(folder / "site")]) == 0
    return folder / "site", json.loads((folder / "site" / "report.json").read_text())


def test_unit_matching_recovers_a_permutation_of_the_channels(built):
    _, report = built
    layer = next(l for l in report["layers"] if l["path"] == LAYER)
    inverse = np.argsort(PERM)       # the original's unit f is the permuted model's unit inverse[f]
    for f in layer["filters"]:
        early, mid, final = f["evolution_layers"]["strip"]
        assert early["checkpoint"] == "early" and final["checkpoint"] == "final"
        assert early["unit"] == inverse[f["index"]] and early["r"] == pytest.approx(1.0, abs=1e-4)
        assert early["drifted"] == (inverse[f["index"]] != f["index"])
        assert final["unit"] == f["index"] and not final["drifted"]
        assert [t["image"] for t in final["top_images"]] == [t["image"] for t in f["top_images"]]
        # the permuted unit sees the same images, so it has the final filter's top images
        assert [t["dataset_index"] for t in early["top_images"]] == [t["dataset_index"] for t in f["top_images"]]
        assert early["image"] and early["steps"] == 16 and final["image"] == f["feature_vis"]["image"]
    part = layer["evolution_layers"]
    assert part["checkpoints"] == ["early", "mid", "final"]
    assert part["cka"][0][2] == pytest.approx(1.0, abs=1e-4)        # a permutation is an orthogonal map
    assert part["cka"][1][2] < 0.999 and part["to_final"] == [row[2] for row in part["cka"]]
    assert part["drifted"] == int((np.argsort(PERM) != np.arange(6)).sum()) == 6   # PERM moves every unit


def _by_hand(path: Path, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of a checkpoint, run here: log-softmax written out in numpy."""
    model = TinyCNN()
    model.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        logits = model((torch.from_numpy(images).float()[:, None] / 255 - 0.5) / 0.25).double().numpy()
    shifted = logits - logits.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return float((logits.argmax(1) == labels).mean()), float(-logp[np.arange(len(labels)), labels].mean())


def test_accuracy_and_loss_per_checkpoint_match_the_models_run_by_hand(built, folder):
    site, report = built
    part = report["evolution"]
    images, labels = load_idx_split(FASHION_DIR, "test")
    spec = load_spec(folder / "spec.yaml")
    ctx = prepare(spec, log=lambda *_: None, analyses=[])
    used = ctx.indices
    assert part["images"] == len(used) == 300
    for c in part["checkpoints"]:
        acc, loss = _by_hand(folder / ENTRIES[c["name"]], images[used], labels[used].astype(np.int64))
        assert c["accuracy"] == pytest.approx(acc, abs=1e-4) and c["loss"] == pytest.approx(loss, rel=1e-3)
    early, _, final = part["checkpoints"]
    assert early["loss"] == pytest.approx(final["loss"], rel=1e-4)    # the permuted model is the same function
    page = (site / "evolution.html").read_text()
    assert "Linear CKA" in page and "early" in page and "Kornblith" in page
    assert any(p["page"] == "evolution.html" for p in report["pages"])
    filter_page = (site / report["layers"][0]["filters"][0]["page"]).read_text()
    assert "Across checkpoints" in filter_page and "evo-strip" in filter_page


def test_adding_a_checkpoint_records_only_its_pass(tmp_path, folder):
    for name in ENTRIES.values():
        (tmp_path / name).write_bytes((folder / name).read_bytes())

    def recorded(names):
        ctx = prepare(load_spec(write_spec(tmp_path, names)), log=lambda *_: None, analyses=[])
        ctx.progress = False
        gather_evidence(ctx)
        passes = checkpoint_passes(ctx)
        assert [p.name for p in passes] == names and passes[-1].evidence is ctx.evidence
        assert len({p.sha256 for p in passes}) == len(names)
        return [c for c in ctx.computed if c.startswith("record")]
    assert recorded(["early", "final"]) == ["record", "record:early"]      # cold: both passes
    assert recorded(["early", "mid", "final"]) == ["record:mid"]           # only the new checkpoint's
    assert recorded(["early", "mid", "final"]) == []                       # all cached
    # a checkpoint's pass is its own: the permuted model's pooled features are the final's, permuted
    ctx = prepare(load_spec(tmp_path / "spec.yaml"), log=lambda *_: None, analyses=[])
    ctx.progress = False
    gather_evidence(ctx)
    early, _, final = checkpoint_passes(ctx)
    _, a = early.evidence.layers[LAYER].pooled_array()
    _, c = final.evidence.layers[LAYER].pooled_array()
    np.testing.assert_allclose(a, c[:, PERM], rtol=1e-5, atol=1e-6)
    best, r = best_matches(c, a)
    assert list(best) == list(np.argsort(PERM)) and np.allclose(r, 1, atol=1e-5)


def test_a_glob_is_sorted_naturally_and_its_last_file_is_the_model(tmp_path):
    for n in (10, 2, 1):
        torch.save(tiny_cnn().state_dict(), tmp_path / f"epoch{n}.pt")
    (tmp_path / "spec.yaml").write_text(SPEC.format(checkpoints="'epoch*.pt'"))
    spec = load_spec(tmp_path / "spec.yaml")
    assert [e.name for e in spec.model.checkpoints] == ["epoch1", "epoch2", "epoch10"]
    assert spec.model.checkpoint == tmp_path / "epoch10.pt"


def test_a_checkpoint_of_another_architecture_is_named(tmp_path, folder):
    (tmp_path / "a.pt").write_bytes((folder / "c.pt").read_bytes())
    wrong = nn.Sequential(nn.Conv2d(1, 4, 3))
    torch.save(wrong.state_dict(), tmp_path / "b.pt")
    (tmp_path / "c.pt").write_bytes((folder / "c.pt").read_bytes())
    with pytest.raises(SpecError) as info:
        prepare(load_spec(write_spec(tmp_path, ["early", "mid", "final"])), log=lambda *_: None, analyses=[])
    assert info.value.key == "model.checkpoints[1]" and "does not fit" in info.value.message


def test_without_checkpoints_the_evolution_is_absent_with_its_reason(tmp_path):
    spec = SPEC.replace("  checkpoints: {checkpoints}\n", "").replace("{{", "{").replace("}}", "}")
    (tmp_path / "spec.yaml").write_text(spec)
    assert main(["build", "-q", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "site")]) == 0
    report = json.loads((tmp_path / "site" / "report.json").read_text())
    absent = {a["name"]: a["absent"] for a in report["analyses"]}
    assert "model.checkpoints" in absent["evolution"] and "model.checkpoints" in absent["evolution_layers"]
    assert not (tmp_path / "site" / "evolution.html").exists()
