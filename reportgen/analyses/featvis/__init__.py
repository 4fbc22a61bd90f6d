"""Feature visualization: images synthesized by gradient ascent to show what a unit responds to.

    synthesize(model, layer, units, ...) -> FeatureVisResult      the one call (render.py)

Modules: `param` (how images are parameterized), `transforms` (robustness warps), `objectives` (what is
maximized), `hooks` (running the model only up to the layer), `render` (the batched loop).
"""

from .objectives import OBJECTIVES
from .param import fourier_image, pixel_image
from .render import FeatureVisResult, synthesize
from .transforms import RandomAffine

__all__ = ["synthesize", "FeatureVisResult", "RandomAffine", "OBJECTIVES", "fourier_image", "pixel_image"]
