"""Train the demo model deterministically: `python -m reportgen.demo.train [--data DIR]`.

Reads the full Fashion-MNIST (Debian's `dataset-fashion-mnist` puts it in
/usr/share/datasets/fashion-mnist/), trains on the 60k training images and writes
`reportgen/demo/fashion_cnn.pt` (a state_dict) after printing the test accuracy.
"""

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("fashion_cnn.pt"))
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
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}, "
              f"test accuracy {evaluate(model, x_test, y_test):.4f}", flush=True)
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB), "
          f"test accuracy {np.round(evaluate(model, x_test, y_test), 4)}")


if __name__ == "__main__":
    main()
