"""The explorer's checkpoint slider (issue 23): a site built with `model.checkpoints` maps the same images at every
checkpoint, and in real Chromium, from file://, moving the slider moves the plotted points to that checkpoint's
map, with its predictions, the tooltips still naming the right image, and no console error.

The checkpoints are three weights of the tiny test CNN: another seed's initialization, the halfway blend, and the
weights of the browser suite's own site (`built`), whose explorers must come out the same.
"""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial import procrustes as scipy_procrustes
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE, trustworthiness

from reportgen.pipeline import build
from reportgen.spec import load_spec
from tests.browser.conftest import SPEC
from tests.browser.explorer import hover_tooltip, locate_point, tooltip_index
from tests.helpers.tiny import FASHION_DIR, TinyCNN, tiny_cnn

pytestmark = pytest.mark.browser

NAMES = ["seed 1", "halfway", "final"]
LAYER = "block1_conv2"      # features.r2 of the tiny CNN; SPEC asks for both maps of it
CHECKPOINTS = "  checkpoints:\n" + "".join(f"    - {{name: {n}, path: c{i}.pt}}\n" for i, n in enumerate(NAMES))

# every plotted point of figure n: [position in the explorer's points, x, y, marker, x and y on the screen]
POINTS_JS = """(n) => {
  const v = [...Bokeh.index].filter(v => v.model.type === 'Figure')[n];
  const r0 = v.canvas_view.el.getBoundingClientRect();
  const out = [];
  for (const r of v.model.renderers) {
    const d = r.data_source.data;
    if (d.pos === undefined) continue;
    for (let i = 0; i < d.pos.length; i++) {
      out.push([d.pos[i], d.x[i], d.y[i], r.glyph.marker.value,
                r0.left + v.frame.x_scale.compute(d.x[i]), r0.top + v.frame.y_scale.compute(d.y[i])]);
    }
  }
  return out;
}"""


def _states() -> list[dict]:
    final = tiny_cnn().state_dict()
    torch.manual_seed(1)
    start = TinyCNN().state_dict()
    half = {k: (v + final[k]) / 2 if v.is_floating_point() else v for k, v in start.items()}
    return [start, half, final]


@pytest.fixture(scope="module")
def slider_site(tmp_path_factory) -> tuple[Path, list[dict]]:
    """(site, the checkpoints' state_dicts, oldest first) of SPEC with three checkpoints."""
    folder = tmp_path_factory.mktemp("slider")
    states = _states()
    for i, s in enumerate(states):
        torch.save(s, folder / f"c{i}.pt")
    spec = SPEC.replace("  input_size: 28\n", "  input_size: 28\n" + CHECKPOINTS)
    assert spec != SPEC
    (folder / "spec.yaml").write_text(spec)
    site = build(load_spec(folder / "spec.yaml"), out=folder / "site", progress=False, log=lambda *_: None)
    return site, states


def _explorers(site: Path, layer: str = LAYER) -> dict[str, dict]:
    report = json.loads((site / "report.json").read_text())
    part = next(lay for lay in report["layers"] if lay["name"] == layer)["explorer"]
    return {e["method"]: e for e in part["explorers"]}


def _images() -> tuple[np.ndarray, np.ndarray]:
    """The shipped Fashion-MNIST test split, read here: (N, 28, 28) uint8, (N,) labels."""
    raw = gzip.decompress((FASHION_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((FASHION_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28), np.frombuffer(labels, np.uint8, offset=8)


def _run(state: dict, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes, pooled features of features.r2) of the tiny CNN with `state` on dataset images `index`."""
    model = TinyCNN()
    model.load_state_dict(state)
    model.eval()
    x = (torch.from_numpy(_images()[0][index]).float()[:, None] / 255 - 0.5) / 0.25   # SPEC's mean and std
    seen = {}
    hook = model.features.r2.register_forward_hook(lambda _m, _i, out: seen.update(f=out.mean((2, 3))))
    with torch.no_grad():
        preds = model(x).argmax(1).numpy()
    hook.remove()
    return preds, seen["f"].numpy().astype(np.float64)


def test_every_checkpoint_maps_the_same_images_and_the_last_map_is_unchanged(slider_site, built):
    site, states = slider_site
    plain = _explorers(built[0])
    for method, e in _explorers(site).items():
        assert [c["name"] for c in e["checkpoints"]] == NAMES
        index = np.array([p[2] for p in e["points"]])
        final = np.array([p[:2] for p in e["points"]])
        # the last checkpoint's map is the map of the same build without checkpoints
        np.testing.assert_array_equal(final, [p[:2] for p in plain[method]["points"]])
        np.testing.assert_array_equal(np.array([p[:2] for p in e["checkpoints"][-1]["points"]]), final)
        frames = [np.array(c["points"]) for c in e["checkpoints"]]
        for k, (frame, state) in enumerate(zip(frames, states)):
            preds, feats = _run(state, index)
            # point i of every frame is image index[i]: its prediction is that checkpoint's, computed here
            np.testing.assert_array_equal(frame[:, 2], preds, err_msg=f"{method}, {NAMES[k]}")
            # and its place is a map of that checkpoint's features of that image (a shuffle scores ~0.5)
            trust = trustworthiness(feats, frame[:, :2], n_neighbors=10)
            assert trust == pytest.approx(e["checkpoints"][k]["trustworthiness"], abs=2e-3)
            assert trust > 0.9
        assert np.abs(frames[0][:, :2] - final).max() > 1e-2 * np.abs(final).max(), f"{method}: frames all alike"


def test_earlier_maps_are_aligned_to_the_later_ones(slider_site):
    site, states = slider_site
    e = _explorers(site)
    index = np.array([p[2] for p in e["pca"]["points"]])
    for k in range(len(NAMES) - 1):
        feats = _run(states[k], index)[1]
        later = np.array(e["pca"]["checkpoints"][k + 1]["points"])[:, :2]
        shown = np.array(e["pca"]["checkpoints"][k]["points"])[:, :2]
        # PCA: the shown map is sklearn's PCA of that checkpoint moved onto the later map by the best similarity
        # transform, so what is left of the difference is scipy's Procrustes disparity
        disparity = scipy_procrustes(later, PCA(2).fit_transform(feats))[2]
        left = ((shown - later) ** 2).sum() / ((later - later.mean(0)) ** 2).sum()
        assert left == pytest.approx(disparity, rel=1e-3, abs=1e-5)
        # t-SNE: started from the later map, points move less than in an independent map turned onto it
        later = np.array(e["tsne"]["checkpoints"][k + 1]["points"])[:, :2]
        shown = np.array(e["tsne"]["checkpoints"][k]["points"])[:, :2]
        alone = TSNE(2, init="pca", perplexity=10, random_state=0).fit_transform(feats)
        aligned = ((shown - later) ** 2).sum() / ((later - later.mean(0)) ** 2).sum()
        assert aligned < 0.75 * scipy_procrustes(later, alone)[2], NAMES[k]


def test_the_slider_moves_the_points_in_the_browser_from_file(slider_site, browser):
    site, _ = slider_site
    tsne = _explorers(site)["tsne"]
    classes = json.loads((site / "report.json").read_text())["dataset"]["classes"]
    frames = [np.array(c["points"]) for c in tsne["checkpoints"]]
    labels = np.array([p[3] for p in tsne["points"]])
    index = np.array([p[2] for p in tsne["points"]])
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught {exc}"))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    try:
        page.goto((site / "layers" / LAYER / "index.html").as_uri(), wait_until="load")
        locate_point(page, 0)   # waits for BokehJS to draw
        slider = page.locator(f"#rg-{LAYER}-tsne-0-frame")
        name = page.locator(f"#rg-{LAYER}-tsne-0-frame-name")
        assert name.inner_text() == NAMES[-1]
        for k in [0, 1, len(NAMES) - 1]:
            slider.focus()
            page.keyboard.press("Home")
            for _ in range(k):
                page.keyboard.press("ArrowRight")
            assert name.inner_text() == NAMES[k]
            plotted = page.evaluate(POINTS_JS, 0)
            pos = np.array([p[0] for p in plotted])
            assert sorted(pos) == list(range(len(index))), f"{NAMES[k]}: not every point plotted once"
            xy = np.array([p[1:3] for p in plotted])
            np.testing.assert_allclose(xy, frames[k][pos, :2], atol=1e-3, err_msg=NAMES[k])
            # crosses mark this checkpoint's misclassified images
            crosses = np.array([p[3] == "x" for p in plotted])
            np.testing.assert_array_equal(crosses, frames[k][pos, 2] != labels[pos], err_msg=NAMES[k])
            if k == 0:   # the tooltip of a point names its image and this checkpoint's prediction of it
                at = locate_point(page, 0)
                plotted = page.evaluate(POINTS_JS, 0)   # screen places, once scrolled into view
                tip = hover_tooltip(page, at["x"], at["y"])
                # Bokeh shows the nearest point of each renderer whose marker is under the mouse (8 px: a cross)
                near = [p[0] for p in plotted if np.hypot(p[4] - at["x"], p[5] - at["y"]) < 8]
                shown = tooltip_index(tip)
                far = {int(index[p[0]]): round(float(np.hypot(p[4] - at["x"], p[5] - at["y"])), 1) for p in plotted}
                assert shown in index[near], f"the tooltip names image {shown}, {far.get(shown)} px from the mouse"
                q = int(np.flatnonzero(index == shown)[0])
                assert f"predicted: {classes[int(frames[0][q, 2])]}" in tip.inner_text()
    finally:
        context.close()
    assert not errors, errors
