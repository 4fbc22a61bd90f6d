"""Feature visualization: images synthesized by gradient ascent to show what a unit responds to.

    synthesize(model, Objective(layer, units, kind), Parameterization(channels, mean, std, size),
               RandomAffine() or None, Optimizer(steps, lr, seed, batch_size, sizes)) -> FeatureVisResult

Modules, one concept each as in lucent: `objectives` (what is maximized), `param` (how images are
parameterized), `transforms` (robustness warps), `hooks` (running the model only up to the layer),
`render` (the batched loop and its `Optimizer` settings), `style` (several layers' Gram matrices as one
matched tensor: texture and style transfer).
"""

from .objectives import MATCH, OBJECTIVES, Objective, gram_matrix, relative_distance
from .param import Parameterization, fourier_image, maco_image, pixel_image
from .render import FeatureVisResult, Optimizer, initial_pixels, synthesize
from .style import Part, statistics_model
from .transforms import RandomAffine

__all__ = ["synthesize", "FeatureVisResult", "Objective", "Parameterization", "RandomAffine", "Optimizer",
           "OBJECTIVES", "MATCH", "fourier_image", "pixel_image", "maco_image", "initial_pixels", "gram_matrix",
           "relative_distance", "Part", "statistics_model"]
