"""Circuits / graph speed figures, as ratios measured in one run (CPU).

1. receptive_fields for all 37 VGG19 feature layers at 224 px (fake-tensor shapes) vs the same with
   a real forward for the shapes.
2. the arithmetic box of every unit of VGG19 features.10 at 64 px vs autograd's support of 16 of them.
3. channel_contributions for VGG19 block3_conv1 (128 input channels, 9 top images) vs one conv per
   input channel (the obvious way to get a per-channel split).
4. capture_inputs (stops at the conv) vs a full forward with a hook, VGG19 features.10, 9 x 224 px.
"""
import time
from unittest import mock

import torch
import torch.nn.functional as F
import torchvision

from reportgen import graph
from reportgen.analyses.kernels import capture_inputs, channel_contributions
from reportgen.graph import effective_weights
from reportgen.graph import receptive_fields


def best(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


torch.manual_seed(0)
torch.set_grad_enabled(True)
vgg = torchvision.models.vgg19(weights=None).eval()
layers = [f"features.{i}" for i in range(37)]

fake = best(lambda: receptive_fields(vgg, layers, (224, 224)))
with mock.patch("reportgen.graph.receptive.FakeTensorMode", side_effect=RuntimeError("no fake")):
    real = best(lambda: receptive_fields(vgg, layers, (224, 224)))
print(f"1. receptive_fields, 37 layers @224: fake shapes {fake:.3f}s, real forward {real:.3f}s -> {real / fake:.1f}x")

field = receptive_fields(vgg, ["features.10"], (64, 64))["features.10"]
h, w = field.output_size
arith = best(lambda: [field.box(y, x) for y in range(h) for x in range(w)])
x = torch.randn(16, 3, 64, 64, requires_grad=True)
def autograd_boxes():
    out = vgg.features[:11](x)
    out[torch.arange(16), 0, torch.arange(16), torch.arange(16)].sum().backward()
grad = best(autograd_boxes, 1)
per_arith, per_grad = arith / (h * w), grad / 16
print(f"2. per unit box: arithmetic {per_arith * 1e6:.2f}us, autograd {per_grad * 1e3:.2f}ms -> {per_grad / per_arith:.0f}x")

conv = vgg.features[10]
weight, bias = effective_weights(conv, None)
xb = torch.randn(9, 3, 224, 224)
inputs = capture_inputs(vgg, "features.10", xb)  # (9, 128, 56, 56)
locations = torch.randint(0, 56, (9, 2))
ours = best(lambda: channel_contributions(weight, inputs, 31, locations, conv.stride, conv.padding), 5)
def per_channel_convs():
    out = []
    for j in range(inputs.shape[1]):
        single = F.conv2d(inputs[:, j:j + 1], weight[31:32, j:j + 1], None, 1, 1)  # (9, 1, 56, 56)
        out.append(single[torch.arange(9), 0, locations[:, 0], locations[:, 1]])
    return torch.stack(out, 1)
theirs = best(per_channel_convs, 2)
ref = per_channel_convs().double()
assert torch.allclose(channel_contributions(weight, inputs, 31, locations, 1, 1), ref, atol=1e-4)
print(f"3. channel_contributions: {ours * 1e3:.2f}ms vs per-channel convs {theirs * 1e3:.1f}ms -> {theirs / ours:.0f}x")

with torch.no_grad():
    early = best(lambda: capture_inputs(vgg, "features.10", xb), 2)
    def full():
        store = []
        handle = vgg.features[10].register_forward_pre_hook(lambda m, a: store.append(a[0].clone()))
        try:
            vgg(xb)
        finally:
            handle.remove()
    whole = best(full, 2)
print(f"4. capture_inputs: {early:.3f}s vs full forward {whole:.3f}s -> {whole / early:.1f}x")
