"""reportgen.graph.sources: where a conv's input channels come from."""

import pytest

from reportgen.demo import fashion_cnn
from reportgen.errors import ModelError
from reportgen.graph import Source, trace_source
from tests.helpers.graph_models import ConcatNet, DepthwiseNet, SmallCNN, torchvision_model


def test_trace_source_vgg19_block3_conv1_reads_block2_conv2():
    source = trace_source(torchvision_model("vgg19"), "features.10")
    assert source == Source("layer", "features.7", "Conv2d", ("features.9", "features.8", "features.7"))
    assert source.channel_sources(31) == [(source, 31)]
    assert trace_source(torchvision_model("vgg19"), "features.0") == Source("input")


def test_trace_source_resnet18_residual_sum():
    resnet = torchvision_model("resnet18")
    stem = Source("layer", "conv1", "Conv2d", ("maxpool", "relu", "bn1", "conv1"))
    assert trace_source(resnet, "layer1.0.conv1") == stem
    block0 = Source("sum", path=("layer1.0.relu", "layer1.0"), branches=(
        Source("layer", "layer1.0.conv2", "Conv2d", ("layer1.0.bn2", "layer1.0.conv2")), stem))
    block1 = Source("sum", path=("layer1.1.relu", "layer1.1", "layer1"), branches=(
        Source("layer", "layer1.1.conv2", "Conv2d", ("layer1.1.bn2", "layer1.1.conv2")), block0))
    assert trace_source(resnet, "layer2.0.conv1") == block1
    assert trace_source(resnet, "layer2.0.downsample.0") == block1
    assert [(s.producer, c) for s, c in block1.channel_sources(5)] == [
        ("layer1.1.conv2", 5), ("layer1.0.conv2", 5), ("conv1", 5)]


def test_trace_source_with_batchnorm_concat_and_product():
    assert trace_source(fashion_cnn.build(), "features.conv3") == Source("layer", "features.conv2", "Conv2d", (
        "features.pool1", "features.conv2_relu", "features.conv2_bn", "features.conv2"))
    small = SmallCNN()
    assert trace_source(small, "features.4") == Source(
        "layer", "features.0", "Conv2d", ("features.3", "features.2", "features.1", "features.0"))
    source = trace_source(ConcatNet(), "head")
    left = Source("layer", "left", "Conv2d", ("left",))
    right = Source("layer", "right.0", "Conv2d", ("right.1", "right", "right.0"))
    assert source == Source("concat", branches=(left, right), offsets=(0, 2))
    assert source.channel_sources(1) == [(left, 1)] and source.channel_sources(3) == [(right, 1)]
    assert trace_source(ConcatNet(), "tail") == Source("other", producer_type="mul")
    with pytest.raises(ModelError, match=r"^'relu' is not a Conv2d but ReLU 'relu'$"):
        trace_source(ConcatNet(), "relu")


def test_trace_source_depthwise_keeps_the_bn_path():
    assert trace_source(DepthwiseNet(), "3") == Source("layer", "0", "Conv2d", ("2", "1", "0"))
