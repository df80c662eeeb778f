"""SpikingModel against independent NumPy simulations and brute-force op counts."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_snn import SpikingModel
from keras_snn import layers
from keras_snn import neurons


def grid(rng, shape, scale=8):
    """Random values on a 1/scale grid: float32 sums of them are exact."""
    return (rng.integers(-scale, scale + 1, size=shape) / scale).astype("float32")


# --------------------------------------------------------------- NumPy model
def numpy_if(v, z, theta, spike_max=1):
    v = v + z
    n = np.floor(v / theta)
    s = np.zeros_like(v)
    power = 1
    while power <= spike_max:
        s = np.where(n >= power, power, s)
        power *= 2
    return s, v - theta * s


def numpy_buffered(v, b, z, theta, spike_max=1):
    v = v + z
    pos, _ = numpy_if(np.zeros_like(v), v, theta, spike_max)
    over = np.minimum(np.ceil(-v / theta), b)
    neg, _ = numpy_if(np.zeros_like(v), over, 1.0, spike_max)
    s = pos - neg
    return s, v - theta * s, b + s


def two_layer_network(hidden_neuron, encoder, theta):
    inputs = keras.Input((6,))
    x = encoder(inputs)
    x = layers.SpikingDense(5, neuron=hidden_neuron, threshold=theta, name="hidden")(x)
    x = layers.SpikingDense(3, neuron=None, name="output")(x)
    return keras.Model(inputs, layers.Readout()(x))


def test_two_layer_if_model_matches_numpy_step_by_step():
    rng = np.random.default_rng(0)
    network = two_layer_network("if", layers.AnalogInput(), theta=0.75)
    w1, b1 = grid(rng, (6, 5)), grid(rng, (5,))
    w2, b2 = grid(rng, (5, 3)), grid(rng, (3,))
    w1[0, :2] = 0.0  # pruned synapses reduce MACs
    w2[1, 0] = 0.0  # and synaptic ops
    network.get_layer("hidden").set_weights([w1, b1, np.float32(0.75)])
    network.get_layer("output").set_weights([w2, b2, np.float32(1.0)])
    x = np.abs(grid(rng, (4, 6)))
    steps = 12
    record = SpikingModel(network, timesteps=steps).run(x)

    v = np.zeros((4, 5), "float32")
    total = np.zeros((4, 3), "float32")
    fanout = (w2 != 0).sum(axis=1)
    for t in range(steps):
        s, v = numpy_if(v, x @ w1 + b1, 0.75)
        total += s @ w2 + b2
        np.testing.assert_allclose(record["readout"][:, t], total / (t + 1), rtol=1e-6, atol=1e-6)
        expected_ops = ((s != 0) * fanout).sum(axis=1)
        np.testing.assert_array_equal(record["synaptic_ops"][:, t], expected_ops)
        np.testing.assert_array_equal(record["spike_events"]["hidden"][:, t], (s != 0).sum(1))
    assert float(record["input_macs"]) == np.count_nonzero(w1)
    assert record["neurons"] == {"hidden": 5}


def test_buffered_multibit_model_with_spiking_input_matches_numpy():
    rng = np.random.default_rng(1)
    hidden = neurons.BufferedIF(spike_max=2)
    network = two_layer_network(hidden, layers.SpikingInput(), theta=0.5)
    w1, b1 = grid(rng, (6, 5)), grid(rng, (5,))
    w2, b2 = grid(rng, (5, 3)), grid(rng, (3,))
    network.get_layer("hidden").set_weights([w1, b1, np.float32(0.5)])
    network.get_layer("output").set_weights([w2, b2, np.float32(1.0)])
    x = np.abs(grid(rng, (3, 6)))
    steps = 16
    record = SpikingModel(network, timesteps=steps).run(x)

    v0 = np.zeros_like(x)
    v1, b = np.zeros((3, 5), "float32"), np.zeros((3, 5), "float32")
    total = np.zeros((3, 3), "float32")
    for t in range(steps):
        s0, v0 = numpy_if(v0, x, 1.0)
        s1, v1, b = numpy_buffered(v1, b, s0 @ w1 + b1, 0.5, spike_max=2)
        total += s1 @ w2 + b2
        np.testing.assert_allclose(record["readout"][:, t], total / (t + 1), atol=1e-6)
        ops = ((s0 != 0) * (w1 != 0).sum(1)).sum(1) + ((s1 != 0) * (w2 != 0).sum(1)).sum(1)
        np.testing.assert_array_equal(record["synaptic_ops"][:, t], ops)
        np.testing.assert_array_equal(record["spike_counts"]["hidden"][:, t], np.abs(s1).sum(1))
    assert float(record["input_macs"]) == 0.0  # spiking input: no MACs


# ------------------------------------------------------- brute-force op counts
def event_network(synaptic_layer, frame_shape):
    inputs = keras.Input(frame_shape)
    x = layers.EventInput()(inputs)
    x = synaptic_layer(x)
    x = keras.layers.Flatten()(x)
    x = layers.SpikingDense(2, neuron=None, name="readout_dense")(x)
    return keras.Model(inputs, layers.Readout()(x))


def test_dense_ops_equal_brute_force():
    rng = np.random.default_rng(2)
    dense = layers.SpikingDense(7, name="probe")
    network = event_network(dense, (9,))
    kernel = rng.normal(size=(9, 7)).astype("float32")
    kernel[rng.random((9, 7)) < 0.4] = 0.0
    dense.set_weights([kernel, np.zeros(7, "float32"), np.float32(1.0)])
    frames = (rng.random((3, 5, 9)) < 0.3).astype("float32")
    record = SpikingModel(network).run(frames)

    expected = np.zeros((3, 5))
    for b in range(3):
        for t in range(5):
            for i in range(9):
                if frames[b, t, i]:
                    for j in range(7):
                        expected[b, t] += kernel[i, j] != 0
    np.testing.assert_array_equal(record["layer_ops"]["probe"], expected)


def test_conv2d_stride2_same_padding_ops_equal_brute_force():
    rng = np.random.default_rng(3)
    height, width, cin, cout, k, stride = 7, 6, 2, 3, 3, 2
    conv = layers.SpikingConv2D(cout, k, strides=stride, padding="same", name="probe")
    network = event_network(conv, (height, width, cin))
    kernel = rng.normal(size=(k, k, cin, cout)).astype("float32")
    kernel[rng.random(kernel.shape) < 0.3] = 0.0
    conv.set_weights([kernel, np.zeros(cout, "float32"), np.float32(1.0)])
    frames = (rng.random((2, 4, height, width, cin)) < 0.25).astype("float32")
    record = SpikingModel(network).run(frames)

    out_h, out_w = -(-height // stride), -(-width // stride)
    pad_top = max((out_h - 1) * stride + k - height, 0) // 2
    pad_left = max((out_w - 1) * stride + k - width, 0) // 2
    expected = np.zeros((2, 4))
    for b, t, i, j, c in zip(*np.nonzero(frames)):
        # Every (output position, output channel) this input spike reaches.
        for oi in range(out_h):
            for oj in range(out_w):
                ki, kj = i + pad_top - oi * stride, j + pad_left - oj * stride
                if 0 <= ki < k and 0 <= kj < k:
                    expected[b, t] += np.count_nonzero(kernel[ki, kj, c, :])
    np.testing.assert_array_equal(record["layer_ops"]["probe"], expected)


def test_negative_and_multibit_spikes_count_one_event_each():
    inputs = keras.Input((2,))
    x = layers.EventInput()(inputs)
    x = layers.SpikingDense(3, neuron=None, name="probe")(x)
    network = keras.Model(inputs, layers.Readout()(x))
    network.get_layer("probe").set_weights(
        [np.ones((2, 3), "float32"), np.zeros(3, "float32"), np.float32(1.0)]
    )
    frames = np.array([[[4.0, -1.0], [0.0, 2.0]]], "float32")
    record = SpikingModel(network).run(frames)
    np.testing.assert_array_equal(record["layer_ops"]["probe"], [[6.0, 3.0]])


# --------------------------------------------------------------- model API
def small_network(encoder=None, hidden_neuron="if"):
    inputs = keras.Input((4,))
    x = (encoder or layers.AnalogInput())(inputs)
    x = layers.SpikingDense(16, neuron=hidden_neuron)(x)
    x = layers.SpikingDense(3, neuron=None)(x)
    return keras.Model(inputs, layers.Readout()(x))


def test_call_shapes_timesteps_override_and_return_ops():
    snn = SpikingModel(small_network(), timesteps=6)
    x = np.random.rand(5, 4).astype("float32")
    assert tuple(snn(x).shape) == (5, 6, 3)
    readout, ops = snn(x, timesteps=9, return_ops=True)
    assert tuple(readout.shape) == (5, 9, 3) and tuple(ops.shape) == (5, 9)
    np.testing.assert_array_equal(ops, snn.run(x, timesteps=9)["synaptic_ops"])
    np.testing.assert_allclose(readout, snn(x, timesteps=9), atol=1e-6)
    assert snn.predict(x, verbose=0).shape == (5, 6, 3)


def test_readout_converges_to_rate_activation():
    # A spiking hidden layer's rate approaches clip(relu(z)/theta, 0, 1): the
    # readout converges to the ANN with that activation, error shrinking ~1/T.
    network = small_network(hidden_neuron=neurons.IF(initial_membrane=0.5))
    x = np.random.rand(8, 4).astype("float32")
    hidden, output = network.layers[2], network.layers[3]
    z = x @ hidden.kernel.numpy() + hidden.bias.numpy()
    ann = np.clip(z, 0, 1) @ output.kernel.numpy() + output.bias.numpy()
    snn = SpikingModel(network)
    errors = [np.abs(snn(x, timesteps=t)[:, -1] - ann).max() for t in (8, 64, 512)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 4.0 / 512 * np.abs(output.kernel.numpy()).sum(0).max()


def test_stateful_streaming_continues_and_resets():
    network = small_network()
    x = np.random.rand(2, 4).astype("float32")
    whole = SpikingModel(network, timesteps=10)(x)
    stream = SpikingModel(network, timesteps=5, stateful=True, batch_size=2)
    first, second = stream(x), stream(x)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=1e-6)
    stream.reset_state()
    np.testing.assert_allclose(stream(x), whole[:, :5], atol=1e-6)
    with pytest.raises(ValueError, match="batch_size=2"):
        stream(np.zeros((3, 4), "float32"))


def test_stateful_streaming_continues_the_burst_ceiling():
    # A ceiling restarted at 0 while the net counts carry on would force
    # negative spikes in the second call.
    network = small_network(hidden_neuron=neurons.BufferedIF(burst=4))
    x = np.random.default_rng(5).uniform(-1.0, 2.0, (2, 4)).astype("float32")
    whole = SpikingModel(network, timesteps=10)(x)
    stream = SpikingModel(network, timesteps=5, stateful=True, batch_size=2)
    first, second = stream(x), stream(x)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=1e-6)


def test_an_eager_call_is_one_compiled_call_around_the_loop():
    # Run op by op, the small ops around the loop (initial states, the
    # non-finite check) cost more than a small network's whole run.
    snn = SpikingModel(small_network(hidden_neuron=neurons.BufferedIF(burst=4)), timesteps=5)
    x = np.random.default_rng(2).uniform(-1.0, 2.0, (3, 4)).astype("float32")
    readout, ops = snn(x, return_ops=True)
    in_graph, graph_ops = tf.function(lambda v: snn(v, return_ops=True))(x)
    np.testing.assert_allclose(in_graph, readout, atol=1e-6)
    np.testing.assert_array_equal(graph_ops, ops)
    x[1, 0] = np.nan
    with_nan, _ = snn(x, return_ops=True)
    np.testing.assert_array_equal(with_nan[0], readout[0])
    assert np.isnan(with_nan[1]).all()
    # Both eager calls ran in one trace; the call inside tf.function above
    # ran the same ops in that function's graph instead.
    assert snn._run_compiled.experimental_get_tracing_count() == 1


def test_event_input_consumes_one_frame_per_step():
    inputs = keras.Input((3,))
    x = layers.EventInput()(inputs)
    x = layers.SpikingDense(2, neuron=None, name="probe")(x)
    network = keras.Model(inputs, layers.Readout()(x))
    kernel = np.array([[1, 0], [0, 1], [1, 1]], "float32")
    network.get_layer("probe").set_weights([kernel, np.zeros(2, "float32"), np.float32(1.0)])
    frames = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]], "float32")
    snn = SpikingModel(network)
    out = snn(frames)
    expected = np.cumsum(frames[0] @ kernel, axis=0) / np.arange(1, 5)[:, None]
    np.testing.assert_allclose(out[0], expected)
    assert tuple(snn(frames, timesteps=2).shape) == (1, 2, 2)
    with pytest.raises(ValueError, match="exceeds the 4 event frames"):
        snn(frames, timesteps=5)


def test_poisson_input_is_seeded_and_rate_coded():
    x = np.full((2, 4), 0.3, "float32")
    def run(seed):
        encoder = layers.PoissonInput(seed=seed, name="poisson")
        return SpikingModel(small_network(encoder), 200).run(x)

    keras.utils.set_random_seed(0)
    a = run(7)
    keras.utils.set_random_seed(0)
    b = run(7)
    keras.utils.set_random_seed(0)
    c = run(8)
    np.testing.assert_array_equal(a["readout"], b["readout"])
    assert not np.array_equal(a["readout"], c["readout"])
    rate = a["spike_events"]["poisson"].numpy().sum() / (2 * 4 * 200)
    assert abs(rate - 0.3) < 0.05


def test_xla_matches_graph_mode():
    network = small_network()
    x = np.random.rand(3, 4).astype("float32")
    plain = SpikingModel(network, timesteps=8).run(x)
    compiled = SpikingModel(network, timesteps=8, xla=True).run(x)
    np.testing.assert_allclose(plain["readout"], compiled["readout"], atol=1e-5)
    np.testing.assert_array_equal(plain["synaptic_ops"], compiled["synaptic_ops"])


def test_static_current_is_computed_once_outside_the_loop():
    # The analog input's first-layer current does not change over time; the
    # loop body must not contain the first layer's matmul.
    snn = SpikingModel(small_network(), timesteps=4)
    x = tf.constant(np.random.rand(2, 4).astype("float32"))
    states = snn._initial_states(2)
    graph = snn._loop.get_concrete_function(x, 4, False, states, tf.constant(0), {}).graph
    body = [f for f in graph.as_graph_def().library.function if "body" in f.signature.name]
    matmuls = sum(node.op in ("MatMul", "BatchMatMulV2") for f in body for node in f.node_def)
    outer = sum(node.op in ("MatMul", "BatchMatMulV2") for node in graph.as_graph_def().node)
    assert matmuls == 1 and outer == 1


def test_bfloat16_output_current_differs_from_float32_by_rounding_only():
    # The hidden layer reads analog input (full precision, so identical
    # spikes); only the output layer's products on those spikes are rounded.
    snn = SpikingModel(small_network(), timesteps=8)
    narrow = snn.with_options(synapse_dtype="bfloat16")
    x = np.random.default_rng(1).random((4, 4)).astype("float32")
    full_run, narrow_run = snn.run(x), narrow.run(x)
    for layer, events in full_run["spike_events"].items():
        np.testing.assert_array_equal(narrow_run["spike_events"][layer], events)
    assert not np.array_equal(narrow_run["readout"], full_run["readout"])
    np.testing.assert_allclose(narrow_run["readout"], full_run["readout"], atol=0.05)


def test_with_options_shares_the_network_and_changes_only_what_is_asked():
    snn = SpikingModel(small_network(), timesteps=6, dropout=0.1)
    x = np.random.default_rng(0).random((2, 4)).astype("float32")
    copy = snn.with_options(timesteps=3)
    assert copy.network is snn.network and copy.dropout == 0.1 and copy.timesteps == 3
    before = copy(x)
    np.testing.assert_array_equal(before, snn(x)[:, :3])
    layer = snn.network.layers[2]
    layer.kernel.assign(layer.kernel * 2.0)  # shared weights: the copy sees it
    after = copy(x)
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(after, snn(x)[:, :3])
    with pytest.raises(TypeError, match="'timestep'.*options are"):
        snn.with_options(timestep=3)


# ------------------------------------------------------------------ errors
def test_network_errors_name_the_layer():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="Readout"):
        SpikingModel(keras.Model(inputs, layers.SpikingDense(2)(layers.AnalogInput()(inputs))))
    with pytest.raises(ValueError, match="'direct'.*encoder"):
        x = layers.SpikingDense(2, name="direct")(inputs)
        SpikingModel(keras.Model(inputs, layers.Readout()(x)))
    with pytest.raises(ValueError, match="'relu_dense' \\(Dense\\) has no spiking form"):
        x = keras.layers.Dense(2, name="relu_dense")(layers.AnalogInput()(inputs))
        SpikingModel(keras.Model(inputs, layers.Readout()(x)))
    with pytest.raises(TypeError, match="keras.Model"):
        SpikingModel(layers.SpikingDense(2))


def test_call_and_constructor_errors():
    network = small_network()
    with pytest.raises(ValueError, match="timesteps"):
        SpikingModel(network, timesteps=0)
    for dtype in ("int8", "spikes", "float64", "float8_e4m3fn"):
        with pytest.raises(ValueError, match="synapse_dtype"):
            SpikingModel(network, synapse_dtype=dtype)
    with pytest.raises(ValueError, match="batch_size"):
        SpikingModel(network, stateful=True)
    snn = SpikingModel(network)
    with pytest.raises(ValueError, match="rank 2"):
        snn(np.zeros((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match="timesteps"):
        snn(np.zeros((2, 4), "float32"), timesteps=-1)


def test_numpy_integer_timesteps_are_accepted_as_ints():
    inputs = keras.Input((3,))
    x = layers.SpikingDense(2, neuron=None)(layers.AnalogInput()(inputs))
    snn = SpikingModel(keras.Model(inputs, layers.Readout()(x)), timesteps=np.int64(6))
    assert snn.timesteps == 6 and type(snn.timesteps) is int
    assert tuple(snn(np.ones((1, 3), "float32")).shape) == (1, 6, 2)
    with pytest.raises(ValueError, match="timesteps"):
        SpikingModel(snn.network, timesteps=np.int64(0))


def mixed_neuron_network():
    inputs = keras.Input((6, 6, 2))
    x = layers.AnalogInput()(inputs)
    x = layers.SpikingConv2D(4, 3, padding="same", neuron=neurons.BufferedIF(spike_max=2),
                             threshold=0.7)(x)
    x = layers.SpikingConv2D(4, 3, neuron=neurons.LIF(initial_membrane=0.5))(x)
    x = layers.SpikingAveragePooling2D(2, neuron=neurons.IF(reset="zero"))(x)
    x = keras.layers.Flatten()(x)
    x = layers.SpikingDense(3, neuron=None)(x)
    return keras.Model(inputs, layers.Readout()(x))


def test_fused_neuron_updates_give_the_unfused_spikes_readout_and_gradients():
    keras.utils.set_random_seed(3)
    network = mixed_neuron_network()
    fused = SpikingModel(network, timesteps=12)
    plain = fused.with_options(fused_neurons=False)
    assert fused.loop_variant == "fused" and plain.loop_variant == "unfused"
    x = np.random.default_rng(0).random((5, 6, 6, 2)).astype("float32")
    a, b = fused.run(x), plain.run(x)
    for layer, events in b["spike_counts"].items():
        np.testing.assert_array_equal(a["spike_counts"][layer], events)
    np.testing.assert_array_equal(a["synaptic_ops"], b["synaptic_ops"])
    np.testing.assert_allclose(a["readout"], b["readout"], atol=1e-5)

    def gradients(model):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True)[:, -1] ** 2)
        return tape.gradient(loss, network.trainable_variables)

    for g_fused, g_plain in zip(gradients(fused), gradients(plain)):
        np.testing.assert_allclose(g_fused, g_plain, rtol=1e-4, atol=1e-5)
    assert SpikingModel.from_config(plain.get_config()).fused_neurons is False


def test_fused_neurons_are_compiled_kernels_inside_the_loop():
    def compiled_functions(snn):
        x = tf.constant(np.random.rand(2, 6, 6, 2).astype("float32"))
        graph = snn._loop.get_concrete_function(
            x, 3, None, snn._initial_states(2), tf.constant(0), {}
        ).graph
        return [
            f for f in graph.as_graph_def().library.function
            if f.attr.get("_XlaMustCompile") is not None and f.attr["_XlaMustCompile"].b
        ]

    snn = SpikingModel(mixed_neuron_network(), timesteps=3)
    assert len(compiled_functions(snn)) == 3  # one per layer with a neuron
    assert compiled_functions(snn.with_options(fused_neurons=False)) == []


@pytest.mark.parametrize("neuron", [neurons.IF(), neurons.BufferedIF()])
def test_training_dropout_counts_events_not_scaled_spikes(neuron):
    # Dropout scales kept spikes by 1/(1 - rate): a spike is still one event
    # per synapse, so the counts stay whole numbers of (integer) fan-outs.
    inputs = keras.Input((6,))
    x = layers.AnalogInput()(inputs)
    x = layers.SpikingDense(16, neuron=neuron, threshold=0.3)(x)
    x = layers.SpikingDense(3, neuron=None)(x)
    snn = SpikingModel(keras.Model(inputs, layers.Readout()(x)), timesteps=6, dropout=0.3)
    x = np.random.default_rng(0).random((4, 6)).astype("float32")
    _, ops = snn(x, training=True, return_ops=True)
    assert np.any(ops > 0)
    np.testing.assert_array_equal(ops, np.round(ops))
    _, ops_eval = snn(x, return_ops=True)
    assert np.all(ops <= ops_eval + 1e-6)  # dropout only removes events
