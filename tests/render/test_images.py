"""reportgen.render.images: colour maps are matplotlib's own."""

import matplotlib
import numpy as np
import pytest

from reportgen.render.images import COLORMAPS, colorize

MATPLOTLIB_NAMES = {"viridis": "viridis", "inferno": "inferno", "diverging": "RdBu_r"}


def points() -> np.ndarray:
    """Random values, every entry boundary k/256 and just either side of it, and both ends."""
    edges = np.arange(257) / 256
    rng = np.random.default_rng(0)
    return np.concatenate([rng.random(5000), edges, np.nextafter(edges, -1)[1:], np.nextafter(edges, 2)[:-1],
                           [0.0, 1.0]])


@pytest.mark.parametrize("name", list(MATPLOTLIB_NAMES))
def test_colorize_is_matplotlibs_mapping(name):
    values = points()
    expected = matplotlib.colormaps[MATPLOTLIB_NAMES[name]](values, bytes=True)[:, :3]
    np.testing.assert_array_equal(colorize(values, name), expected)
    image = values[:4900].reshape(70, 70).astype(np.float32)                    # (H, W), float32 as maps are
    np.testing.assert_array_equal(colorize(image, name),
                                  matplotlib.colormaps[MATPLOTLIB_NAMES[name]](image, bytes=True)[..., :3])


def test_out_of_range_values_take_the_end_colours():
    low, high = colorize(np.array([0.0, 1.0]), "viridis")
    np.testing.assert_array_equal(colorize(np.array([-3.0, np.nan, 7.0]), "viridis"), [low, low, high])


def test_the_maps_are_the_documented_ones():
    assert set(COLORMAPS) == set(MATPLOTLIB_NAMES)
    mid = colorize(np.array(0.5), "diverging")
    assert mid.shape == (3,) and mid.dtype == np.uint8 and (mid > 240).all()   # RdBu_r is near white at 0
    with pytest.raises(ValueError, match=r"^unknown colour map 'jet'; known: 'viridis', 'inferno', 'diverging'$"):
        colorize(np.zeros(2), "jet")
