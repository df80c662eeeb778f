"""Every spiking layer: config and .keras round trips, weights, shapes, errors."""

import os

import keras
import numpy as np
import pytest

from keras_snn import SpikingModel
from keras_snn import layers
from keras_snn import neurons


def dense_net():
    inputs = keras.Input((6,))
    x = layers.AnalogInput()(inputs)
    x = layers.SpikingDense(8, neuron=neurons.LIF(leak=0.9), threshold=0.5)(x)
    x = layers.SpikingDense(3, neuron=None)(x)
    return keras.Model(inputs, layers.Readout()(x)), (3, 6)


def conv2d_net():
    inputs = keras.Input((8, 8, 2))
    x = layers.SpikingInput(threshold=0.5)(inputs)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = layers.SpikingConv2D(4, 3, strides=2, dilation_rate=1, padding="valid")(x)
    x = layers.SpikingDepthwiseConv2D(3, padding="same", neuron="buffered", depth_multiplier=2)(x)
    x = layers.SpikingAveragePooling2D(2, padding="same")(x)
    x = layers.SpikingGlobalAveragePooling2D()(x)
    x = layers.SpikingDense(3, neuron=None)(x)
    return keras.Model(inputs, layers.Readout()(x)), (2, 8, 8, 2)


def conv1d_net():
    inputs = keras.Input((12, 3))
    x = layers.PoissonInput(seed=5)(inputs)
    x = layers.SpikingConv1D(4, 3, padding="causal", neuron=neurons.IF(spike_max=2))(x)
    x = layers.SpikingAveragePooling1D(2)(x)
    x = layers.SpikingGlobalAveragePooling1D(keepdims=True)(x)
    x = keras.layers.Reshape((4,))(x)
    x = layers.SpikingDense(3, neuron=None)(x)
    return keras.Model(inputs, layers.Readout()(x)), (2, 12, 3)


def residual_net():
    inputs = keras.Input((5,))
    x = layers.AnalogInput()(inputs)
    a = layers.SpikingDense(6)(x)
    b = layers.SpikingDense(6)(a)
    x = layers.SpikingAdd(neuron=neurons.IF(initial_membrane=0.5))([a, b])
    c = layers.SpikingDense(4)(x)
    x = keras.layers.Concatenate()([x, c])
    x = layers.SpikingDense(3)(x)  # spiking output: a spike-rate readout
    return keras.Model(inputs, layers.Readout()(x)), (2, 5)


def event_net():
    inputs = keras.Input((4, 4, 1))
    x = layers.EventInput()(inputs)
    x = keras.layers.Flatten()(x)
    x = layers.SpikingDense(3, neuron=None)(x)
    return keras.Model(inputs, layers.Readout()(x)), (2, 5, 4, 4, 1)


NETWORKS = [dense_net, conv2d_net, conv1d_net, residual_net, event_net]


def randomise(network):
    # Non-default thresholds, branch weights, leaks and biases, so a round
    # trip that dropped any variable would show.
    rng = np.random.default_rng(0)
    for layer in network.layers:
        layer.set_weights([
            (rng.normal(size=w.shape) * 0.5 + (1.0 if w.ndim == 0 else 0.0)).astype("float32")
            if w.ndim else np.float32(rng.uniform(0.5, 1.0))
            for w in layer.get_weights()
        ])


@pytest.mark.parametrize("make", NETWORKS, ids=lambda f: f.__name__)
def test_keras_save_and_load_gives_identical_outputs(make, tmp_path):
    network, shape = make()
    randomise(network)
    snn = SpikingModel(network, timesteps=6)
    x = np.random.default_rng(1).random(shape).astype("float32")
    expected = snn.run(x)
    path = os.path.join(tmp_path, "snn.keras")
    snn.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, SpikingModel) and restored.timesteps == 6
    got = restored.run(x)
    np.testing.assert_array_equal(got["readout"], expected["readout"])
    np.testing.assert_array_equal(got["synaptic_ops"], expected["synaptic_ops"])


@pytest.mark.parametrize("make", NETWORKS, ids=lambda f: f.__name__)
def test_every_layer_config_round_trip(make):
    network, _ = make()
    randomise(network)
    for layer in network.layers:
        config = layer.get_config()
        clone = type(layer).from_config(config)
        assert clone.get_config() == config, type(layer).__name__
        if isinstance(layer, layers.SpikingLayer) and layer.get_weights():
            shape = layer.synaptic_input_shape
            shapes = shape if isinstance(shape, list) else [shape]
            probes = [np.random.rand(2, *s[1:]).astype("float32") for s in shapes]
            probe = probes if isinstance(shape, list) else probes[0]
            clone(probe)
            clone.set_weights(layer.get_weights())
            np.testing.assert_array_equal(clone(probe), layer(probe))


def test_weight_counts_include_threshold_and_leak():
    layer = layers.SpikingDense(4, neuron="lif")
    layer.build((None, 3))
    # DIET-SNN trains a threshold and a leak per layer next to the weights.
    assert sorted(w.name for w in layer.trainable_weights) == ["bias", "kernel", "leak", "threshold"]
    assert layer.non_trainable_weights == []
    add = layers.SpikingAdd()
    add.build([(None, 4), (None, 4), (None, 4)])
    assert tuple(add.branch_weights.shape) == (3, 4)


def test_symbolic_and_eager_shapes_agree():
    layer = layers.SpikingConv2D(5, 3, strides=2, padding="same")
    symbolic = layer(keras.Input((9, 9, 2)))
    eager = layer(np.ones((1, 9, 9, 2), "float32"))
    assert tuple(symbolic.shape[1:]) == tuple(eager.shape[1:]) == (5, 5, 5)


def test_fanout_counts_pooling_windows_and_zero_weights():
    pool = layers.SpikingAveragePooling2D(2, strides=1, padding="valid")
    pool.build((None, 3, 3, 1))
    fanout = pool.fanout_maps()[0].numpy()[0, :, :, 0]
    np.testing.assert_array_equal(fanout, [[1, 2, 1], [2, 4, 2], [1, 2, 1]])
    dense = layers.SpikingDense(3)
    dense.build((None, 2))
    dense.set_weights([np.array([[1, 0, 2], [0, 0, 0]], "float32"), np.ones(3, "float32"), np.float32(1)])
    np.testing.assert_array_equal(dense.fanout_maps()[0], [[2, 0]])


def test_non_spiking_layer_passes_current():
    layer = layers.SpikingDense(2, neuron=None, use_bias=False)
    layer.build((None, 2))
    layer.set_weights([np.array([[2.0, -1.0], [0.0, 3.0]], "float32"), np.float32(1.0)])
    np.testing.assert_allclose(layer(np.array([[1.0, 1.0]], "float32")), [[2.0, 2.0]])
    assert not layer.emits_spikes and layer.initial_state(3) == ()


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: layers.SpikingDense(3, activation="relu"), ValueError, "activation"),
        (lambda: layers.SpikingConv2D(3, 3, threshold=0.0), ValueError, "threshold"),
        (lambda: layers.SpikingDense(3, neuron="tanh"), ValueError, "Unknown neuron"),
        (lambda: layers.SpikingAveragePooling2D(0), ValueError, "pool_size"),
        (lambda: layers.SpikingAveragePooling2D(2, padding="full"), ValueError, "padding"),
        (lambda: layers.SpikingInput(neuron=None), ValueError, "AnalogInput"),
        (lambda: layers.PoissonInput(gain=0.0), ValueError, "gain"),
        (lambda: layers.SpikingAdd()(np.ones((1, 2), "float32")), ValueError, "at least two"),
        (
            lambda: layers.SpikingAdd()([np.ones((1, 2), "float32"), np.ones((1, 3), "float32")]),
            ValueError,
            "one shape",
        ),
        (lambda: layers.register_passthrough_layer(int), TypeError, "Layer subclass"),
    ],
)
def test_bad_arguments_raise(make, error, message):
    with pytest.raises(error, match=message):
        make()


# ------------------------------------------------ reduced-precision synapses
def spy_on_reduced_precision(network):
    """Record the names of the layers whose reduced-precision current runs."""
    called = set()
    for layer in network.layers:
        if isinstance(layer, layers.SynapticLayer):
            def spy(inputs, dtype, layer=layer, original=layer.reduced_precision_current):
                called.add(layer.name)
                return original(inputs, dtype)
            layer.reduced_precision_current = spy
    return called


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("make", NETWORKS, ids=lambda f: f.__name__)
def test_narrow_synapses_are_exact_when_the_weights_are(make, dtype):
    # Spikes are small integers (event frames here are halves) and weights
    # on a 1/4 grid below 1 in magnitude are bfloat16 numbers, so products
    # are multiples of 1/8; every partial sum here stays below 32, where
    # bfloat16 (and float16, finer) still resolves eighths, so nothing may round.
    network, shape = make()
    rng = np.random.default_rng(3)
    for layer in network.layers:
        layer.set_weights([
            (rng.integers(-4, 5, size=w.shape) / 4).astype("float32") if w.ndim
            else np.float32(rng.choice([0.5, 0.75, 1.0]))
            for w in layer.get_weights()
        ])
    x = (rng.integers(0, 3, size=shape) / 2).astype("float32")  # event frames too
    full = SpikingModel(network, timesteps=6).run(x)
    called = spy_on_reduced_precision(network)
    narrow_model = SpikingModel(network, timesteps=6, synapse_dtype=dtype)
    narrow = narrow_model.run(x)
    np.testing.assert_array_equal(narrow["readout"], full["readout"])
    np.testing.assert_array_equal(narrow["synaptic_ops"], full["synaptic_ops"])
    # Every synaptic layer took the narrow path, except those reading analog
    # input (their current is computed once, in full precision).
    analog = [layer.output for layer in network.layers if isinstance(layer, layers.AnalogInput)]
    expected = {
        layer.name for layer in network.layers
        if isinstance(layer, layers.SynapticLayer) and not any(layer.input is a for a in analog)
    }
    assert called == expected
    restored = SpikingModel.from_config(narrow_model.get_config())
    assert restored.synapse_dtype == dtype


@pytest.mark.parametrize("layer_class, kwargs", [
    (layers.SpikingConv2D, {"filters": 3, "kernel_size": 3, "padding": "same"}),
    (layers.SpikingDepthwiseConv2D, {"kernel_size": 3, "padding": "same", "depth_multiplier": 2}),
])
def test_bfloat16_current_puts_the_bias_on_the_channel_axis(layer_class, kwargs):
    # Grid weights make both layouts exact, so they must agree to the bit.
    rng = np.random.default_rng(5)
    spikes = (rng.random((2, 6, 6, 2)) < 0.5).astype("float32")
    currents = {}
    for data_format in ("channels_last", "channels_first"):
        layer = layer_class(data_format=data_format, **kwargs)
        shape = spikes.shape if data_format == "channels_last" else (2, 2, 6, 6)
        layer.build((None,) + shape[1:])
        if not currents:
            weights = [
                (rng.integers(-4, 5, size=w.shape) / 4).astype("float32")
                for w in layer.get_weights()[:2]
            ]
            weights[1] = weights[1] + 10.0  # a bias on the wrong axis would show
        layer.set_weights(weights + [np.float32(1)])
        x = spikes if data_format == "channels_last" else spikes.transpose(0, 3, 1, 2)
        current = np.asarray(layer.reduced_precision_current(x, "bfloat16"))
        if data_format == "channels_first":
            current = current.transpose(0, 2, 3, 1)
        currents[data_format] = current
    np.testing.assert_array_equal(currents["channels_first"], currents["channels_last"])


# ------------------------------------------------------- channels_first layers
def to_first(x):
    return np.moveaxis(x, -1, 1)


@pytest.mark.parametrize("layer_class, kwargs, shape", [
    (layers.SpikingConv2D, {"filters": 4, "kernel_size": 3, "strides": 2, "padding": "same"},
     (2, 7, 7, 3)),
    (layers.SpikingConv2D, {"filters": 4, "kernel_size": 3, "dilation_rate": 2}, (2, 7, 7, 3)),
    (layers.SpikingConv1D, {"filters": 4, "kernel_size": 3, "padding": "causal"}, (2, 9, 3)),
    (layers.SpikingDepthwiseConv2D, {"kernel_size": 3, "padding": "same", "depth_multiplier": 2},
     (2, 7, 7, 3)),
    (layers.SpikingAveragePooling2D, {"pool_size": 2, "padding": "same"}, (2, 7, 7, 3)),
    (layers.SpikingAveragePooling1D, {"pool_size": 2}, (2, 9, 3)),
    (layers.SpikingGlobalAveragePooling2D, {"keepdims": True}, (2, 7, 7, 3)),
])
def test_channels_first_layers_match_their_channels_last_twins(layer_class, kwargs, shape):
    # Same weights, transposed input: the same current, readout, fan-out and
    # operation counts. No NCHW kernel runs, so this holds on every CPU
    # (TF_ENABLE_ONEDNN_OPTS=0 reproduces one without NCHW convolutions).
    rng = np.random.default_rng(6)
    x = rng.random(shape).astype("float32")
    runs, fanouts, currents = {}, {}, {}
    weights = None
    for data_format in ("channels_last", "channels_first"):
        frame = shape[1:] if data_format == "channels_last" else to_first(np.zeros(shape)).shape[1:]
        inputs = keras.Input(frame)
        spikes = layers.SpikingInput(threshold=0.7)(inputs)
        layer = layer_class(data_format=data_format, name="under_test", **kwargs)
        hidden = layer(spikes)
        flat = keras.layers.Flatten(data_format=data_format)(hidden)
        readout = layers.Readout()(layers.SpikingDense(3, neuron=None, name="out")(flat))
        network = keras.Model(inputs, readout)
        if weights is None:
            weights = [rng.normal(size=w.shape).astype("float32") if w.ndim else np.float32(0.6)
                       for w in network.get_weights()]
        network.set_weights(weights)
        assert layer_class.from_config(layer.get_config()).data_format == data_format
        data = x if data_format == "channels_last" else to_first(x)
        runs[data_format] = SpikingModel(network, timesteps=5).run(data)
        fanouts[data_format] = layer.fanout_maps()[0].numpy()
        currents[data_format] = np.asarray(layer.compute_current(data))
    first, last = runs["channels_first"], runs["channels_last"]
    np.testing.assert_allclose(first["readout"], last["readout"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(first["synaptic_ops"], last["synaptic_ops"])
    np.testing.assert_array_equal(first["layer_ops"]["under_test"], last["layer_ops"]["under_test"])
    np.testing.assert_array_equal(fanouts["channels_first"], to_first(fanouts["channels_last"]))
    np.testing.assert_allclose(
        currents["channels_first"], to_first(currents["channels_last"]), rtol=1e-5, atol=1e-5
    )
    assert np.any(first["synaptic_ops"] > 0)


def test_bad_data_format_raises():
    with pytest.raises(ValueError, match="data_format.*channels_middle"):
        layers.SpikingAveragePooling2D(2, data_format="channels_middle")


def test_bfloat16_current_error_is_bounded_by_weight_rounding():
    # Rounding each weight and the result to 8 significant bits moves the
    # current by at most 2^-8 * (|s| @ |W|) plus 2^-8 of itself.
    rng = np.random.default_rng(4)
    layer = layers.SpikingDense(32)
    layer.build((None, 200))
    kernel = rng.normal(size=(200, 32)).astype("float32")
    layer.set_weights([kernel, rng.normal(size=32).astype("float32"), np.float32(1)])
    spikes = (rng.random((16, 200)) < 0.3).astype("float32")
    exact = spikes @ kernel
    narrow = layer.reduced_precision_current(spikes, "bfloat16").numpy() - layer.bias.numpy()
    bound = 2.0**-8 * (spikes @ np.abs(kernel) + np.abs(exact)) + 1e-5
    assert np.all(np.abs(narrow - exact) <= bound)
    # It did run in bfloat16: float32 would be within ~1e-5.
    assert np.abs(narrow - exact).max() > 1e-3


def test_layers_say_whether_they_emit_binary_spikes():
    # The simulator skips the event mask for binary spikes; the layer, not its class, says so.
    assert layers.PoissonInput(seed=0).emits_binary_spikes
    assert layers.SpikingInput().emits_binary_spikes
    assert not layers.SpikingInput(neuron=neurons.IF(spike_max=2)).emits_binary_spikes
    assert not layers.AnalogInput().emits_binary_spikes
    assert not layers.EventInput().emits_binary_spikes  # frames may hold counts
    assert layers.SpikingDense(2).emits_binary_spikes
    assert not layers.SpikingDense(2, neuron="buffered").emits_binary_spikes
    assert not layers.SpikingDense(2, neuron=None).emits_binary_spikes


@pytest.mark.parametrize("cls, kwargs, input_shape", [
    (layers.SpikingDense, {"units": 3}, (2, 4)),
    (layers.SpikingConv1D, {"filters": 3, "kernel_size": 2}, (2, 5, 4)),
    (layers.SpikingConv2D, {"filters": 3, "kernel_size": 2}, (2, 5, 5, 4)),
    (layers.SpikingDepthwiseConv2D, {"kernel_size": 2, "depth_multiplier": 2}, (2, 5, 5, 4)),
])
def test_kernel_channel_axes_say_which_kernel_entries_feed_each_channel(cls, kwargs, input_shape):
    """Scaling the kernel along the output axes scales those output channels; along the
    input axes, it is the same as scaling those input channels."""
    rng = np.random.default_rng(0)
    layer = cls(neuron=None, use_bias=False, **kwargs)
    layer.build(input_shape)
    x = rng.random(input_shape).astype("float32")
    reference = np.asarray(layer.compute_current(x))
    kernel = np.asarray(layer.kernel)
    in_axes, out_axes = cls.kernel_channel_axes(kernel.ndim)
    assert in_axes == layer.kernel_channel_axes(kernel.ndim)[0]

    out_channels = int(np.prod([kernel.shape[a] for a in out_axes]))
    assert out_channels == reference.shape[-1]
    factors = rng.random(out_channels).astype("float32") + 0.5
    layer.kernel.assign(kernel * factors.reshape(
        [d if a in out_axes else 1 for a, d in enumerate(kernel.shape)]))
    np.testing.assert_allclose(layer.compute_current(x), reference * factors, rtol=1e-5)

    in_channels = int(np.prod([kernel.shape[a] for a in in_axes]))
    assert in_channels == input_shape[-1]
    factors = rng.random(in_channels).astype("float32") + 0.5
    layer.kernel.assign(kernel)
    scaled_input = np.asarray(layer.compute_current(x * factors))
    layer.kernel.assign(kernel * factors.reshape(
        [d if a in in_axes else 1 for a, d in enumerate(kernel.shape)]))
    np.testing.assert_allclose(layer.compute_current(x), scaled_input, rtol=1e-5)
