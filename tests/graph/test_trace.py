"""reportgen.graph.trace: tracing, layer lookup and find_conv."""

import pytest

from reportgen.errors import ModelError
from reportgen.graph import find_conv, trace
from tests.helpers.graph_models import Branchy, SmallCNN, torchvision_model


def test_untraceable_model_is_named():
    with pytest.raises(ModelError, match=r"^cannot trace Branchy with torch.fx \(TraceError: symbolically traced "
                                         r"variables cannot be used as inputs to control flow\); the graph-based "
                                         r"sections need a traceable model$"):
        trace(Branchy())


def test_find_conv():
    vgg = torchvision_model("vgg19")
    path, conv, bn = find_conv(vgg, "features.11")  # block3_conv1's ReLU (in place)
    assert (path, conv, bn) == ("features.10", vgg.features[10], None)
    small = SmallCNN()
    assert find_conv(small, "features.6") == ("features.4", small.features[4], small.features[5])
    assert find_conv(small, "features.5") == ("features.4", small.features[4], small.features[5])
    assert find_conv(small, "features.4") == ("features.4", small.features[4], None)  # the raw conv output
    with pytest.raises(ModelError, match=r"^layer 'features.3' is not the output of a Conv2d: it comes from "
                                         r"MaxPool2d 'features.3'$"):
        find_conv(small, "features.3")
    resnet = torchvision_model("resnet18")
    with pytest.raises(ModelError, match=r"^layer 'layer1.0' is not the output of a Conv2d: it comes from add$"):
        find_conv(resnet, "layer1.0")
    assert find_conv(resnet, "layer2.0.downsample") == (
        "layer2.0.downsample.0", resnet.layer2[0].downsample[0], resnet.layer2[0].downsample[1])
