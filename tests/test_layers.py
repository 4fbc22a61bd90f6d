"""Layer listing and Keras-style aliases on real torchvision architectures."""

import pytest
import torchvision

from reportgen.errors import SpecError
from reportgen.layers import keras_aliases, list_layers, resolve_layers
from reportgen.spec import LayerSpec


@pytest.fixture(scope="module")
def vgg19():
    return torchvision.models.vgg19(weights=None).eval()


def test_vgg19_aliases_match_keras(vgg19):
    aliases = keras_aliases(vgg19)
    # Keras' VGG19: 2+2+4+4+4 convs in 5 blocks, each block closed by a pool
    assert [a for a in aliases if a.startswith("block3")] == [
        "block3_conv1", "block3_conv2", "block3_conv3", "block3_conv4", "block3_pool"]
    assert len([a for a in aliases if "conv" in a]) == 16
    assert aliases["block3_conv1"] == ("features.11", "features.10")   # the ReLU after conv features.10
    assert aliases["block2_pool"] == ("features.9", "")
    assert aliases["block5_conv4"] == ("features.35", "features.34")


def test_resolve_alias_and_path(vgg19):
    layers = resolve_layers(vgg19, [LayerSpec(name="block3_conv1", filters=[31, 9]),
                                    LayerSpec(name="features.10", filters="0-63")], 64, 3)
    assert (layers[0].path, layers[0].conv_path, layers[0].channels) == ("features.11", "features.10", 256)
    assert layers[0].filters == [9, 31] and layers[0].output_shape == (256, 16, 16)
    assert layers[1].conv_path == "features.10" and layers[1].filters == list(range(64))
    assert layers[0].slug != layers[1].slug


def test_filter_out_of_range(vgg19):
    with pytest.raises(SpecError) as info:
        resolve_layers(vgg19, [LayerSpec(name="block1_conv1", filters=[64])], 64, 3)
    assert info.value.key == "layers[0].filters"
    assert info.value.message == "filter 64 is out of range: 'block1_conv1' has 64 channels (0-63)"


def test_list_layers_shapes(vgg19):
    rows = {r.path: r for r in list_layers(vgg19, 224, 3)}
    assert rows["features.10"].output_shape == (256, 56, 56) and rows["features.11"].alias == "block3_conv1"
    assert rows["features.10"].params == 128 * 256 * 9 + 256
    assert rows["classifier.6"].output_shape == (1000,)


def test_resnet_has_no_aliases_but_paths_work():
    net = torchvision.models.resnet18(weights=None).eval()
    assert keras_aliases(net) == {}
    (layer,) = resolve_layers(net, [LayerSpec(name="layer2.0.conv1")], 64, 3)
    assert layer.channels == 128 and layer.conv_path == "layer2.0.conv1"
