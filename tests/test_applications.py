"""The papers' architectures build with the documented shapes and convert."""

import numpy as np
import pytest

import keras_snn
from keras_snn import applications


@pytest.mark.parametrize(
    "builder, input_shape, weighted",
    [
        (applications.dense_mnist, (28, 28, 1), 3),
        (applications.conv_mnist, (28, 28, 1), 6),
        (applications.conv_cifar, (32, 32, 3), 11),
        (applications.vgg6, (28, 28, 1), 5),
        (applications.resnet_small, (16, 16, 1), 11),  # stem, 8 block convs, 1 projection, dense
    ],
)
def test_architectures(builder, input_shape, weighted):
    model = builder(input_shape=input_shape, classes=7)
    assert model.output_shape == (None, 7)
    kernels = [w for w in model.weights if w.name == "kernel"]
    assert len(kernels) == weighted


@pytest.mark.parametrize("builder", [applications.dense_mnist, applications.resnet_small])
def test_architectures_convert(builder):
    model = builder(input_shape=(12, 12, 1), classes=4)
    x = np.random.default_rng(0).random((16, 12, 12, 1)).astype("float32")
    snn = keras_snn.convert_model(model, x, timesteps=4)
    assert tuple(snn(x[:2]).shape) == (2, 4, 4)


def test_bad_activation():
    with pytest.raises(ValueError, match="activation"):
        applications.dense_mnist(activation="tanh")
