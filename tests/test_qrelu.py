"""QReLU (seed 004 eq. 1): forward, straight-through gradients, saving, exact conversion."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_snn
from keras_snn.layers import QReLU


def reference_qrelu(x, bound, levels):
    """Eq. 1 written out: 0 below 0, bound above it, floor(P x / bound) bound / P between."""
    out = np.floor(x * levels / bound) * bound / levels
    return np.where(x <= 0, 0.0, np.where(x >= bound, bound, out))


@pytest.mark.parametrize("levels, bound", [(1, 1.0), (4, 2.0), (8, 0.7), (16, 3.0)])
def test_forward_is_equation_1(levels, bound):
    x = np.random.default_rng(levels).normal(0, bound, 500).astype("float32")
    layer = QReLU(levels=levels, initial_bound=bound)
    np.testing.assert_allclose(layer(x), reference_qrelu(x, bound, levels), atol=1e-6)


def test_straight_through_gradients_reach_input_and_bound():
    x = tf.constant([-1.0, 0.2, 0.9, 1.5, 3.0])
    layer = QReLU(levels=4, initial_bound=1.0, bound_learning_rate_scale=0.5)
    layer.build(x.shape)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = tf.reduce_sum(layer(x) * tf.constant([1.0, 2.0, 3.0, 4.0, 5.0]))
    np.testing.assert_allclose(tape.gradient(y, x), [0, 2, 3, 0, 0])
    # d/d(bound) = upstream where x >= bound (4 + 5); the stored parameter is
    # bound / 0.5, so its gradient is 0.5x that.
    (parameter_gradient,) = tape.gradient(y, [layer.bound_parameter.value])
    assert float(parameter_gradient) == pytest.approx(9.0 * 0.5)
    assert float(layer.bound) == pytest.approx(1.0)


def test_bound_trains_and_model_saves(tmp_path):
    x = np.random.default_rng(0).random((256, 6)).astype("float32")
    y = (x.sum(1) > 3).astype("int64")
    model = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8), QReLU(levels=4, initial_bound=0.5),
        keras.layers.Dense(2),
    ])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, verbose=0)
    assert float(model.layers[1].bound) != pytest.approx(0.5)
    path = str(tmp_path / "qrelu.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(restored(x), model(x))
    assert restored.layers[1].get_config() == model.layers[1].get_config()


def qrelu_identity_model(levels, bound):
    """Dense -> QReLU -> identity Dense: the readout exposes the spike counts."""
    rng = np.random.default_rng(levels)
    model = keras.Sequential([
        keras.Input((5,)), keras.layers.Dense(7), QReLU(levels=levels, initial_bound=bound),
        keras.layers.Dense(7, use_bias=False),
    ])
    model.layers[0].set_weights([rng.normal(0, 1, (5, 7)), rng.normal(0, 0.3, 7)])
    model.layers[2].set_weights([np.eye(7)])
    return model


@pytest.mark.parametrize("neuron", ["if", "buffered"])
@pytest.mark.parametrize("spike_max", [1, 2])
def test_first_layer_spike_counts_equal_qrelu_levels_exactly(neuron, spike_max):
    levels, bound = 8, 1.5
    model = qrelu_identity_model(levels, bound)
    x = np.random.default_rng(1).random((64, 5)).astype("float32")
    snn = keras_snn.convert_model(model, neuron=neuron, spike_max=spike_max)  # no data needed
    steps = levels // spike_max
    readout = snn(x, timesteps=steps).numpy()[:, -1]
    # Readout after T steps = mean spikes x (bound / spike_max) per step:
    counts = readout * steps / (bound / spike_max)
    expected = model.layers[1](model.layers[0](x)).numpy() * levels / bound
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-4)
    np.testing.assert_array_equal(np.round(counts), np.round(expected))


def test_qrelu_models_default_to_buffered_neurons():
    snn = keras_snn.convert_model(qrelu_identity_model(4, 1.0))
    hidden = [layer for layer in snn.network.layers if getattr(layer, "neuron", None)]
    assert all(isinstance(layer.neuron, keras_snn.neurons.BufferedIF) for layer in hidden)
    relu = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu"),
                             keras.layers.Dense(2)])
    snn = keras_snn.convert_model(relu, np.random.rand(8, 5))
    assert isinstance(snn.network.layers[2].neuron, keras_snn.neurons.IF)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"levels": 0}, "levels"), ({"initial_bound": 0.0}, "initial_bound"),
     ({"bound_learning_rate_scale": -1.0}, "bound_learning_rate_scale")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QReLU(**kwargs)
