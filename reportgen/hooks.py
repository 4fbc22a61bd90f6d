"""Forward hooks that never outlive their block: the one place a forward pass is stopped at a layer.

    find_module(model, path)                      the submodule at a `named_modules()` path, or ModelError
    removing(*handles)                            removes the handles (and any pushed later) on exit
    stopping_at(model, path, before=False)        yields run(x): the forward stopped at `path`, its output
    run_until(model, path, x, before=False)       one such run
    capturing(model, paths)                       yields run(x): the outputs of several modules, stopped after the last

Stopping is done by a hook that keeps the layer's output (or, with `before`, its first input) and raises a
private exception, so nothing after the layer runs, forward or backward, whatever the model's structure
(residual, branching), and no in-place op after it can overwrite what was kept. Every hook is removed when
its block ends, also when the forward raises.
"""

import difflib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .errors import ModelError


class _Reached(Exception):
    """Raised by a stopping hook once its layer has run (or been called): the rest of the forward is skipped."""


def find_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at `path` (as in `model.named_modules()`), or ModelError naming the closest paths."""
    modules = dict(model.named_modules())
    if path in modules and path:
        return modules[path]
    close = difflib.get_close_matches(path, [n for n in modules if n], n=3, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else ""
    raise ModelError(f"no layer {path!r} in the model{hint} (run 'reportgen layers SPEC' to list them)")


@contextmanager
def removing(*handles: RemovableHandle) -> Iterator[ExitStack]:
    """Remove `handles`, and any handle later pushed with `stack.callback(h.remove)`, on exit, errors too."""
    with ExitStack() as stack:
        for handle in handles:
            stack.callback(handle.remove)
        yield stack


@contextmanager
def stopping_at(model: nn.Module, path: str, *, before: bool = False) -> Iterator[Callable[[torch.Tensor],
                                                                                            torch.Tensor]]:
    """Yield `run(x)`: `model(x)` stopped once module `path` has produced its output, which `run` returns.

    before: stop when the module is called instead, and return its first input (not yet changed by it).
    If the module runs several times in one forward pass (a shared module), the first call counts.
    Gradients flow as usual: `run` may be called inside `torch.enable_grad()` and differentiated.
    """
    module = find_module(model, path)
    kept: list = []

    def keep_and_stop(value) -> None:
        kept.append(value)
        raise _Reached

    if before:
        handle = module.register_forward_pre_hook(lambda _m, inputs: keep_and_stop(inputs[0] if inputs else None))
    else:
        handle = module.register_forward_hook(lambda _m, _inputs, output: keep_and_stop(output))

    def run(x: torch.Tensor) -> torch.Tensor:
        kept.clear()
        try:
            model(x)
        except _Reached:
            pass
        if not kept:
            raise ModelError(f"layer {path!r} is not used by the model's forward pass.")
        if not isinstance(kept[0], torch.Tensor):
            raise ModelError(f"layer {path!r} {'takes' if before else 'returns'} {type(kept[0]).__name__}, "
                             f"not a tensor; pick a layer whose {'input' if before else 'output'} is one tensor.")
        return kept[0]

    with removing(handle):
        yield run


@contextmanager
def capturing(model: nn.Module, paths: list[str]) -> Iterator[Callable[[torch.Tensor], list[torch.Tensor]]]:
    """Yield `run(x)`: the outputs of modules `paths` (a list in that order; a path may repeat) when `model` runs
    on x, the forward stopped once every one of them has run (a shared module: its first call counts).

    Each output but the one that stops the forward is copied, so an in-place op after its module (an
    `inplace=True` ReLU after a conv) cannot change it. Gradients flow as in `stopping_at`.
    """
    modules = [find_module(model, p) for p in paths]
    kept: dict[int, torch.Tensor] = {}

    def hook(i: int):
        def keep(_m, _inputs, output) -> None:
            if i in kept:
                return
            if not isinstance(output, torch.Tensor):
                raise ModelError(f"layer {paths[i]!r} returns {type(output).__name__}, not a tensor; pick a layer "
                                 f"whose output is one tensor.")
            kept[i] = output if len(kept) + 1 == len(paths) else output.clone()
            if len(kept) == len(paths):
                raise _Reached
        return keep

    def run(x: torch.Tensor) -> list[torch.Tensor]:
        kept.clear()
        try:
            model(x)
        except _Reached:
            pass
        missing = [p for i, p in enumerate(paths) if i not in kept]
        if missing:
            raise ModelError(f"layer {missing[0]!r} is not used by the model's forward pass.")
        return [kept[i] for i in range(len(paths))]

    with removing(*(m.register_forward_hook(hook(i)) for i, m in enumerate(modules))):
        yield run


def run_until(model: nn.Module, path: str, x: torch.Tensor, *, before: bool = False) -> torch.Tensor:
    """The output of module `path` (with `before`, its input) when `model` runs on `x`; the forward stops there."""
    with stopping_at(model, path, before=before) as run:
        return run(x)
