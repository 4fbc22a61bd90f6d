"""Attribution: which pixels of an image a prediction (or a filter's strongest unit) rests on.

Every method takes the model (eval mode), a normalized batch x (B, C, H, W) and a target (B,)
of class indices, and returns raw float32 maps (B, H, W) at input resolution; the renderer
scales them. One method per module; `_common.py` holds the shared mechanics, `crops.py` the crops of the
input that compute one unit exactly (`guided_backprop_unit_crops`). `activation_census` says
which activations the guided methods change (guided.py states the rule).
"""

from .crops import unit_crop_size
from .gradcam import grad_cam
from .guided import (activation_census, guided_backprop, guided_backprop_unit, guided_backprop_unit_crops,
                     guided_grad_cam, guided_unsupported)
from .occlusion import occlusion
from .saliency import saliency
from .sanity import map_similarity, randomized_copy, randomized_similarity

__all__ = ["occlusion", "saliency", "grad_cam", "guided_backprop", "guided_grad_cam",
           "guided_backprop_unit", "guided_backprop_unit_crops", "unit_crop_size", "activation_census",
           "guided_unsupported", "randomized_similarity", "randomized_copy", "map_similarity"]
