"""Spiking max pooling: the window max of cumulative spike counts, checked
against a NumPy brute force, plus conversion, operation counts and export."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_snn
from keras_snn import layers
from keras_snn import neurons

RNG = np.random.default_rng(0)
IMAGES = RNG.random((64, 8, 8, 2)).astype("float32")


# ------------------------------------------------------------ brute force
def window_max(x, pool, strides, padding):
    """NumPy max pooling of (batch, *spatial, channels), 'same' as TensorFlow pads."""
    spatial = x.shape[1:-1]
    pads, outs = [], []
    for size, k, s in zip(spatial, pool, strides):
        if padding == "same":
            out = -(-size // s)
            total = max((out - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))
        else:
            out = (size - k) // s + 1
            pads.append((0, 0))
        outs.append(out)
    padded = np.pad(x, [(0, 0)] + pads + [(0, 0)], constant_values=-np.inf)
    result = np.empty((x.shape[0], *outs, x.shape[-1]), x.dtype)
    for index in np.ndindex(*outs):
        window = tuple(slice(i * s, i * s + k) for i, s, k in zip(index, strides, pool))
        block = padded[(slice(None),) + window + (slice(None),)]
        result[(slice(None),) + index + (slice(None),)] = block.max(
            axis=tuple(range(1, len(spatial) + 1))
        )
    return result


def windows_holding(shape, pool, strides, padding):
    """How many pooling windows hold each input position (brute force)."""
    ones = np.zeros((1, *shape), "float32")
    counts = np.zeros(shape, "float32")
    for position in np.ndindex(*shape[:-1]):
        probe = ones.copy()
        probe[(0,) + position + (0,)] = 1.0
        counts[position] = (window_max(probe, pool, strides, padding)[..., 0] > 0).sum()
    return counts


def run_steps(layer, frames):
    """Step a layer from rest over (T, batch, ...) frames; outputs (T, batch, ...)."""
    layer.build((None,) + frames.shape[2:])
    states = layer.initial_state(frames.shape[1])
    outputs = []
    for t, frame in enumerate(frames):
        out, states = layer.step(tf.constant(frame), states, t)
        outputs.append(np.asarray(out))
    return np.stack(outputs)


def spike_trains(shape, steps, values, rng=RNG):
    return rng.choice(np.asarray(values, "float32"), size=(steps,) + shape)


# ------------------------------------------------------------- the maths
@pytest.mark.parametrize("pool, strides, padding", [
    (2, None, "valid"), (3, 2, "valid"), (3, 1, "same"), (2, 2, "same"), ((2, 3), (1, 2), "valid"),
])
def test_binary_inputs_give_binary_outputs_whose_count_is_the_window_max(pool, strides, padding):
    layer = layers.SpikingMaxPooling2D(pool, strides=strides, padding=padding)
    frames = spike_trains((2, 7, 6, 3), 40, [0.0, 1.0])
    out = run_steps(layer, frames)
    assert set(np.unique(out)) <= {0.0, 1.0}
    cumulative_in, cumulative_out = np.cumsum(frames, axis=0), np.cumsum(out, axis=0)
    for t in range(len(frames)):
        expected = window_max(cumulative_in[t], layer.pool_size, layer.strides, padding)
        np.testing.assert_array_equal(cumulative_out[t], expected)


def test_multibit_inputs_stay_within_spike_max():
    layer = layers.SpikingMaxPooling2D(2, strides=1)
    frames = spike_trains((3, 5, 5, 2), 30, [0.0, 1.0, 2.0, 4.0])
    out = run_steps(layer, frames)
    assert out.min() >= 0.0 and out.max() <= 4.0
    assert np.all(out == np.round(out))
    assert out.max() > 2.0  # the bound is reached, not just respected
    cumulative = np.cumsum(frames, axis=0)
    np.testing.assert_array_equal(
        np.cumsum(out, axis=0)[-1], window_max(cumulative[-1], (2, 2), (1, 1), "valid")
    )


def test_negative_outputs_only_from_signed_inputs():
    # A buffered neuron's -1 undoes an earlier spike: counts never go below 0.
    frames = spike_trains((4, 6, 2), 50, [0.0, 1.0])
    undo = (RNG.random(frames.shape) < 0.3) & (np.cumsum(frames, axis=0) > 1)
    frames = np.where(undo & (frames == 0), -1.0, frames).astype("float32")
    layer = layers.SpikingMaxPooling1D(2)
    out = run_steps(layer, frames)
    assert set(np.unique(out)) <= {-1.0, 0.0, 1.0} and out.min() == -1.0
    cumulative = np.cumsum(frames, axis=0)
    for t in range(len(frames)):
        np.testing.assert_array_equal(
            np.cumsum(out, axis=0)[t], window_max(cumulative[t], (2,), (2,), "valid")
        )


@pytest.mark.parametrize("layer_class, shape", [
    (layers.SpikingGlobalMaxPooling2D, (2, 5, 4, 3)), (layers.SpikingGlobalMaxPooling1D, (2, 9, 3)),
])
def test_global_max_pooling_counts_are_the_max_count(layer_class, shape):
    frames = spike_trains(shape, 25, [0.0, 1.0])
    out = run_steps(layer_class(), frames)
    assert set(np.unique(out)) <= {0.0, 1.0}
    axes = tuple(range(1, len(shape) - 1))
    np.testing.assert_array_equal(
        np.cumsum(out, axis=0), np.cumsum(frames, axis=0).max(axis=tuple(a + 1 for a in axes))
    )
    keep = run_steps(layer_class(keepdims=True), frames)
    assert keep.shape == (25, shape[0]) + (1,) * len(axes) + (shape[-1],)


def pooled_rates_network(encoder, cumulative=True):
    inputs = keras.Input((6, 6, 2))
    x = encoder(inputs)
    x = layers.SpikingMaxPooling2D(3, strides=1, padding="same", cumulative=cumulative)(x)
    return keras.Model(inputs, layers.Readout()(x))


def test_readout_converges_to_the_max_of_the_rates():
    snn = keras_snn.SpikingModel(pooled_rates_network(layers.SpikingInput()), timesteps=400)
    x = IMAGES[:8, :6, :6]
    out = np.asarray(snn(x))
    expected = window_max(x, (3, 3), (1, 1), "same")
    errors = [np.abs(out[:, t - 1] - expected).max() for t in (10, 50, 400)]
    # IF input neurons fire floor(t x) times: the max count is off by < 1.
    for t, error in zip((10, 50, 400), errors):
        assert error <= 1.0 / t + 1e-6
    assert errors[0] > errors[1] > errors[2]


def test_analog_input_is_pooled_exactly_at_every_step():
    network = pooled_rates_network(layers.AnalogInput(), cumulative=False)
    snn = keras_snn.SpikingModel(network, timesteps=5)
    x = IMAGES[:4, :6, :6]
    out = np.asarray(snn(x))
    expected = window_max(x, (3, 3), (1, 1), "same")
    for t in range(5):
        np.testing.assert_allclose(out[:, t], expected, rtol=1e-6)


# --------------------------------------------------------- operation counts
def test_operations_are_events_times_windows_plus_one_and_pooled_events_times_fanout():
    inputs = keras.Input((8, 8, 2))
    x = layers.EventInput()(inputs)
    x = layers.SpikingMaxPooling2D(3, strides=2, name="pool")(x)  # row/col 7: no window
    x = keras.layers.Flatten()(x)
    x = layers.SpikingDense(3, neuron=None)(x)
    network = keras.Model(inputs, layers.Readout()(x))
    dense = network.layers[-2]
    kernel = np.asarray(dense.kernel)
    kernel[RNG.random(kernel.shape) < 0.4] = 0.0  # pruned synapses cost nothing
    dense.kernel.assign(kernel)
    snn = keras_snn.SpikingModel(network)
    frames = spike_trains((3, 8, 8, 2), 12, [0.0, 1.0]).transpose(1, 0, 2, 3, 4)
    record = snn.run(frames)

    windows = windows_holding((8, 8, 2), (3, 3), (2, 2), "valid")
    assert windows[7].sum() == 0 and windows[2, 2, 0] == 4  # the geometry is tested
    per_event = windows + (windows > 0)  # one accumulate + one compare per window
    expected_pool = np.einsum("btijc,ijc->bt", frames != 0, per_event)
    np.testing.assert_allclose(record["layer_ops"]["pool"], expected_pool)

    pooled = np.cumsum(frames, axis=1)
    pooled = np.stack([window_max(pooled[:, t], (3, 3), (2, 2), "valid") for t in range(12)], 1)
    pooled_events = np.diff(pooled, axis=1, prepend=0.0).reshape(3, 12, -1) != 0
    fanout = (kernel != 0).sum(axis=1)
    expected_dense = pooled_events @ fanout
    dense_name = dense.name
    np.testing.assert_allclose(record["layer_ops"][dense_name], expected_dense)
    np.testing.assert_allclose(
        record["synaptic_ops"], expected_pool + expected_dense
    )


def test_analog_max_pooling_counts_its_comparisons_as_input_work():
    network = pooled_rates_network(layers.AnalogInput(), cumulative=False)
    snn = keras_snn.SpikingModel(network)
    windows = windows_holding((6, 6, 2), (3, 3), (1, 1), "same")
    assert snn.input_macs() == pytest.approx(windows.sum())
    assert snn.run(IMAGES[:2, :6, :6])["layer_ops"] == {}


# --------------------------------------------------------------- conversion
def max_pool_ann(inner=None, functional=False):
    layers_ = [
        keras.layers.Conv2D(6, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.GlobalMaxPooling2D(),
        keras.layers.Dense(3),
    ]
    if inner is not None:
        layers_[:2] = inner
    if not functional:
        return keras.Sequential([keras.Input((8, 8, 2))] + layers_)
    inputs = keras.Input((8, 8, 2))
    x = inputs
    for layer in layers_:
        x = layer(x)
    return keras.Model(inputs, x)


def readout_errors(ann, snn, steps):
    expected = ann.predict(IMAGES[:16], verbose=0)
    out = np.asarray(snn(IMAGES[:16], timesteps=max(steps)))
    scale = np.abs(expected).max()
    return [np.abs(out[:, t - 1] - expected).max() / scale for t in steps]


@pytest.mark.parametrize("functional, per_channel", [(False, False), (True, True)])
def test_converted_max_pooling_converges_to_the_ann(functional, per_channel):
    ann = max_pool_ann(functional=functional)
    snn = keras_snn.convert_model(ann, IMAGES, normalization="max", per_channel=per_channel)
    kinds = [type(layer).__name__ for layer in snn.network.layers]
    assert "SpikingMaxPooling2D" in kinds and "SpikingGlobalMaxPooling2D" in kinds
    assert all(getattr(layer, "cumulative", True) for layer in snn.network.layers)
    errors = readout_errors(ann, snn, (20, 100, 400))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.03


def test_relu_after_max_pooling_converts_like_relu_before_it():
    conv = keras.layers.Conv2D(6, 3, padding="same")
    after = max_pool_ann([conv, keras.layers.BatchNormalization(),
                          keras.layers.MaxPooling2D(2), keras.layers.ReLU(6.0)])
    after.layers[1].set_weights([w + 0.1 for w in after.layers[1].get_weights()])
    before = max_pool_ann([keras.layers.Conv2D(6, 3, padding="same"),
                           keras.layers.BatchNormalization(), keras.layers.ReLU(6.0),
                           keras.layers.MaxPooling2D(2)])
    before.set_weights(after.get_weights())
    np.testing.assert_allclose(
        after.predict(IMAGES, verbose=0), before.predict(IMAGES, verbose=0), atol=1e-5
    )
    snn_after = keras_snn.convert_model(after, IMAGES, timesteps=16)
    snn_before = keras_snn.convert_model(before, IMAGES, timesteps=16)
    np.testing.assert_allclose(snn_after(IMAGES[:8]), snn_before(IMAGES[:8]), atol=1e-5)


def test_max_pooling_of_the_input_is_analog_and_exact():
    ann = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.MaxPooling2D(2, padding="same"),
        keras.layers.Flatten(), keras.layers.Dense(3),
    ])
    snn = keras_snn.convert_model(ann, timesteps=3)
    pool = snn.network.layers[2]
    assert isinstance(pool, layers.SpikingMaxPooling2D) and not pool.cumulative
    out = np.asarray(snn(IMAGES[:8]))
    for t in range(3):  # no spiking layer at all: every step is the ANN
        np.testing.assert_allclose(out[:, t], ann.predict(IMAGES[:8], verbose=0), atol=1e-5)


def test_qrelu_model_with_max_pooling_converts_with_buffered_multibit_neurons():
    ann = max_pool_ann([keras.layers.Conv2D(6, 3, padding="same"),
                        layers.QReLU(levels=4, initial_bound=1.0),
                        keras.layers.MaxPooling2D(2)])
    # The options that were the defaults when this test was written (the
    # error from rest shrinks with T); "auto" starts near its floor already.
    snn = keras_snn.convert_model(
        ann, IMAGES, spike_max=2, per_channel=False, initial_membrane=0.0
    )
    pool = next(l for l in snn.network.layers if isinstance(l, layers.SpikingMaxPooling2D))
    producer = snn.network.layers[snn.network.layers.index(pool) - 1]
    assert isinstance(producer.neuron, neurons.BufferedIF)
    record = snn.run(IMAGES[:8], timesteps=64)
    assert np.isfinite(np.asarray(record["readout"])).all()
    errors = readout_errors(ann, snn, (8, 64))
    assert errors[1] < errors[0]


def test_spiking_input_encoding_pools_spikes_cumulatively():
    ann = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
        keras.layers.Dense(3),
    ])
    snn = keras_snn.convert_model(ann, IMAGES, input_encoding="spiking", timesteps=200)
    assert snn.network.layers[2].cumulative
    errors = readout_errors(ann, snn, (20, 200))
    assert errors[1] < errors[0] and errors[1] < 0.02


# ---------------------------------------------------------- keras object
def test_config_and_keras_round_trip(tmp_path):
    ann = max_pool_ann()
    snn = keras_snn.convert_model(ann, IMAGES, timesteps=6)
    pool = next(l for l in snn.network.layers if isinstance(l, layers.SpikingMaxPooling2D))
    config = pool.get_config()
    assert {"pool_size": (2, 2), "strides": (2, 2), "padding": "valid", "cumulative": True}.items() \
        <= config.items()
    assert layers.SpikingMaxPooling2D.from_config(config).get_config() == config
    assert pool.weights == []  # the counters are state, not weights
    path = str(tmp_path / "snn.keras")
    snn.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded(IMAGES[:4]), snn(IMAGES[:4]), atol=1e-6)


def test_gradients_flow_through_the_counts():
    inputs = keras.Input((6, 6, 2))
    x = layers.AnalogInput()(inputs)
    x = layers.SpikingConv2D(4, 3, padding="same")(x)
    x = layers.SpikingMaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = layers.SpikingDense(3, neuron=None)(x)
    snn = keras_snn.SpikingModel(keras.Model(inputs, layers.Readout()(x)), timesteps=8)
    conv = snn.network.layers[2]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(snn(IMAGES[:4, :6, :6], training=True)[:, -1] ** 2)
    gradient = tape.gradient(loss, conv.kernel)
    assert gradient is not None and np.isfinite(gradient).all()
    assert np.abs(gradient).sum() > 0


def test_stateful_streaming_continues_the_counts():
    network = pooled_rates_network(layers.SpikingInput())
    whole = keras_snn.SpikingModel(network, timesteps=20)
    stream = keras_snn.SpikingModel(network, timesteps=10, stateful=True, batch_size=2)
    x = IMAGES[:2, :6, :6]
    first, second = np.asarray(stream(x)), np.asarray(stream(x))
    expected = np.asarray(whole(x))
    np.testing.assert_allclose(second[:, -1], expected[:, -1], atol=1e-6)
    stream.reset_state()
    np.testing.assert_allclose(np.asarray(stream(x)), first, atol=1e-6)


def test_bad_arguments_are_refused_with_the_layer_named():
    with pytest.raises(ValueError, match="'mp'.*cumulative"):
        layers.SpikingMaxPooling2D(cumulative="yes", name="mp")
    with pytest.raises(ValueError, match="'mp'.*padding"):
        layers.SpikingMaxPooling2D(padding="full", name="mp")
    with pytest.raises(ValueError, match="'mp'.*pool_size"):
        layers.SpikingMaxPooling1D(pool_size=0, name="mp")
    with pytest.raises(ValueError, match="'mp'.*rank 4"):
        layers.SpikingMaxPooling2D(name="mp").build((None, 5, 3))


def test_nir_export_refuses_max_pooling_by_name(tmp_path):
    pytest.importorskip("nir")
    snn = keras_snn.convert_model(max_pool_ann(), IMAGES, neuron=neurons.IF(reset="zero"))
    with pytest.raises(keras_snn.NIRExportError, match="'max_pooling2d.*max-pooling"):
        keras_snn.export_nir(snn, str(tmp_path / "model.nir"))
