"""Crops of the input that hold one unit's receptive field, aligned so that the crop computes the unit exactly.

Why a crop gives the same unit. In a spatially local network (convs, pools, BatchNorm in eval mode,
elementwise activations) unit (y, x) of a layer depends only on the input pixels of its receptive field box,
and every position on the way is computed by the same window arithmetic wherever the image starts, provided
the crop moves each map by a whole number of positions: the crop's origin (oy, ox) is a multiple of the
layer's stride (sh, sw), the product of the strides on the way, which every stride before it divides. The
crop's output is then the image's output moved by (oy // sh, ox // sw), and the unit sits at
(y - oy // sh, x - ox // sw). A crop's border pads the maps where the image has pixels, but only positions
whose own receptive field leaves the crop read that padding, and the unit reads none of them. The crop's end
is a multiple of the stride too (or the image's end), so each map of the crop ends on a whole position.
A global op on the way (squeeze-excitation's mean, attention, a global mean) breaks all this: the caller
checks the unit's value against the dataset pass's (`guided.guided_backprop_unit_crops`).

Margins. The crops of a layer share one size, so that a filter's images run as one batch: along each axis
the largest box of the layer (the hull of any row's, column's units) plus stride - 1 (the most an aligned
origin can sit before a box), rounded up to the stride, at most the image. A crop starts at the last multiple
of the stride at or before its unit's box, moved back if it would run past the image (to the last multiple
that fits), and ends at the crop size or, if the unit's box still reaches further (an image side that is
not a multiple of the stride), at the box's end rounded up to the stride, clipped to the image.
"""

import math

import numpy as np

from ...graph.receptive import ReceptiveField

MAX_AREA = 0.5   # crop only where the crop is at most this share of the image: else the whole image costs little more


def _integer_stride(field: ReceptiveField) -> tuple[int, int] | None:
    """The field's (sh, sw) if both are whole numbers ≥ 1 (an upsampling on the way gives a fractional one)."""
    if not all(float(s).is_integer() and s >= 1 for s in field.stride):
        return None
    return int(field.stride[0]), int(field.stride[1])


def unit_crop_size(field: ReceptiveField | None) -> tuple[int, int] | None:
    """(h, w) of the layer's crops (see the module docstring), or None where units are computed on the whole
    image: no field, a field not derived analytically (its stride is an estimate), a fractional stride, or a
    crop larger than `MAX_AREA` of the image."""
    stride = _integer_stride(field) if field is not None and field.method == "analytic" else None
    if stride is None:
        return None
    size = []
    for spans, s, n in zip((field.rows, field.cols), stride, field.input_size):
        largest = int((spans[:, 1] - spans[:, 0]).max(initial=0))        # hulls of rows / columns: ≥ every box
        size.append(min(n, math.ceil((largest + s - 1) / s) * s))
    if size[0] * size[1] > MAX_AREA * field.input_size[0] * field.input_size[1]:
        return None
    return size[0], size[1]


def unit_crops(field: ReceptiveField, units: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop of each unit: units (B, 2) int (y, x) in the layer's output, size from `unit_crop_size(field)`.

    Returns (B, 4) int (y0, x0, y1, x1), half-open input pixels, each holding its unit's box, y0 and x0
    multiples of the stride; y1 - y0 and x1 - x0 equal `size` unless the image's end forbids it.
    """
    stride = _integer_stride(field)
    out = np.zeros((len(units), 4), np.int64)
    for b, (y, x) in enumerate(np.asarray(units).tolist()):
        x0, y0, x1, y1 = field.box(int(y), int(x))
        for axis, (lo, hi) in enumerate(((y0, y1), (x0, x1))):
            s, n, length = stride[axis], field.input_size[axis], size[axis]
            start = min(lo // s * s, (n - length) // s * s)
            out[b, axis], out[b, axis + 2] = start, min(n, max(start + length, -(-hi // s) * s))
    return out
