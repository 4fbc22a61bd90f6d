"""Texture and style transfer on the shipped demo model: the Gram matrix against an einsum written here, the
texture's Gram matrices brought close to the source's (recomputed by hand from the returned pixels), the style
transfer's content and style both closer than at the start, and the hooks it uses gone afterwards."""

import numpy as np
import pytest
import torch

from reportgen.analyses.featvis import Optimizer, Parameterization, Part, gram_matrix, statistics_model
from reportgen.analyses.texture import match_statistics
from reportgen.spec import TextureSpec
from tests.analyses.test_inversion import CUT, LAYERS, MEAN, STD, demo  # noqa: F401 - the shared fixture

PARAM = Parameterization(1, (MEAN,), (STD,), size=28)


def _optimizer(seed=0):
    s = TextureSpec()                 # the spec's defaults
    return Optimizer(steps=s.steps, lr=s.lr, seed=seed, batch_size=1)


def test_gram_matrix_is_the_mean_over_positions_of_channel_products():
    acts = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(0))
    expected = np.einsum("nchw,ndhw->ncd", acts.numpy(), acts.numpy()) / (4 * 6)
    np.testing.assert_allclose(gram_matrix(acts).numpy(), expected, rtol=1e-5, atol=1e-6)


def _grams_by_hand(model, x: torch.Tensor) -> list[np.ndarray]:
    """Each demo layer's Gram matrix for (1, 1, 28, 28) normalized `x`, from the model's Sequential cut by hand."""
    out = []
    with torch.no_grad():
        for layer in LAYERS:
            a = model.features[:CUT[layer]](x)[0].flatten(1).numpy()       # (C, positions)
            out.append(np.einsum("cp,dp->cd", a, a) / a.shape[1])
    return out


@pytest.fixture(scope="module")
def texture(demo):  # noqa: F811 - the fixture imported above
    model, x0 = demo
    parts = [Part(l) for l in LAYERS]
    return match_statistics(model, parts, [1 / 3] * 3, [x0[:1]] * 3, PARAM, _optimizer())


def test_texture_gram_matrices_approach_the_sources(demo, texture):  # noqa: F811
    model, x0 = demo
    # measured with the defaults (256 steps, lr 0.02): final / start 0.21, 0.33, 0.12 on the three layers
    assert np.all(texture["start"] > 0.8), texture["start"]
    assert np.all(texture["final"] < 0.5 * texture["start"]), (texture["final"], texture["start"])
    x = (torch.from_numpy(texture["pixels"]).permute(2, 0, 1)[None].float() / 255 - MEAN) / STD
    for got, target, reported in zip(_grams_by_hand(model, x), _grams_by_hand(model, x0[:1]), texture["final"]):
        assert np.linalg.norm(got - target) / np.linalg.norm(target) == pytest.approx(reported, rel=1e-4)


def test_style_transfer_moves_toward_the_content_and_the_style(demo):  # noqa: F811
    model, x0 = demo
    content, style = x0[1:2], x0[:1]
    parts = [Part(LAYERS[-1], gram=False)] + [Part(l) for l in LAYERS]
    out = match_statistics(model, parts, [1.0] + [1 / 3] * 3, [content] + [style] * 3, PARAM, _optimizer())
    # measured: content 1.26 -> 0.50, Gram matrices 0.90/0.92/1.39 -> 0.43/0.51/0.88
    assert out["final"][0] < 0.6 * out["start"][0]
    assert out["final"][1:].mean() < 0.7 * out["start"][1:].mean()


def test_statistics_hooks_are_removed_even_after_an_error(demo):  # noqa: F811
    model, x0 = demo

    def hooks():
        return sum(len(m._forward_hooks) for m in model.modules())
    with pytest.raises(RuntimeError, match="stop"):
        with statistics_model(model, [Part(l) for l in LAYERS]) as stats:
            with torch.no_grad():
                assert stats(x0[:1]).shape == (1, 32 ** 2 + 64 ** 2 + 128 ** 2)
            assert hooks() == 3
            raise RuntimeError("stop")
    assert hooks() == 0
