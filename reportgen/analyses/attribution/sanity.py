"""The model-randomization sanity check (Adebayo et al. 2018): does a map depend on what the model learned?

A method whose maps barely change when the weights are replaced by random ones explains the
input (edges, textures), not the model. The page shows the similarity for each method.
"""

import copy
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ...errors import ModelError

Method = Callable[[nn.Module, torch.Tensor, torch.Tensor], np.ndarray]


def randomized_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of `model` with every layer re-initialized (`reset_parameters()`, which also resets
    BatchNorm's running statistics), drawn from `seed` without touching the global random state."""
    clone = copy.deepcopy(model)
    layers = [m for m in clone.modules() if hasattr(m, "reset_parameters")]
    if not layers:
        raise ModelError("the model has no layer with parameters to re-initialize")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in layers:
            layer.reset_parameters()
    return clone


def randomized_similarity(method_fn: Method, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                          seed: int = 0) -> np.ndarray:
    """Spearman rank correlation, per image, between |map| of the model and of its randomized copy.

    method_fn(model, x, target) → (B, H, W), e.g. `saliency` or `functools.partial(grad_cam, layer=...)`.
    Returns `map_similarity` of the two maps.
    """
    return map_similarity(method_fn(model, x, target), method_fn(randomized_copy(model, seed), x, target))


def map_similarity(trained: np.ndarray, randomized: np.ndarray) -> np.ndarray:
    """Spearman rank correlation, per image, between |trained| and |randomized| maps (B, H, W).

    Absolute values are ranked, as in Adebayo et al.'s "absolute value" variant, since the sign
    of a map is not comparable between two models. Returns float64 (B,) in [-1, 1]: near 1 means
    the method ignores the weights; NaN where either map is constant (a rank correlation is undefined).
    """
    from scipy.stats import spearmanr   # here, not at import: a rebuild that computes nothing does not need it

    out = np.empty(len(trained))
    for n, (a, b) in enumerate(zip(np.abs(trained), np.abs(randomized))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # scipy warns on constant input; NaN says it
            out[n] = spearmanr(a.ravel(), b.ravel()).statistic
    return out
