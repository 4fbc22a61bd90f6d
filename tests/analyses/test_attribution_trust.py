"""Deletion and insertion curves of the attribution maps (attribution_trust), on a model whose decision is planted
in one image region: the maps that find the region beat a random order, the randomized model's maps do not, and
every saved score is recomputed here from the site's NPZ and the dataset's images with numpy, scipy and the model.
"""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from reportgen.analyses.attribution import randomized_copy, saliency
from reportgen.analyses.attribution.deletion import area, blurred, pixel_order, step_counts
from reportgen.analyses.attribution_trust import MARGIN, AttributionTrust, blur_sigma, curves, orders, verdict
from reportgen.pipeline import build
from reportgen.errors import SpecError
from reportgen.spec import load_spec
from tests.helpers.tiny import write_mnist

PATCH = (slice(8, 16), slice(8, 16))   # rows, columns: the only pixels class 1's logit reads (and a 1 px rim)
SEED = 3
MEAN, STD = 0.5, 0.25


class Planted(nn.Module):
    """1×28×28 → 2 logits. A 3×3 high-pass filter (centre 1, neighbours -1/8: the blurred canvas barely drives it)
    and ReLU everywhere, then a Linear over all positions whose weights are 20/64 on the 8×8 PATCH and 0 elsewhere
    for class 1 (bias -4), 0 for class 0. On the noise images class 1 wins (logit 3 to 9); the decision lives in
    the weights, not the architecture, so the randomized copy reads the whole image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(28 * 28, 2)
        with torch.no_grad():
            self.conv.weight.fill_(-1 / 8)
            self.conv.weight[0, 0, 1, 1] = 1
            self.conv.bias.zero_()
            w = torch.zeros(2, 28, 28)
            w[1][PATCH] = 20 / 64
            self.fc.weight.copy_(w.flatten(1))
            self.fc.bias.copy_(torch.tensor([0.0, -4.0]))

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).flatten(1))


def planted() -> Planted:
    return Planted().eval()


SPEC = """
title: planted
seed: {seed}
model: {{factory: tests.analyses.test_attribution_trust:planted, mean: [{mean}], std: [{std}], input_size: 28,
         classes: [other, patch]}}
dataset: {{format: mnist, root: data, limit: 40, samples: 2}}
layers: [{{name: conv, filters: [0], embedding: none}}]
feature_vis: {{enabled: false}}
circuit: {{enabled: false}}
attribution: {{images: 4, methods: [occlusion, saliency, gradcam], trust: {trust}}}
"""


def write_spec(folder, trust="{steps: 16, random_orders: 3}"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(SPEC.format(seed=SEED, mean=MEAN, std=STD, trust=trust))
    return folder / "spec.yaml"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(site folder, report.json, the dataset's images) of the planted model, built once."""
    folder = tmp_path_factory.mktemp("planted")
    images, _ = write_mnist(folder / "data", n=40, seed=1)
    assert np.array_equal(images, noise_images())
    out = build(load_spec(write_spec(folder)), out=folder / "site", progress=False, log=lambda *_: None)
    return out, json.loads((out / "report.json").read_text()), images


def noise_images() -> np.ndarray:
    """(40, 28, 28) uint8: the images `write_mnist(…, n=40, seed=1)` writes, without writing them."""
    return np.random.default_rng(1).integers(0, 256, (40, 28, 28), dtype=np.uint8)


def normalized(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float64) / 255 - MEAN) / STD


# ---------------------------------------------------------------- the planted decision


def test_saliency_finds_the_planted_region_faster_than_random(site):
    _, report, _ = site
    records = [r for r in report["attribution_trust"]["records"] if r["method"] == "saliency"]
    assert len(records) == 4
    for r in records:
        assert r["deletion_auc"] < r["random_deletion_auc"] - MARGIN, r
        assert r["insertion_auc"] > r["random_insertion_auc"] + MARGIN, r
        assert r["tracks_evidence"] and r["depends_on_weights"] and r["passes"], r
    summary = {s["method"]: s for s in report["attribution_trust"]["summary"]}
    assert summary["saliency"]["trusted"] and summary["saliency"]["passing"] == 1
    assert summary["occlusion"]["trusted"]    # occlusion's windows find the patch too


def test_the_randomized_models_maps_fail_the_check():
    """Saliency of the weight-randomized copy, scored on the planted model: no better than a random order."""
    model = planted()
    x = torch.from_numpy(normalized(noise_images()[:4])[:, None]).float()
    target = torch.ones(4, dtype=torch.long)
    maps = saliency(randomized_copy(model, SEED), x, target)
    sigma = blur_sigma((28, 28))
    counts = step_counts(28 * 28, 16)
    for n in range(4):
        tiebreak, randoms = orders(SEED, n, 28 * 28, 3)
        canvas = blurred(x[n:n + 1], sigma)[0]
        mine = curves(model, x[n], canvas, pixel_order(maps[n], tiebreak), counts)[:, :, 1]
        rnd = np.mean([curves(model, x[n], canvas, o, counts) for o in randoms], 0)[:, :, 1]
        got = verdict(area(counts, mine[0]), area(counts, mine[1]), area(counts, rnd[0]), area(counts, rnd[1]), 0.1)
        assert not got["tracks_evidence"] and not got["passes"], got


def test_the_sanity_check_fails_a_map_that_ignores_the_weights():
    assert verdict(0.1, 0.9, 0.5, 0.5, 0.2) == {"tracks_evidence": True, "depends_on_weights": True, "passes": True}
    assert verdict(0.1, 0.9, 0.5, 0.5, 0.8) == {"tracks_evidence": True, "depends_on_weights": False, "passes": False}
    assert verdict(0.1, 0.9, 0.5, 0.5, None) == {"tracks_evidence": True, "depends_on_weights": None, "passes": True}
    assert verdict(0.47, 0.9, 0.5, 0.5, 0.2)["tracks_evidence"] is False      # deletion within the margin
    assert verdict(0.1, 0.53, 0.5, 0.5, 0.2)["tracks_evidence"] is False      # insertion within the margin


def test_saliency_of_the_trained_model_depends_on_its_weights(site):
    _, report, _ = site
    sims = [r["randomized_similarity"] for r in report["attribution"]["records"] if r["method"] == "saliency"]
    assert all(s is not None and s < 0.5 for s in sims), sims


# ---------------------------------------------------------------- an independent recomputation


def numpy_order(values: np.ndarray, seed: int, index: int, random_orders: int):
    """The documented orders, rebuilt: tie-break permutation, then the random ones, from default_rng((seed, i))."""
    rng = np.random.default_rng((seed, index))
    tiebreak = rng.permutation(values.size)
    randoms = [rng.permutation(values.size) for _ in range(random_orders)]
    keyed = sorted(range(values.size), key=lambda p: (-float(values.ravel()[p]), tiebreak[p]))
    return np.array(keyed), randoms


def numpy_curves(model, image: np.ndarray, order: np.ndarray, steps: int, target: int):
    """(deletion, insertion) probabilities: pixels of `order` taken from the image blurred by scipy (mirror
    borders, radius 2σ), or put back into it."""
    x = normalized(image)
    canvas = gaussian_filter(x, 28 / 16, mode="mirror", truncate=2.0)
    rows = []
    for start, end in ((x, canvas), (canvas, x)):
        for k in range(steps + 1):
            img = start.copy().ravel()
            take = order[:k * x.size // steps]
            img[take] = end.ravel()[take]
            rows.append(img.reshape(28, 28))
    with torch.no_grad():
        probs = model(torch.tensor(np.stack(rows)[:, None], dtype=torch.float32)).softmax(1)[:, target].double()
    return probs.numpy().reshape(2, steps + 1)


def test_scores_agree_with_a_recomputation_from_the_saved_maps(site):
    out, report, images = site
    t = report["attribution_trust"]
    saved = np.load(out / report["attribution"]["npz"])
    model = planted()
    fractions = np.array(t["fractions"])
    assert np.allclose(fractions, np.arange(17) * 784 // 16 / 784, atol=1e-4)
    assert len(t["records"]) == len(report["attribution"]["records"]) == 4 * 3
    for a, r in zip(report["attribution"]["records"], t["records"]):
        assert (a["dataset_index"], a["method"], a["target"]) == (r["dataset_index"], r["method"], r["target"])
        i = r["dataset_index"]
        order, randoms = numpy_order(saved[a["array"]], SEED, i, 3)
        mine = numpy_curves(model, images[i], order, 16, r["target"])
        rnd = np.mean([numpy_curves(model, images[i], o, 16, r["target"]) for o in randoms], 0)
        aucs = [np.trapezoid(c, fractions) for c in (*mine, *rnd)]
        np.testing.assert_allclose([r["deletion"], r["insertion"]], mine, rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose([r["deletion_auc"], r["insertion_auc"], r["random_deletion_auc"],
                                    r["random_insertion_auc"]], aucs, rtol=1e-3)
        shown = next(c for c in t["random"] if (c["dataset_index"], c["target_kind"]) == (i, r["target_kind"]))
        np.testing.assert_allclose([shown["deletion"], shown["insertion"]], rnd, rtol=1e-3, atol=1e-6)
        assert r["passes"] == verdict(*aucs, r["randomized_similarity"])["passes"]


def test_curves_are_seeded_and_the_blur_matches_scipy():
    x = torch.from_numpy(normalized(noise_images()[:1])[:, None]).float()
    canvas = blurred(x, blur_sigma((28, 28)))[0, 0].numpy()
    np.testing.assert_allclose(canvas, gaussian_filter(x[0, 0].double().numpy(), 28 / 16, mode="mirror",
                                                       truncate=2.0), atol=1e-5)
    a, b = orders(0, 5, 784, 2), orders(0, 5, 784, 2)
    assert all(np.array_equal(p, q) for p, q in zip([a[0], *a[1]], [b[0], *b[1]]))
    assert not np.array_equal(orders(1, 5, 784, 2)[0], a[0])


# ---------------------------------------------------------------- the spec


@pytest.mark.parametrize("trust, message", [
    ("{steps: 1}", "attribution.trust.steps: Input should be greater than or equal to 2"),
    ("{steps: 300}", "attribution.trust.steps: Input should be less than or equal to 256"),
    ("{random_orders: 0}", "attribution.trust.random_orders: Input should be greater than or equal to 1"),
    ("{step: 8}", "attribution.trust.step: unknown key; check its spelling against the README's spec reference"),
    ("maybe", "attribution.trust: 'maybe': give true, false or a mapping like "
              "{steps: 16, random_orders: 3}"),
])
def test_spec_errors_name_the_key(tmp_path, trust, message):
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, trust))
    assert str(err.value) == message


def test_false_turns_it_off_and_the_report_says_which_key(tmp_path):
    spec = load_spec(write_spec(tmp_path, "false"))
    assert spec.attribution.trust.enabled is False and spec.attribution.trust.steps == 16
    ctx = SimpleNamespace(spec=spec)
    assert AttributionTrust().turned_off(ctx) == "turned off in the spec (attribution.trust.enabled: false)"
    spec.attribution.enabled = False
    assert AttributionTrust().turned_off(ctx) == "turned off in the spec (attribution.enabled: false)"
    assert not AttributionTrust().enabled(ctx)


# ---------------------------------------------------------------- the page


@pytest.mark.browser
def test_the_attribution_page_shows_the_summary_table(site, browser):
    from tests.browser.crawler import AXE_RUN_JS
    from tests.browser.conftest import AXE_PATH

    out, report, _ = site
    page = browser.new_page()
    try:
        page.goto((out / "attribution.html").as_uri())
        rows = page.locator("table.trust-summary tbody tr")
        assert rows.count() == 3
        assert [rows.nth(n).locator("th").inner_text() for n in range(3)] == ["Occlusion", "Saliency", "Grad-CAM"]
        verdicts = {s["method"]: s["trusted"] for s in report["attribution_trust"]["summary"]}
        assert rows.nth(1).locator("td").last.inner_text() == ("tracks the evidence" if verdicts["saliency"]
                                                                else "does not")
        curves_shown = page.locator("table.trust-curves svg.auc polyline")
        assert curves_shown.count() == 2 * 2 * 12
        assert all(len(p.split()) == 17 for p in curves_shown.evaluate_all("els => els.map(e => e.getAttribute('points'))"))
        box = page.locator("svg.auc").first.bounding_box()
        assert box["width"] > 50 and box["height"] > 20
        if AXE_PATH.is_file():
            page.add_script_tag(path=str(AXE_PATH))
            assert page.evaluate(AXE_RUN_JS) == []
    finally:
        page.close()


@pytest.mark.slow
def test_the_attribution_page_is_valid_html(site):
    from tests.browser.test_html_valid import nu_check

    out, _, _ = site
    checked, found = nu_check([out / "attribution.html"])
    assert checked == {out / "attribution.html"} and not any(found.values()), found
