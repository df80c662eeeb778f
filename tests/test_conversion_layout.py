"""channels_first models convert to channels-last spiking networks (conversion/layout.py).

Each channels_first ANN here has a channels_last twin with the same weights.
The converted channels_first SNN is fed channels_first input and must give the
twin's readout and operation counts, on any CPU: run this file with
TF_ENABLE_ONEDNN_OPTS=0 to get a CPU without NCHW convolutions. The ANN's own
logits come from the twin, and once from the channels_first ANN itself under
XLA (which has its own NCHW convolutions on the CPU).
"""

import importlib.util
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_snn
from keras_snn import layers as snn_layers
from keras_snn import neurons
from keras_snn.conversion.calibration import analog_forward
from keras_snn.graph import layer_graph

FIRST, LAST = "channels_first", "channels_last"
RNG = np.random.default_rng(0)
IMAGES = RNG.random((64, 8, 8, 2)).astype("float32")  # channels-last
SEQUENCES = RNG.random((64, 12, 3)).astype("float32")


def channels_first(x):
    return np.moveaxis(x, -1, 1)


def conv_net(data_format, flatten_format=LAST, padding=True):
    """Conv/BN/depthwise/pool/pad/Flatten/Dense, every layer named."""
    axis = 1 if data_format == FIRST else -1
    shape = (2, 8, 8) if data_format == FIRST else (8, 8, 2)
    inputs = keras.Input(shape)
    x = keras.layers.Rescaling(0.5, name="scale")(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, data_format=data_format,
                            name="conv1")(x)
    x = keras.layers.BatchNormalization(axis=axis, name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu",
                                     data_format=data_format, name="depthwise")(x)
    x = keras.layers.AveragePooling2D(2, data_format=data_format, name="pool")(x)
    if padding:
        x = keras.layers.ZeroPadding2D(1, data_format=data_format, name="pad")(x)
    x = keras.layers.Conv2D(8, 3, strides=2 if padding else 1, activation="relu",
                            data_format=data_format, name="conv2")(x)
    x = keras.layers.Flatten(data_format=flatten_format, name="flatten")(x)
    x = keras.layers.Dense(12, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="logits")(x)
    return keras.Model(inputs, outputs), IMAGES


def residual_net(data_format):
    """Residual Adds, per-channel BatchNormalization, a projection, Concatenate."""
    axis = 1 if data_format == FIRST else -1
    shape = (2, 8, 8) if data_format == FIRST else (8, 8, 2)

    def conv(filters, kernel, name, **kwargs):
        return keras.layers.Conv2D(filters, kernel, padding="same", data_format=data_format,
                                   name=name, **kwargs)

    inputs = keras.Input(shape)
    x = conv(6, 3, "stem", activation="relu")(inputs)
    y = conv(6, 3, "block_a")(x)
    y = keras.layers.ReLU()(keras.layers.BatchNormalization(axis=axis, name="bn_a")(y))
    y = keras.layers.BatchNormalization(axis=axis, name="bn_b")(conv(6, 3, "block_b")(y))
    x = keras.layers.ReLU()(keras.layers.Add(name="add1")([y, x]))
    projection = conv(4, 1, "projection", strides=2)(x)
    y = conv(4, 3, "down", strides=2, activation="relu")(x)
    y = conv(4, 3, "block_c")(y)
    x = keras.layers.ReLU()(keras.layers.Add(name="add2")([y, projection]))
    branch = conv(3, 1, "branch", activation="relu")(x)
    x = keras.layers.Concatenate(axis=axis, name="concat")([x, branch])
    x = keras.layers.AveragePooling2D(2, data_format=data_format, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(4, name="logits")(x)
    return keras.Model(inputs, outputs), IMAGES


def sequence_net(data_format):
    """Conv1D (causal), 1D pooling and global pooling."""
    shape = (3, 12) if data_format == FIRST else (12, 3)
    return keras.Sequential([
        keras.Input(shape),
        keras.layers.Conv1D(4, 3, padding="causal", activation="relu", data_format=data_format,
                            name="conv_a"),
        keras.layers.AveragePooling1D(2, data_format=data_format, name="pool"),
        keras.layers.Conv1D(5, 3, activation="relu", data_format=data_format, name="conv_b"),
        keras.layers.GlobalAveragePooling1D(data_format=data_format, name="gap"),
        keras.layers.Dense(3, name="logits"),
    ]), SEQUENCES


def max_pool_net(data_format):
    """Max pooling, a BatchNormalization with no layer to fold into, global max pooling."""
    axis = 1 if data_format == FIRST else -1
    shape = (2, 8, 8) if data_format == FIRST else (8, 8, 2)
    inputs = keras.Input(shape)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", data_format=data_format,
                            name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, data_format=data_format, name="max_pool")(x)
    y = keras.layers.Conv2D(6, 3, padding="same", activation="relu", data_format=data_format,
                            name="conv2")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.BatchNormalization(axis=axis, name="bn_after_add")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalMaxPooling2D(data_format=data_format, name="global_max")(x)
    outputs = keras.layers.Dense(4, name="logits")(x)
    return keras.Model(inputs, outputs), IMAGES


def twins(make, **kwargs):
    """A channels_first model, its channels_last twin (same weights) and their data."""
    first, data = make(FIRST, **kwargs)
    last, _ = make(LAST, **{k: v for k, v in kwargs.items() if k != "flatten_format"})
    rng = np.random.default_rng(1)
    for layer in first.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                               rng.normal(0, 0.2, c), rng.uniform(0.3, 2.0, c)])
        elif layer.weights:
            layer.set_weights([rng.normal(0, 0.4, w.shape) for w in layer.get_weights()])
    flatten = next((l for l in first.layers if isinstance(l, keras.layers.Flatten)), None)
    reordered = (
        flatten is not None and flatten.data_format == LAST and len(flatten.input.shape) > 2
    )
    for layer in first.layers:
        weights = layer.get_weights()
        if reordered and weights and layer.input is flatten.output:
            # This model flattened (C, spatial) where its twin flattens (spatial, C).
            channels = flatten.input.shape[1]
            order = np.arange(weights[0].shape[0]).reshape(channels, -1).T.reshape(-1)
            weights[0] = weights[0][order]
        if weights:
            last.get_layer(layer.name).set_weights(weights)
    return first, last, data


def ann_logits(model, x):
    """Pre-softmax output of a channels_last model."""
    last = model.layers[-1]
    if keras.activations.serialize(last.activation) == "softmax":
        inner = keras.Model(model.inputs, last.input)(x).numpy()
        return inner @ last.kernel.numpy() + last.bias.numpy()
    return model(x).numpy()


def ann_mode(snn, x):
    """The converted network with every neuron replaced by its ReLU (exact ANN)."""
    graph = layer_graph(snn.network)
    readout = next(node for node in graph.nodes if node.key == graph.output_keys[0])
    return np.asarray(analog_forward(graph, x, {})[readout.input_keys[0]])


CASES = [
    pytest.param(conv_net, {}, id="conv_flatten_channels_last_order"),
    pytest.param(conv_net, {"flatten_format": FIRST}, id="conv_flatten_channels_first_order"),
    pytest.param(residual_net, {}, id="residual"),
    pytest.param(sequence_net, {}, id="conv1d"),
    pytest.param(max_pool_net, {}, id="max_pooling"),
]


@pytest.mark.parametrize("make, kwargs", CASES)
def test_channels_first_model_simulates_like_its_channels_last_twin(make, kwargs):
    first, last, data = twins(make, **kwargs)
    x_last = data[:32]
    x_first = channels_first(x_last)
    options = dict(normalization="max", per_channel=True, initial_membrane=0.5)
    snn_first = keras_snn.convert_model(first, channels_first(data), **options)
    snn_last = keras_snn.convert_model(last, data, **options)
    target = ann_logits(last, x_last)
    # Exact conversion: the channels_first SNN in ANN mode is the ANN.
    np.testing.assert_allclose(ann_mode(snn_first, x_first), target, rtol=1e-4, atol=1e-4)
    # No layer of the spiking network is channels_first: nothing needs NCHW kernels.
    assert all(getattr(layer, "data_format", LAST) == LAST for layer in snn_first.network.layers)
    # The user feeds channels_first frames and reads the twin's readout and costs.
    run_first, run_last = snn_first.run(x_first, timesteps=64), snn_last.run(x_last, timesteps=64)
    np.testing.assert_allclose(run_first["readout"], run_last["readout"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(run_first["synaptic_ops"], run_last["synaptic_ops"])
    assert run_first["layer_ops"].keys() == run_last["layer_ops"].keys()
    for name, ops in run_first["layer_ops"].items():
        np.testing.assert_array_equal(ops, run_last["layer_ops"][name], err_msg=name)
    assert float(run_first["input_macs"]) == float(run_last["input_macs"])
    assert snn_first.ann_macs() == snn_last.ann_macs()
    assert np.sum(run_first["synaptic_ops"]) > 0
    # And it converges to the ANN's logits.
    readout = snn_first(x_first, timesteps=256).numpy()
    scale = np.abs(target).max()
    errors = [np.abs(readout[:, t - 1] - target).mean() / scale for t in (16, 64, 256)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.02, errors


def test_the_channels_first_ann_itself_gives_the_twin_logits():
    # The twins are one model: the channels_first ANN, run under XLA (the
    # CPU may have no NCHW kernels of its own), gives the twin's logits.
    first, last, data = twins(conv_net)
    inner_first = keras.Model(first.inputs, first.get_layer("logits").output)
    inner_last = keras.Model(last.inputs, last.get_layer("logits").output)
    got = tf.function(inner_first, jit_compile=True)(channels_first(data[:16]))
    np.testing.assert_allclose(got, inner_last(data[:16]), rtol=1e-4, atol=1e-5)


def test_one_transpose_after_the_encoder_and_spiking_input_works_too():
    first, last, data = twins(conv_net)
    permutes = [
        layer for layer in keras_snn.convert_model(first, channels_first(data)).network.layers
        if isinstance(layer, keras.layers.Permute)
    ]
    assert [p.dims for p in permutes] == [(2, 3, 1)]
    # Spiking input neurons fire on the channels_first frame, then move channels last.
    snn_first = keras_snn.convert_model(first, channels_first(data), input_encoding="spiking")
    snn_last = keras_snn.convert_model(last, data, input_encoding="spiking")
    run_first = snn_first.run(channels_first(data[:8]), timesteps=16)
    run_last = snn_last.run(data[:8], timesteps=16)
    np.testing.assert_allclose(run_first["readout"], run_last["readout"], atol=1e-5)
    np.testing.assert_array_equal(run_first["synaptic_ops"], run_last["synaptic_ops"])
    # (Poisson draws follow the frame's layout, so they are other draws than the twin's.)
    poisson = keras_snn.convert_model(first, channels_first(data), input_encoding="poisson")
    assert poisson(channels_first(data[:2]), timesteps=4).shape == (2, 4, 4)


def transposes_per_step(snn, x):
    """Transpose ops inside the compiled time loop's body, from the traced graph."""
    traced = tf.function(lambda inputs: snn(inputs, timesteps=4)).get_concrete_function(
        tf.TensorSpec((None,) + x.shape[1:], tf.float32)
    )
    bodies = [
        function for function in traced.graph.as_graph_def().library.function
        if "while_body" in function.signature.name
    ]
    assert bodies, "no time loop found in the traced graph"
    return sum(node.op == "Transpose" for body in bodies for node in body.node_def)


def test_analog_input_is_transposed_outside_the_time_loop():
    # The default analog input does not change over time: its one transpose
    # runs before the loop, so each step does exactly the twin's work.
    first, last, data = twins(conv_net)
    snn_first = keras_snn.convert_model(first, channels_first(data))
    snn_last = keras_snn.convert_model(last, data)
    assert transposes_per_step(snn_first, channels_first(data[:2])) == 0
    assert transposes_per_step(snn_last, data[:2]) == 0


def test_feature_map_output_and_head_come_back_channels_first():
    inputs = keras.Input((2, 8, 8))
    x = keras.layers.Conv2D(4, 3, activation="relu", data_format=FIRST, name="conv")(inputs)
    x = keras.layers.Conv2D(3, 1, data_format=FIRST, name="map")(x)
    ann = keras.Model(inputs, x)
    x_first = channels_first(IMAGES)
    snn = keras_snn.convert_model(ann, x_first, normalization="max", initial_membrane=0.5)
    readout = snn(x_first[:4], timesteps=8).numpy()
    assert readout.shape == (4, 8, 3, 6, 6)
    np.testing.assert_allclose(
        ann_mode(snn, x_first[:4]), tf.function(ann, jit_compile=True)(x_first[:4]),
        rtol=1e-4, atol=1e-4,
    )
    # A head after a channels_first map receives it channels_first.
    pooled = keras.layers.GlobalAveragePooling2D(data_format=FIRST, name="gap")(ann.output)
    with_head = keras.Model(ann.inputs, keras.layers.Dense(2, name="out")(pooled))
    hybrid = keras_snn.convert_model(with_head, x_first, head="gap", normalization="max",
                                     initial_membrane=0.5)
    got = hybrid(x_first[:16], timesteps=256).numpy()
    expected = tf.function(with_head, jit_compile=True)(x_first[:16]).numpy()
    assert got.shape == (16, 256, 2)
    assert np.abs(got[:, -1] - expected).mean() < 0.02 * np.abs(expected).max()


def test_converted_channels_first_model_saves_and_reloads(tmp_path):
    first, _, data = twins(conv_net)
    snn = keras_snn.convert_model(first, channels_first(data), timesteps=6)
    path = os.path.join(tmp_path, "snn.keras")
    snn.save(path)
    restored = keras.saving.load_model(path)
    x = channels_first(data[:4])
    np.testing.assert_array_equal(restored(x), snn(x))


def test_nir_export_of_a_channels_first_model_equals_the_twins(tmp_path):
    nir = pytest.importorskip("nir")
    first, last, data = twins(conv_net, padding=False)
    graphs = []
    for model, x, name in ((first, channels_first(data), "first"), (last, data, "last")):
        snn = keras_snn.convert_model(model, x, neuron=neurons.IF(reset="zero"))
        path = str(tmp_path / f"{name}.nir")
        keras_snn.export_nir(snn, path)
        graphs.append(nir.read(path, type_check=False))
    got, expected = graphs
    assert sorted(got.edges) == sorted(expected.edges)
    assert got.nodes.keys() == expected.nodes.keys()
    np.testing.assert_array_equal(got.nodes["input"].input_type["input"], [2, 8, 8])
    for name, node in expected.nodes.items():
        for attribute, value in vars(node).items():
            if isinstance(value, np.ndarray):
                np.testing.assert_allclose(
                    getattr(got.nodes[name], attribute), value, rtol=1e-5, atol=1e-6,
                    err_msg=f"{name}.{attribute}",
                )


def test_spiking_input_neurons_keep_the_users_channels_first_shape_in_nir(tmp_path):
    nir = pytest.importorskip("nir")
    first, _, data = twins(conv_net, padding=False)
    snn = keras_snn.convert_model(first, channels_first(data), input_encoding="spiking",
                                  neuron=neurons.IF(reset="zero"))
    path = str(tmp_path / "spiking.nir")
    keras_snn.export_nir(snn, path, approximate=True)
    graph = nir.read(path, type_check=False)
    assert graph.nodes["spiking_input_neuron"].v_threshold.shape == (2, 8, 8)
    assert graph.nodes["conv1_neuron"].v_threshold.shape == (6, 8, 8)


@pytest.mark.parametrize("build, message", [
    (lambda x: keras.layers.Dense(3, name="dense_on_map")(x), "'dense_on_map'.*channels_last"),
    (lambda x: keras.layers.AveragePooling2D(2, data_format=LAST, name="mixed")(x),
     "'mixed'.*channels_last"),
    (lambda x: keras.layers.Reshape((4, 64), name="reshape")(x), "'reshape'.*Flatten"),
    (lambda x: keras.layers.Flatten(name="flat_out")(x), "'flat_out'.*Dense"),
])
def test_layout_errors_name_the_layer(build, message):
    inputs = keras.Input((2, 8, 8))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", data_format=FIRST)(inputs)
    x = build(x)
    if len(x.shape) > 2 and "flat" not in message:
        x = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.ReLU()(x)))
    with pytest.raises(keras_snn.ConversionError, match=message):
        keras_snn.convert_model(keras.Model(inputs, x), channels_first(IMAGES))


def test_per_channel_input_normalization_folds_on_the_channel_axis():
    inputs = keras.Input((2, 8, 8))
    x = keras.layers.Normalization(axis=1, mean=[0.4, 0.6], variance=[0.05, 0.2])(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", data_format=FIRST)(x)
    x = keras.layers.GlobalAveragePooling2D(data_format=FIRST)(x)
    ann = keras.Model(inputs, keras.layers.Dense(3)(x))
    x_first = channels_first(IMAGES[:16])
    snn = keras_snn.convert_model(ann, x_first, normalization="max")
    expected = tf.function(ann, jit_compile=True)(x_first)
    np.testing.assert_allclose(ann_mode(snn, x_first), expected, rtol=1e-4, atol=1e-4)


def test_batch_norm_on_another_axis_than_the_layers_channels_is_refused():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(axis=1, name="bn_rows")(x)  # rows of a channels_last map
    x = keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.ReLU()(x)))
    with pytest.raises(keras_snn.ConversionError, match="'bn_rows'.*first axis.*'conv'"):
        keras_snn.convert_model(keras.Model(inputs, x), IMAGES)


def test_hand_built_channels_first_network_runs_on_any_cpu():
    # No converter involved: channels_first spiking layers compute channels-last.
    inputs = keras.Input((2, 8, 8))
    x = snn_layers.SpikingInput()(inputs)
    x = snn_layers.SpikingConv2D(4, 3, padding="same", data_format=FIRST)(x)
    x = snn_layers.SpikingAveragePooling2D(2, data_format=FIRST)(x)
    x = snn_layers.SpikingGlobalAveragePooling2D(data_format=FIRST)(x)
    x = snn_layers.SpikingDense(3, neuron=None)(x)
    snn = keras_snn.SpikingModel(keras.Model(inputs, snn_layers.Readout()(x)), timesteps=4)
    out = snn.run(channels_first(IMAGES[:2]))
    assert out["readout"].shape == (2, 4, 3) and np.all(np.isfinite(out["readout"]))
    # NIR export reads channels-last layers only, and says so.
    if importlib.util.find_spec("nir") is not None:
        with pytest.raises(keras_snn.NIRExportError, match="channels_last"):
            keras_snn.export_nir(snn, "unused.nir", approximate=True)
