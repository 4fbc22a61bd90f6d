"""Running a model only as far as the layer being visualized, with its weights frozen.

`truncated_model` stops the forward pass at the target layer (`reportgen.hooks.stopping_at`): the layers
after the target (for VGG19's block3_conv1, 26 of its 37 feature modules and the 124M-weight classifier)
never run, forward or backward. For a ReLU target it takes the ReLU's input, before the ReLU runs.
`frozen` stops autograd from computing weight gradients nobody uses. Both undo their changes on exit,
errors included."""

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from reportgen.hooks import find_module, stopping_at


@dataclass
class Truncated:
    """`truncated(x)`: the model's forward pass on x, stopped once the layer has produced its output.

    For an `nn.ReLU` layer, `pre_activation` is True and the call returns the ReLU's *input* z, captured
    before the ReLU runs (so an in-place ReLU cannot overwrite it): the layer's output is `z.clamp(min=0)`,
    and the caller can still follow the gradient of z where the ReLU is off (see `render.ascent_values`).
    """
    run: Callable[[torch.Tensor], torch.Tensor]
    pre_activation: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


@contextmanager
def truncated_model(model: nn.Module, layer: str | None) -> Iterator[Truncated]:
    """Yield a `Truncated` forward for `layer` (None: the whole model); its hook is removed on exit, errors too.

    If the layer's module runs several times in one forward pass (a shared module), the first call counts.
    """
    if layer is None:
        yield Truncated(model)
        return
    relu = isinstance(find_module(model, layer), nn.ReLU)
    with stopping_at(model, layer, before=relu) as run:
        yield Truncated(run, pre_activation=relu)


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no weight gradients inside the block; each module's and parameter's flags restored after.

    Eval mode matters for correctness too: batch-norm in training mode would mix the images of a batch.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grads:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in grads:
            p.requires_grad_(flag)
