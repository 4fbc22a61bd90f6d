"""Train the demo model deterministically: `python -m reportgen.demo.train [--data DIR] [--checkpoints DIR]`.

Reads the full Fashion-MNIST (Debian's `dataset-fashion-mnist` puts it in
/usr/share/datasets/fashion-mnist/), trains on the 60k training images and writes
`reportgen/demo/fashion_cnn.pt` (a state_dict) after printing the test accuracy.

With --checkpoints DIR it also writes the weights at earlier points of the same run (--checkpoint-at, in
epochs; 0 is the random initialization) as `epoch{point}.pt`, for the demo's evolution report. They are stored
as float16 (half the bytes; the report loads them into the float32 model) and the accuracy printed for each is
that of the float16 weights, the ones shipped. Saving them consumes no random numbers: the final weights are
the same with or without them (checked: a run with ten checkpoints rewrote fashion_cnn.pt byte for byte).

The demo's checkpoints (configs/fashion_mnist.yaml) are this run's defaults, written by
`python -m reportgen.demo.train --checkpoints reportgen/demo/checkpoints`: the random initialization
(test accuracy 0.1000), 47 steps in (0.5234: classes start to separate), epoch 2 (0.8512); the final
weights (0.9247) are fashion_cnn.pt. 0.29 MB each.
"""

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..idx import load_idx_split
from .fashion_cnn import build

MEAN, STD = 0.2860, 0.3530


def _tensors(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = load_idx_split(root, split)
    x = (torch.from_numpy(images).float().unsqueeze(1) / 255 - MEAN) / STD  # (N, 1, 28, 28)
    return x, torch.from_numpy(labels)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        preds = torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return (preds == y).float().mean().item()


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state_dict in float16 (integer counters kept as they are): what a shipped checkpoint holds."""
    return {k: v.to(torch.float16) if v.is_floating_point() else v.clone() for k, v in state.items()}


def _save_checkpoint(model: nn.Module, folder: Path, point: float, x: torch.Tensor, y: torch.Tensor) -> None:
    """Write `model` at `point` epochs as a float16 state_dict and print the test accuracy of those weights."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch{point:g}.pt"
    state = _half(model.state_dict())
    torch.save(state, path)
    shipped = copy.deepcopy(model)   # not build(): its initialization would draw from the training's random stream
    shipped.load_state_dict(state)   # float16 → the float32 model: the weights the report sees
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB), "
          f"test accuracy {evaluate(shipped, x, y):.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("fashion_cnn.pt"))
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="also write float16 checkpoints of this run here (the demo's: reportgen/demo/checkpoints)")
    parser.add_argument("--checkpoint-at", type=float, nargs="+", default=[0, 0.1, 2],
                        help="when to write them, in epochs (0: the random initialization)")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # one thread: the same weights on any machine, and no spin-waiting on busy cores
    x_train, y_train = _tensors(args.data, "train")
    x_test, y_test = _tensors(args.data, "test")
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps_per_epoch = len(x_train) // 128
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=args.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(0)
    # the global steps after which a checkpoint is written (0: before the first step)
    saves = {round(p * steps_per_epoch): p for p in args.checkpoint_at} if args.checkpoints else {}
    if 0 in saves:
        _save_checkpoint(model, args.checkpoints, saves[0], x_test, y_test)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        for step in range(steps_per_epoch):
            idx = order[step * 128:(step + 1) * 128]
            xb = x_train[idx]
            # light augmentation: random horizontal flips (clothes are left-right symmetric)
            flip = torch.rand(len(xb), generator=gen) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(3), xb)
            loss = nn.functional.cross_entropy(model(xb), y_train[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done = epoch * steps_per_epoch + step + 1
            if done in saves:
                _save_checkpoint(model, args.checkpoints, saves[done], x_test, y_test)
                model.train()   # evaluation switched BatchNorm and dropout to eval mode
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}, "
              f"test accuracy {evaluate(model, x_test, y_test):.4f}", flush=True)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), "
          f"test accuracy {np.round(evaluate(model, x_test, y_test), 4)}")


if __name__ == "__main__":
    main()
