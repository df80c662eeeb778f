"""measure_sparsity reads the ANN itself and gives the numbers the converted network gave."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_snn
from keras_snn import applications
from keras_snn.conversion.calibration import analog_forward
from keras_snn.conversion.calibration import calibration_batches
from keras_snn.graph import layer_graph
from keras_snn.layers.base import SynapticLayer
from keras_snn.metrics import combined_sparsity
from keras_snn.plan import Carries
from keras_snn.plan import Plan


def converted_sparsity(model, x, batch_size=256):
    """The measure_sparsity this package had before it read the ANN graph.

    Kept as the reference: it converted the model (normalization "none", so the
    spiking network in ANN mode is the ANN with BN folded in) and counted the
    zero outputs of every layer that makes spike events (a neuron's, or a
    global pooling's graded means) and the zero weights of every spiking kernel.
    """
    network = keras_snn.convert_model(model, normalization="none").network
    graph = layer_graph(network)
    hidden = [
        node.key for node in Plan(network).nodes
        if node.synaptic and node.kind is Carries.SPIKES
        and (node.layer.neuron is not None or node.layer.averages_inputs)
    ]
    zeros = total = 0
    for batch in calibration_batches(x, batch_size):
        values = analog_forward(graph, batch, {})
        for key in hidden:
            zeros += int(tf.math.count_nonzero(tf.equal(values[key], 0)))
            total += int(tf.size(values[key]))
    kernels = [
        np.asarray(layer.kernel) for layer in network.layers
        if isinstance(layer, SynapticLayer) and hasattr(layer, "kernel")
    ]
    s_a = zeros / total
    s_w = sum(int(np.sum(k == 0)) for k in kernels) / sum(k.size for k in kernels)
    return {"activation": s_a, "weight": s_w, "combined": combined_sparsity(s_a, s_w)}


def randomize_batch_norm(model, seed=0):
    """Moving statistics and affine parameters far from the identity, so folding matters."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            randomize_batch_norm(layer, seed + 1)
        elif isinstance(layer, keras.layers.BatchNormalization):
            draws = {
                "gamma": lambda shape: rng.uniform(0.5, 1.5, shape),
                "beta": lambda shape: rng.normal(0, 0.3, shape),
                "moving_mean": lambda shape: rng.normal(0, 0.3, shape),
                "moving_variance": lambda shape: rng.uniform(0.5, 2.0, shape),
            }
            for variable in layer.weights:
                name = variable.path.split("/")[-1]
                variable.assign(draws[name](variable.shape).astype("float32"))
    return model


def prune_some_weights(model, fraction=0.3, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            kernel, *rest = layer.get_weights()
            kernel[rng.random(kernel.shape) < fraction] = 0.0
            layer.set_weights([kernel, *rest])
    return model


def mlp_with_batch_norm():
    inputs = keras.Input((12,))
    x = keras.layers.Dense(16)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Dense(10, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x)), (12,)


def conv_with_pooling():
    inputs = keras.Input((10, 10, 2))
    x = keras.layers.Conv2D(6, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.DepthwiseConv2D(3, activation="relu6")(x)
    x = keras.layers.MaxPooling2D(1)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(4)(x)), (10, 10, 2)


def residual():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    y = keras.layers.Conv2D(8, 3, padding="same")(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(8, 3, padding="same")(y)
    y = keras.layers.BatchNormalization()(y)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5)(x)), (8, 8, 3)


def nested():
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, keras.layers.Dense(9, activation="relu")(inner_in), name="inner")
    inputs = keras.Input((6,))
    x = inner(inputs)
    x = keras.layers.Dense(7, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x)), (6,)


def resnet_small():
    return applications.resnet_small(input_shape=(12, 12, 1), width=4), (12, 12, 1)


def conv_mnist():
    return applications.conv_mnist(input_shape=(12, 12, 1)), (12, 12, 1)


@pytest.mark.parametrize(
    "build", [mlp_with_batch_norm, conv_with_pooling, residual, nested, resnet_small, conv_mnist]
)
def test_measure_sparsity_equals_the_converted_networks_numbers(build):
    keras.utils.set_random_seed(0)
    model, input_shape = build()
    prune_some_weights(randomize_batch_norm(model))
    x = np.random.default_rng(1).normal(size=(40,) + input_shape).astype("float32")
    measured = keras_snn.measure_sparsity(model, x, batch_size=16)
    reference = converted_sparsity(model, x, batch_size=16)
    assert 0.05 < measured["activation"] < 0.95  # a test that can tell counts apart
    for key in ("activation", "weight", "combined"):
        assert measured[key] == pytest.approx(reference[key], abs=1e-12), key


def test_measure_sparsity_reads_tf_data_and_leaves_the_model_alone():
    keras.utils.set_random_seed(0)
    model, input_shape = mlp_with_batch_norm()
    x = np.random.default_rng(2).normal(size=(32,) + input_shape).astype("float32")
    weights = [w.copy() for w in model.get_weights()]
    from_array = keras_snn.measure_sparsity(model, x)
    from_dataset = keras_snn.measure_sparsity(model, tf.data.Dataset.from_tensor_slices(x).batch(8))
    assert from_dataset == pytest.approx(from_array)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


def test_measure_sparsity_refuses_a_model_without_hidden_relu():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no hidden ReLU"):
        keras_snn.measure_sparsity(model, np.ones((4, 3), "float32"))
