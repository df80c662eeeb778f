"""Spike-based training (DIET-SNN): surrogate gradients through the time loop."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_snn
from keras_snn import SpikingModel
from keras_snn import layers
from keras_snn import neurons

RNG = np.random.default_rng(0)
X = RNG.random((128, 6)).astype("float32")
Y = (X[:, :3].sum(1) > X[:, 3:].sum(1)).astype("int64")


def lif_network(surrogate="piecewise_linear"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    x = layers.AnalogInput()(inputs)
    x = layers.SpikingDense(16, neuron=neurons.LIF(leak=0.9, surrogate=surrogate), name="h1")(x)
    x = layers.SpikingDense(16, neuron=neurons.LIF(leak=0.9, surrogate=surrogate), name="h2")(x)
    x = layers.SpikingDense(2, neuron=None, name="out")(x)
    return keras.Model(inputs, layers.Readout()(x))


def gradients(snn):
    loss = keras_snn.losses.ReadoutCrossentropy()
    with tf.GradientTape() as tape:
        value = loss(Y[:32], snn(X[:32], training=True))
    variables = snn.trainable_variables
    return {v.path: g for v, g in zip(variables, tape.gradient(value, variables))}


def test_gradients_reach_weights_leaks_and_thresholds():
    grads = gradients(SpikingModel(lif_network(), timesteps=5))
    for layer in ("h1", "h2"):
        for name in ("kernel", "bias", "leak", "threshold"):
            g = grads[f"{layer}/{name}"]
            assert g is not None and np.all(np.isfinite(g)), (layer, name)
            assert np.any(np.asarray(g) != 0), (layer, name)


def test_gradients_flow_through_bfloat16_synapses():
    full = gradients(SpikingModel(lif_network(), timesteps=5))
    narrow = gradients(SpikingModel(lif_network(), timesteps=5, synapse_dtype="bfloat16"))
    for path, g in narrow.items():
        assert g is not None and np.all(np.isfinite(g)), path
    # Only the rounding differs: the spike-fed layer's kernel gradient points
    # the same way as in full precision.
    a, b = (np.ravel(grads["h2/kernel"]) for grads in (full, narrow))
    assert not np.array_equal(a, b)  # the narrow products were used
    assert a @ b > 0.9 * np.linalg.norm(a) * np.linalg.norm(b)


def test_zero_surrogate_slope_trains_nothing_through_spikes():
    grads = gradients(SpikingModel(lif_network(neurons.PiecewiseLinear(slope=0.0)), timesteps=5))
    for layer in ("h1", "h2"):
        for name in ("kernel", "bias", "leak", "threshold"):
            g = grads[f"{layer}/{name}"]
            assert g is None or not np.any(np.asarray(g)), (layer, name)
    assert np.any(np.asarray(grads["out/kernel"]) != 0)  # the readout layer sees no spike function


def test_short_fit_lowers_the_loss_and_learns_leak_and_threshold(tmp_path):
    snn = SpikingModel(lif_network(), timesteps=4)
    snn.compile(
        optimizer=keras.optimizers.Adam(0.02),
        loss=keras_snn.losses.ReadoutCrossentropy(),
        metrics=[keras_snn.metrics.StepAccuracy()],
    )
    before = snn.evaluate(X, Y, verbose=0, return_dict=True)["loss"]
    snn.fit(X, Y, epochs=15, batch_size=32, verbose=0)
    after = snn.evaluate(X, Y, verbose=0, return_dict=True)["loss"]
    assert after < 0.8 * before
    hidden = snn.network.get_layer("h1")
    assert float(hidden.neuron_parameters["leak"]) != pytest.approx(0.9)
    assert float(hidden.threshold) != pytest.approx(1.0)
    assert 0.0 < float(hidden.neuron_parameters["leak"]) <= 1.0
    path = str(tmp_path / "trained.keras")
    snn.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(restored(X[:8]), snn(X[:8]))


def test_converted_lif_model_fine_tunes():
    ann = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(2),
    ])
    ann.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ann.fit(X, Y, epochs=5, verbose=0)
    snn = keras_snn.convert_model(ann, X, neuron="lif", timesteps=3)
    snn.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras_snn.losses.ReadoutCrossentropy())
    before = snn.evaluate(X, Y, verbose=0)
    snn.fit(X, Y, epochs=10, batch_size=32, verbose=0)
    assert snn.evaluate(X, Y, verbose=0) < before


def test_surrogate_errors_and_serialisation():
    with pytest.raises(ValueError, match="slope"):
        neurons.PiecewiseLinear(slope=-1.0)
    with pytest.raises(ValueError, match="surrogate"):
        neurons.IF(surrogate="triangle")
    neuron = neurons.LIF(surrogate=neurons.FastSigmoid(5.0))
    assert neurons.deserialize(neurons.serialize(neuron)) == neuron
    assert neurons.IF(surrogate=None).surrogate is None


def test_dropout_mask_is_fixed_over_time_and_off_at_inference():
    # A spiking layer copying its input (identity weights, threshold 1) read by
    # an identity readout: each readout entry is that neuron's spike rate.
    inputs = keras.Input((64,))
    x = layers.AnalogInput()(inputs)
    x = layers.SpikingDense(64, name="copy")(x)
    x = layers.SpikingDense(64, neuron=None, name="out")(x)
    network = keras.Model(inputs, layers.Readout()(x))
    eye = np.eye(64, dtype="float32")
    network.get_layer("copy").set_weights([eye, np.zeros(64, "float32"), np.float32(1.0)])
    network.get_layer("out").set_weights([eye, np.zeros(64, "float32"), np.float32(1.0)])
    snn = SpikingModel(network, timesteps=6, dropout=0.5)
    ones = np.ones((3, 64), "float32")
    trained = snn(ones, training=True).numpy()
    # Every step: a kept neuron contributes 1/(1-0.5) = 2, a dropped one 0, always the same.
    assert set(np.unique(trained)) <= {0.0, 2.0}
    assert np.all(trained == trained[:, :1])
    assert 0.3 < (trained[:, 0] == 0).mean() < 0.7
    np.testing.assert_array_equal(snn(ones), np.ones((3, 6, 64)))  # inference: no dropout
    assert SpikingModel.from_config(snn.get_config()).dropout == 0.5
    with pytest.raises(ValueError, match="dropout"):
        SpikingModel(network, dropout=1.0)
