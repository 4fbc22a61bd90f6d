"""MACO (`feature_vis.param: maco`): the image keeps exactly the dataset's mean amplitude spectrum while its phase
alone is optimized; the spectrum is computed from the user's images and cached; a build shows MACO beside
Fourier and the plain ascent, with a transparency overlay that a checkbox turns on and off.

The spectra the tests expect are computed here with numpy.fft from the images the dataset gives the model.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from reportgen.analyses.amplitude_spectrum import AmplitudeSpectrum, at_size
from reportgen.analyses.featvis import Objective, Optimizer, Parameterization, RandomAffine, maco_image, synthesize
from reportgen.analysis import check_analyses, run_analyses
from reportgen.pipeline import build, prepare
from reportgen.errors import SpecError
from reportgen.spec import load_spec
from tests.helpers.tiny import FASHION_DIR, TinyCNN, write_imagefolder, write_mnist


def tiny_rgb() -> TinyCNN:
    """The tiny CNN on 3-channel input (a factory for the specs below)."""
    torch.manual_seed(1)
    return TinyCNN(channels=3)


def numpy_amplitude(pixels: np.ndarray) -> np.ndarray:
    """(n, C, H, W) pixels in [0, 1] -> (C, H, W//2+1) the mean |rfft2|, numpy's default norm."""
    return np.abs(np.fft.rfft2(pixels.astype(np.float64))).mean(axis=0)


def spectrum_of(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float images -> (N, C, H, W//2+1) |rfft2| in float64."""
    return np.abs(np.fft.rfft2(images.detach().cpu().double().numpy()))


def climb(param, model: TinyCNN, channel: int, steps: int = 5, lr: float = 0.05):
    """A few Adam steps raising `channel`'s mean of the last conv (before its ReLU: never a zero gradient)."""
    adam = torch.optim.Adam(param.params, lr=lr)
    for _ in range(steps):
        adam.zero_grad()
        (-model.features[:-1](param.image())[:, channel].mean()).backward()
        adam.step()


@pytest.mark.parametrize("channels, size", [(1, (28, 28)), (3, (22, 19)), (3, (16, 24))])
def test_the_image_keeps_the_mean_amplitude_while_only_its_phase_moves(channels, size):
    rng = np.random.default_rng(channels)
    photos = rng.random((12, channels, *size)) ** 2          # some structure: not centred, not white
    photos[:, :, : size[0] // 2] *= 0.3
    want = numpy_amplitude(photos)
    param = Parameterization(channels, [0.5] * channels, [0.25] * channels, size=size, amplitude=want)
    images = param.images([torch.Generator().manual_seed(i) for i in range(2)])
    torch.manual_seed(0)
    model = TinyCNN(channels)
    (phase,) = images.params                                  # the phase is the only trained tensor
    assert phase.shape == (2, channels, size[0], size[1] // 2 + 1)
    before = phase.detach().clone()
    climb(images, model, channel=3)

    assert not torch.equal(phase.detach(), before)            # the phase moved ...
    got = spectrum_of(images.unclipped())                     # ... and the magnitude did not
    assert np.abs(got - want).max() <= 1e-5 * want.max()
    mean = images.unclipped().detach().double().mean(dim=(2, 3)).numpy()
    assert np.allclose(mean, photos.mean(axis=(0, 2, 3)), atol=1e-6)     # DC: the dataset's mean brightness
    clipped = images.unclipped().clamp(0, 1)
    assert torch.equal(images.image(), clipped)                # what the model sees: clipped to [0, 1]


def test_maco_refuses_an_amplitude_of_another_size():
    with pytest.raises(SpecError, match=r"must be the \(channels, H, W//2\+1\) = \(1, 28, 15\) rfft2 magnitude; "
                                        r"got \(1, 28, 14\)"):
        Parameterization(1, [0.5], [0.25], size=28, amplitude=np.ones((1, 28, 14)))
    with pytest.raises(ValueError, match=r"amplitude of shape \(1, 8, 5\) is not the \(C, 8, 6\) rfft2 magnitude"):
        maco_image([torch.Generator()], np.ones((1, 8, 5)), (8, 10))


def test_coarse_to_fine_and_the_transparency_map():
    """With coarse steps first, the loop runs and gives a finite, non-negative (N, H, W) transparency map; the
    clipped share is in [0, 1]; Fourier images report no clipping."""
    torch.manual_seed(0)
    model = TinyCNN(3)
    amplitude = numpy_amplitude(np.random.default_rng(0).random((4, 3, 32, 24)))
    param = Parameterization(3, [0.5] * 3, [0.25] * 3, size=(32, 24), amplitude=amplitude)
    objective = Objective("features.c3", [1, 2], "channel")
    res = synthesize(model, objective, param, RandomAffine(), Optimizer(steps=6, sizes=(0.5, 1.0)))
    assert res.images.shape == (2, 32, 24, 3) and res.transparency.shape == (2, 32, 24)
    assert np.isfinite(res.transparency).all() and (res.transparency >= 0).all() and res.transparency.max() > 0
    assert ((0 <= res.clipped) & (res.clipped <= 1)).all()
    fourier = synthesize(model, objective, Parameterization(3, [0.5] * 3, [0.25] * 3, size=(32, 24)), RandomAffine(),
                         Optimizer(steps=2))
    assert (fourier.clipped == 0).all()


# ---- the amplitude_spectrum analysis ------------------------------------------------------------------------

SPEC = """
seed: 3
model:
  factory: {factory}
  mean: {mean}
  std: {std}
  input_size: {input_size}
dataset:
  format: {format}
  root: {root}
  limit: {limit}
  samples: 2
layers:
  - name: features.c3
    filters: [0, 1, 2]
feature_vis: {{steps: 6, classes: [], param: maco, compare: [fourier, maco, plain]}}
circuit: {{enabled: false}}
attribution: {{enabled: false}}
"""
GRAY = dict(factory="tests.helpers.tiny:tiny_cnn", mean=[0.5], std=[0.25], input_size=28, format="fashion-mnist",
            root=FASHION_DIR, limit=60)


def write_spec(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.yaml").write_text(SPEC.format(**{**GRAY, **fields}))
    return folder / "spec.yaml"


def spectrum_run(spec_path: Path) -> tuple[dict, object, list[str]]:
    """(the amplitude_spectrum artifact, the build's context, what it computed), run through the runner alone."""
    ctx = prepare(load_spec(spec_path), log=lambda *_: None)
    outcome = run_analyses(ctx, check_analyses(ctx, [AmplitudeSpectrum()]))["amplitude_spectrum"]
    assert outcome.absent is None
    return outcome.artifact, ctx, ctx.computed


def test_the_spectrum_is_the_mean_over_the_dataset_images_and_cached(tmp_path):
    first = tmp_path / "a" / "data"
    write_mnist(first, n=50, seed=0)
    spec = write_spec(tmp_path / "a", root=first, format="mnist", limit=50)
    art, ctx, computed = spectrum_run(spec)
    assert computed == ["amplitude_spectrum"]
    assert sorted(art["indices"]) == sorted(ctx.indices)           # fewer than 256 images: all of them
    pixels = np.stack([ctx.dataset.image(int(i)) for i in art["indices"]]) / 255
    assert np.allclose(art["amplitude_28x28"], numpy_amplitude(pixels), rtol=1e-12, atol=1e-9)

    again, _, computed = spectrum_run(spec)
    assert computed == [] and np.array_equal(again["amplitude_28x28"], art["amplitude_28x28"])   # from the cache

    write_mnist(first, n=50, seed=1)                                # the same files, other images
    changed, ctx, computed = spectrum_run(spec)
    assert computed == ["amplitude_spectrum"]
    assert not np.allclose(changed["amplitude_28x28"], art["amplitude_28x28"])
    pixels = np.stack([ctx.dataset.image(int(i)) for i in changed["indices"]]) / 255
    assert np.allclose(changed["amplitude_28x28"], numpy_amplitude(pixels), rtol=1e-12, atol=1e-9)


def test_rgb_non_square_spectrum_at_a_smaller_canvas_is_a_centre_crop(tmp_path):
    write_imagefolder(tmp_path / "data", per_class=5, size=(30, 26))
    spec = write_spec(tmp_path, factory="tests.analyses.test_maco:tiny_rgb", mean=[0.5] * 3, std=[0.25] * 3,
                      input_size=[22, 19], format="imagefolder", root=tmp_path / "data", limit=10)
    art, ctx, _ = spectrum_run(spec)
    pixels = np.stack([ctx.dataset.image(int(i)) for i in art["indices"]]) / 255     # (10, 3, 22, 19)
    assert art["amplitude_22x19"].shape == (3, 22, 10)
    assert np.allclose(art["amplitude_22x19"], numpy_amplitude(pixels), rtol=1e-12, atol=1e-9)
    crop = at_size(torch.from_numpy(pixels), (16, 12)).numpy()
    assert np.array_equal(crop, pixels[:, :, 3:19, 3:15])


def test_a_build_without_maco_has_no_spectrum(tmp_path):
    spec = write_spec(tmp_path)
    text = spec.read_text().replace("param: maco, compare: [fourier, maco, plain]", "compare_plain: true")
    spec.write_text(text)
    ctx = prepare(load_spec(spec), log=lambda *_: None)
    assert not AmplitudeSpectrum().enabled(ctx)
    assert ctx.spec.feature_vis.compare == ["plain"]


# ---- a whole build ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def maco_site(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("maco")
    return build(load_spec(write_spec(folder)), out=folder / "site", progress=False, log=lambda *_: None)


def test_the_build_reports_maco_fourier_and_plain_side_by_side(maco_site):
    report = json.loads((maco_site / "report.json").read_text())
    assert report["amplitude_spectrum"] == {"images": 60, "sizes": [[28, 28]]}
    for f in report["layers"][0]["filters"]:
        vis = f["feature_vis"]
        assert vis["param"] == "maco" and [c["param"] for c in vis["compare"]] == ["maco", "fourier", "plain"]
        maco, fourier, plain = vis["compare"]
        assert maco["image"] == vis["image"] and maco["activation"] == vis["activation"]
        assert vis["plain"] == {"image": plain["image"], "activation": plain["activation"]}
        assert maco["transparency"] == vis["transparency"] and maco["transparency"]["scale"] > 0
        assert 0 <= maco["clipped"] <= 1 and fourier["clipped"] is None and fourier["transparency"] is None
        for c in vis["compare"]:
            assert (maco_site / c["image"]).is_file() and isinstance(c["activation"], float)
        assert (maco_site / maco["transparency"]["image"]).is_file()
        page = (maco_site / f["page"]).read_text()
        assert 'class="ov"' in page and maco["transparency"]["image"] in page and plain["image"] in page


@pytest.mark.browser
def test_the_checkbox_shows_and_hides_the_transparency_overlay(browser, maco_site):
    from tests.browser.conftest import AXE_PATH
    from tests.browser.crawler import AXE_RUN_JS

    report = json.loads((maco_site / "report.json").read_text())
    f = report["layers"][0]["filters"][0]
    page = browser.new_page()
    try:
        page.goto((maco_site / f["page"]).as_uri(), wait_until="load")
        overlay = page.locator("img.overlay").first
        box = page.locator("input.ov").first
        assert not overlay.is_visible()
        page.locator("label.ov-toggle").first.click()
        assert box.is_checked() and overlay.is_visible()
        assert overlay.bounding_box() == page.locator(".overlaid img:not(.overlay)").first.bounding_box()
        assert page.evaluate("el => el.naturalWidth", overlay.element_handle()) == 28    # the PNG loaded
        page.locator("label.ov-toggle").first.click()
        assert not box.is_checked() and not overlay.is_visible()
        if AXE_PATH.is_file():
            box.check()
            page.add_script_tag(path=str(AXE_PATH))
            assert page.evaluate(AXE_RUN_JS) == []
    finally:
        page.close()


@pytest.mark.slow
def test_the_maco_page_is_valid_html(maco_site):
    from tests.browser.test_html_valid import nu_check

    report = json.loads((maco_site / "report.json").read_text())
    page = maco_site / report["layers"][0]["filters"][0]["page"]
    checked, found = nu_check([page])
    assert checked == {page} and not any(found.values()), found



@pytest.mark.parametrize("old, new, key, message", [
    ("param: maco", "param: pixel", "feature_vis.param", "Input should be 'fourier' or 'maco'"),
    ("compare: [fourier, maco, plain]", "compare: [maco, plain, maco]", "feature_vis",
     "compare lists a parameterization twice: ['maco', 'plain', 'maco']"),
])
def test_spec_errors(tmp_path, old, new, key, message):
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace(old, new))
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert (info.value.key, info.value.message) == (key, message)
