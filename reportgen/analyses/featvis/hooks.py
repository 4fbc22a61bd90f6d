"""Running a model only as far as the layer being visualized, with its weights frozen.

`truncated_model` puts a hook on the target module that keeps its output and raises a private exception,
so the forward pass stops there: the layers after the target (for VGG19's block3_conv1, 26 of its 37
feature modules and the 124M-weight classifier) never run, forward or backward, whatever the model's
structure (residual, branching). Nothing after the hook runs, so an in-place ReLU that follows the target
cannot overwrite the captured output; for a ReLU target the hook takes the ReLU's input before it runs.
`frozen` stops autograd from computing weight gradients nobody uses. Both undo their changes on exit,
errors included."""

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from reportgen.errors import ModelError


class _ReachedTarget(Exception):
    """Raised by the hook to end the forward pass once the target layer has run."""


def resolve_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule named `layer` (a name from `model.named_modules()`)."""
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        some = ", ".join(repr(name) for name in list(modules)[1:8])
        raise ModelError(f"Invalid layer {layer!r}: the model has no module of that name. Layers are named "
                         f"as in model.named_modules(), e.g. {some}.")
    return modules[layer]


class Truncated:
    """`truncated(x)`: the model's forward pass on x, stopped once `layer` has produced its output.

    For an `nn.ReLU` layer, `pre_activation` is True and the call returns the ReLU's *input* z, captured
    before the ReLU runs (so an in-place ReLU cannot overwrite it): the layer's output is `z.clamp(min=0)`,
    and the caller can still follow the gradient of z where the ReLU is off (see `render.ascent_values`).
    """

    def __init__(self, model: nn.Module, layer: str | None):
        self.model, self.layer = model, layer
        self.pre_activation = False
        self._captured: list = []

    def _keep_and_stop(self, value) -> None:
        self._captured.append(value)
        raise _ReachedTarget

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            return self.model(x)
        self._captured.clear()
        try:
            self.model(x)
        except _ReachedTarget:
            pass
        if not self._captured:
            raise ModelError(f"layer {self.layer!r} is not used by the model's forward pass.")
        out = self._captured[0]
        if not isinstance(out, torch.Tensor):
            raise ModelError(f"layer {self.layer!r} returns {type(out).__name__}, not a tensor; "
                             f"pick a layer whose output is one tensor.")
        return out


@contextmanager
def truncated_model(model: nn.Module, layer: str | None) -> Iterator[Truncated]:
    """Yield a `Truncated` forward for `layer` (None: the whole model); its hook is removed on exit, errors too.

    If the layer's module runs several times in one forward pass (a shared module), the first call counts.
    """
    truncated = Truncated(model, layer)
    if layer is None:
        yield truncated
        return
    module = resolve_layer(model, layer)
    if isinstance(module, nn.ReLU):
        truncated.pre_activation = True
        handle = module.register_forward_pre_hook(lambda _m, inputs: truncated._keep_and_stop(inputs[0]))
    else:
        handle = module.register_forward_hook(lambda _m, _inputs, output: truncated._keep_and_stop(output))
    try:
        yield truncated
    finally:
        handle.remove()


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
