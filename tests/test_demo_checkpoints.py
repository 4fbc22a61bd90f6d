"""The demo's checkpoints (reportgen/demo/checkpoints/, written by `python -m reportgen.demo.train --checkpoints`
during the run that wrote fashion_cnn.pt): small float16 files, each loaded by the report's own loader (the demo
spec's `model.checkpoints`), each as accurate on the shipped test split as train.py printed when it wrote it."""

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from reportgen.checkpoints import load_models
from reportgen.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "configs" / "data" / "fashion-mnist"
# what `python -m reportgen.demo.train --checkpoints reportgen/demo/checkpoints` printed (test accuracy, 10k images)
PRINTED = {"init": 0.1000, "epoch 0.1": 0.5234, "epoch 2": 0.8512, "epoch 5": 0.9247}


def _accuracy(module: torch.nn.Module) -> float:
    """Top-1 accuracy on the shipped t10k split, read and normalized here (mean 0.2860, std 0.3530)."""
    images = np.frombuffer(gzip.decompress((DATA / "t10k-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16)
    labels = np.frombuffer(gzip.decompress((DATA / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8)
    x = (torch.from_numpy(images.reshape(-1, 1, 28, 28).copy()).float() / 255 - 0.2860) / 0.3530
    module.eval()
    with torch.inference_mode():
        preds = torch.cat([module(x[i:i + 1000]).argmax(1) for i in range(0, len(x), 1000)]).numpy()
    return float((preds == labels).mean())


def test_the_demo_checkpoints_are_small_and_as_accurate_as_train_printed():
    spec = load_spec(REPO / "configs" / "fashion_mnist.yaml")
    entries = spec.model.checkpoints
    assert [e.name for e in entries] == list(PRINTED)
    for e in entries[:-1]:   # the earlier ones: float16 (the final one is fashion_cnn.pt, float32)
        state = torch.load(e.path, weights_only=True)
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}, e.name
        assert e.path.stat().st_size < 300_000, e.name
    model, earlier = load_models(spec)
    torch.set_num_threads(1)
    for e, loaded in zip(entries, earlier + [model]):
        assert _accuracy(loaded.module) == pytest.approx(PRINTED[e.name], abs=5e-5), e.name
