"""NIR export: read the file back and check every node against the model."""

import keras
import numpy as np
import pytest

import keras_snn
from keras_snn import neurons

nir = pytest.importorskip("nir")

RNG = np.random.default_rng(0)
IMAGES = RNG.random((32, 8, 8, 2)).astype("float32")


def conv_ann():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8, 8, 2)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
        keras.layers.DepthwiseConv2D(3, activation="relu", name="depthwise"),
        keras.layers.AveragePooling2D(2, name="pool"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(5, activation="relu", name="hidden"),
        keras.layers.Dense(3, name="logits"),
    ])


def exported(snn, tmp_path, **kwargs):
    path = str(tmp_path / "model.nir")
    keras_snn.export_nir(snn, path, **kwargs)
    return nir.read(path, type_check=False)  # grouped convs confuse nir's checker


def test_nir_exact_model_round_trips_every_parameter(tmp_path):
    snn = keras_snn.convert_model(conv_ann(), IMAGES, neuron=neurons.IF(reset="zero"))
    graph = exported(snn, tmp_path)
    network = snn.network
    conv = network.get_layer("conv")
    np.testing.assert_allclose(graph.nodes["conv"].weight, np.asarray(conv.kernel).transpose(3, 2, 0, 1))
    np.testing.assert_allclose(graph.nodes["conv"].bias, np.asarray(conv.bias))
    assert tuple(graph.nodes["conv"].padding) == (1, 1)
    depthwise = graph.nodes["depthwise"]
    assert depthwise.groups == 4 and depthwise.weight.shape == (4, 1, 3, 3)
    for name in ("conv", "depthwise", "pool", "hidden"):
        neuron = graph.nodes[f"{name}_neuron"]
        assert isinstance(neuron, nir.IF)
        threshold = float(np.asarray(network.get_layer(name).threshold))
        np.testing.assert_allclose(neuron.v_threshold, threshold)
        np.testing.assert_allclose(neuron.v_reset, 0.0)
    assert graph.nodes["conv_neuron"].v_threshold.shape == (4, 8, 8)  # channels-first
    assert ("hidden_neuron", "logits") in graph.edges and ("logits", "output") in graph.edges
    # The Dense after Flatten reads channels-first inputs: same outputs from the same values.
    pooled = RNG.random((3, 3, 4)).astype("float32")  # (H, W, C) as Keras holds it
    hidden = network.get_layer("hidden")
    keras_out = pooled.reshape(-1) @ np.asarray(hidden.kernel)
    nir_out = graph.nodes["hidden"].weight @ pooled.transpose(2, 0, 1).reshape(-1)
    np.testing.assert_allclose(nir_out, keras_out, rtol=1e-5)


def test_inexact_neurons_are_refused_or_flagged(tmp_path):
    snn = keras_snn.convert_model(conv_ann(), IMAGES)  # IF with reset by subtraction
    with pytest.raises(keras_snn.NIRExportError, match="'conv'.*NIR-exact"):
        exported(snn, tmp_path)
    graph = exported(snn, tmp_path, approximate=True)
    assert "reset" in graph.metadata["approximations"]


def test_residual_add_becomes_scales_into_one_neuron_and_lif_keeps_its_leak(tmp_path):
    inputs = keras.Input((6,))
    a = keras.layers.Dense(4, activation="relu", name="a")(inputs)
    b = keras.layers.Dense(4, name="b")(a)
    x = keras.layers.ReLU()(keras.layers.Add(name="add")([a, b]))
    outputs = keras.layers.Dense(2, name="out")(x)
    ann = keras.Model(inputs, outputs)
    x = RNG.random((16, 6)).astype("float32")
    snn = keras_snn.convert_model(ann, x, neuron=neurons.LIF(reset="zero"))
    snn.network.get_layer("a").neuron_parameters["leak"].assign(0.8)
    graph = exported(snn, tmp_path)
    assert ("add_scale0", "add_neuron") in graph.edges and ("add_scale1", "add_neuron") in graph.edges
    weights = np.asarray(snn.network.get_layer("add").branch_weights)
    np.testing.assert_allclose(graph.nodes["add_scale0"].scale, weights[0])
    lif = graph.nodes["a_neuron"]
    assert isinstance(lif, nir.LIF)
    np.testing.assert_allclose(lif.tau, 1.0 / (1.0 - 0.8), rtol=1e-5)
    assert isinstance(graph.nodes["add_neuron"], nir.IF)  # leak 1 is IF


def test_layers_without_nir_form_are_refused(tmp_path):
    ann = keras.Sequential([
        keras.Input((6, 6, 1)), keras.layers.ZeroPadding2D(1, name="pad"),
        keras.layers.Conv2D(2, 3, activation="relu"), keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])
    x = RNG.random((8, 6, 6, 1)).astype("float32")
    snn = keras_snn.convert_model(ann, x, neuron=neurons.IF(reset="zero"))
    with pytest.raises(keras_snn.NIRExportError, match="'pad'.*no NIR node"):
        exported(snn, tmp_path)
    poisson = keras_snn.convert_model(conv_ann(), IMAGES, input_encoding="poisson",
                                      neuron=neurons.IF(reset="zero"))
    with pytest.raises(keras_snn.NIRExportError, match="random rate coding"):
        exported(poisson, tmp_path)


def test_threshold_is_written_for_nirs_strict_comparison_with_reset_metadata(tmp_path):
    snn = keras_snn.convert_model(conv_ann(), IMAGES, neuron=neurons.IF(reset="zero"))
    graph = exported(snn, tmp_path)
    theta = np.float32(np.asarray(snn.network.get_layer("pool").threshold))
    written = np.float32(graph.nodes["pool_neuron"].v_threshold.reshape(-1)[0])
    # NIR fires at v > written exactly where keras_snn fires at v >= theta.
    around = np.array([np.nextafter(written, -np.inf), written, theta,
                       np.nextafter(theta, np.inf)], "float32")
    np.testing.assert_array_equal(around > written, around >= theta)
    assert written < theta
    metadata = graph.nodes["pool_neuron"].metadata
    assert metadata["reset"] == "zero" and metadata["fires"] == "v > v_threshold"
    np.testing.assert_allclose(metadata["keras_snn_threshold"], theta)
    assert graph.metadata["producer"] == "keras_snn" and graph.metadata["nir_version"]


def test_sum_pooling_folds_the_window_into_the_pools_threshold(tmp_path):
    snn = keras_snn.convert_model(conv_ann(), IMAGES, neuron=neurons.IF(reset="zero"))
    graph = exported(snn, tmp_path, pooling="sum")
    assert isinstance(graph.nodes["pool"], nir.SumPool2d)
    theta = float(np.asarray(snn.network.get_layer("pool").threshold))
    written = graph.nodes["pool_neuron"].v_threshold
    np.testing.assert_array_equal(written, _strict(np.float32(theta) * np.float32(4)))
    assert isinstance(exported(snn, tmp_path).nodes["pool"], nir.AvgPool2d)  # the default


def _strict(theta):
    return np.nextafter(np.float32(theta), np.float32(-np.inf))


def residual_snn(neuron):
    inputs = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="a")(inputs)
    b = keras.layers.Conv2D(3, 3, padding="same", name="b")(a)
    x = keras.layers.ReLU()(keras.layers.Add(name="add")([a, b]))
    outputs = keras.layers.Dense(2, name="out")(keras.layers.Flatten()(x))
    x = RNG.random((16, 6, 6, 2)).astype("float32")
    return keras_snn.convert_model(keras.Model(inputs, outputs), x, neuron=neuron)


def test_diagonal_residual_scale_computes_what_the_scale_node_does(tmp_path):
    snn = residual_snn(neurons.IF(reset="zero"))
    scale = exported(snn, tmp_path).nodes["add_scale1"].scale  # (C, H, W)
    conv = exported(snn, tmp_path, residual_scale="diagonal").nodes["add_scale1"]
    assert isinstance(conv, nir.Conv2d) and conv.weight.shape == (3, 3, 1, 1)
    current = RNG.random((3, 6, 6)).astype("float32")
    weight, bias = conv.weight[:, :, 0, 0], conv.bias[:, None, None]
    through_conv = np.einsum("oi,ihw->ohw", weight, current) + bias
    np.testing.assert_array_equal(through_conv, scale * current)


def test_dt_rescales_time_constants_not_the_dynamics(tmp_path):
    snn = residual_snn(neurons.LIF(leak=0.75, reset="zero"))
    graph = exported(snn, tmp_path, dt=1e-4)
    lif = graph.nodes["a_neuron"]
    dt = graph.metadata["dt"]
    # Forward Euler with step dt: v <- (1 - dt/tau) v + (dt r / tau) I = 0.75 v + I.
    np.testing.assert_allclose(1.0 - dt / lif.tau, 0.75, rtol=1e-5)
    np.testing.assert_allclose(dt * lif.r / lif.tau, 1.0, rtol=1e-5)


def test_subtractive_if_is_opt_in_and_written_as_nir_1_0_4_reads_it(tmp_path):
    snn = keras_snn.convert_model(conv_ann(), IMAGES, neuron=neurons.IF(reset="subtract"))
    path = str(tmp_path / "sub.nir")
    with pytest.raises(keras_snn.NIRExportError, match="'conv'.*NIR-exact"):
        keras_snn.export_nir(snn, path)
    keras_snn.export_nir(snn, path, subtractive_if=True)
    h5py = pytest.importorskip("h5py")
    with h5py.File(path) as f:
        assert "v_reset" not in f["node/nodes/conv_neuron"]  # nir 1.0.4's IF: (r, v_threshold)
    graph = nir.read(path, type_check=False)
    neuron = graph.nodes["conv_neuron"]
    assert neuron.metadata["reset"] == "subtract" and neuron.metadata["fires"] == "v >= v_threshold"
    np.testing.assert_array_equal(  # the target fires at >=, as keras_snn: threshold unchanged
        neuron.v_threshold, np.float32(np.asarray(snn.network.get_layer("conv").threshold))
    )
    zero_reset = keras_snn.convert_model(conv_ann(), IMAGES, neuron=neurons.IF(reset="zero"))
    with pytest.raises(keras_snn.NIRExportError, match="not an exact subtractive IF"):
        keras_snn.export_nir(zero_reset, path, subtractive_if=True)


def test_bad_export_options_are_refused_by_name(tmp_path):
    snn = residual_snn(neurons.IF(reset="zero"))
    path = str(tmp_path / "m.nir")
    with pytest.raises(ValueError, match="`pooling` must be one of"):
        keras_snn.export_nir(snn, path, pooling="max")
    with pytest.raises(ValueError, match="`residual_scale` must be one of"):
        keras_snn.export_nir(snn, path, residual_scale="fold")
    with pytest.raises(ValueError, match="`dt` must be a positive"):
        keras_snn.export_nir(snn, path, dt=0)


def test_flatten_as_conv_computes_what_flatten_and_affine_do(tmp_path):
    snn = residual_snn(neurons.IF(reset="zero"))
    affine = exported(snn, tmp_path).nodes["out"]
    graph = exported(snn, tmp_path, flatten="conv")
    assert not any(isinstance(node, nir.Flatten) for node in graph.nodes.values())
    conv = graph.nodes["out"]
    assert isinstance(conv, nir.Conv2d) and conv.weight.shape == (2, 3, 6, 6)
    spikes = (RNG.random((3, 6, 6)) > 0.5).astype("float32")  # channels-first, as NIR
    np.testing.assert_allclose(
        np.einsum("ochw,chw->o", conv.weight, spikes), affine.weight @ spikes.reshape(-1),
        rtol=1e-5,
    )
    assert tuple(graph.nodes["output"].output_type["output"]) == (2, 1, 1)


def test_lif_r_one_scales_the_threshold_with_the_input(tmp_path):
    snn = residual_snn(neurons.LIF(leak=0.75, reset="zero"))
    theta = np.float32(np.asarray(snn.network.get_layer("a").threshold))
    lif = exported(snn, tmp_path, lif_r="one").nodes["a_neuron"]
    np.testing.assert_array_equal(lif.r, 1.0)
    # v <- v + (1/tau)(-v + I) = 0.75 v + 0.25 I: a membrane 0.25 times keras_snn's.
    np.testing.assert_allclose(1.0 / lif.tau, 0.25, rtol=1e-6)
    np.testing.assert_array_equal(lif.v_threshold, _strict(theta * np.float32(0.25)))
    assert lif.metadata["keras_snn_threshold"] == float(theta)
    with pytest.raises(ValueError, match="`lif_r` must be one of"):
        exported(snn, tmp_path, lif_r="two")


class WideDense(keras_snn.layers.SpikingDense):
    """A subclass no export rule names: written through SpikingDense's rule (MRO)."""


class Doubler(keras.layers.Layer):
    """A custom layer taught to export_nir with register_nir_rule."""

    def call(self, x):
        return 2.0 * x

    def compute_output_shape(self, input_shape):
        return input_shape


class MyMaxPooling(keras_snn.layers.SpikingMaxPooling2D):
    pass


def _hand_built(middle):
    inputs = keras.Input((6,))
    x = keras_snn.layers.AnalogInput()(inputs)
    x = WideDense(4, neuron=neurons.IF(reset="zero"), name="wide")(x)
    x = middle(x)
    x = keras_snn.layers.SpikingDense(2, neuron=None, name="logits")(x)
    return keras_snn.SpikingModel(keras.Model(inputs, keras_snn.layers.Readout()(x)), timesteps=4)


def test_export_rules_are_found_by_class_and_extended_with_register_nir_rule(tmp_path):
    from keras_snn.export import register_nir_rule

    keras_snn.layers.register_passthrough_layer(Doubler)  # so SpikingModel runs it
    snn = _hand_built(Doubler(name="double"))
    with pytest.raises(keras_snn.NIRExportError, match="'double' \\(Doubler\\): has no NIR node"):
        exported(snn, tmp_path)

    def write_doubler(builder, node, sources):
        scale = builder.nir.Scale(scale=np.full(builder.shape(node.key), 2.0, "float32"))
        return [builder.add_node(node, scale, sources)]

    register_nir_rule(Doubler, write_doubler)
    graph = exported(snn, tmp_path)
    wide = snn.network.get_layer("wide")
    np.testing.assert_array_equal(graph.nodes["wide"].weight, np.asarray(wide.kernel).T)
    assert isinstance(graph.nodes["wide_neuron"], nir.IF)
    np.testing.assert_array_equal(graph.nodes["double"].scale, np.full(4, 2.0, "float32"))
    assert ("wide_neuron", "double") in graph.edges and ("double", "logits") in graph.edges
    with pytest.raises(TypeError, match="keras.layers.Layer subclass"):
        register_nir_rule(object, write_doubler)


def test_a_subclass_of_a_refused_layer_is_refused_with_the_same_message(tmp_path):
    inputs = keras.Input((6, 6, 1))
    x = keras_snn.layers.AnalogInput()(inputs)
    x = keras_snn.layers.SpikingConv2D(2, 3, neuron=neurons.IF(reset="zero"))(x)
    x = MyMaxPooling(2, name="mine")(x)
    x = keras.layers.Flatten()(x)
    x = keras_snn.layers.SpikingDense(2, neuron=None)(x)
    snn = keras_snn.SpikingModel(keras.Model(inputs, keras_snn.layers.Readout()(x)), timesteps=4)
    refusal = "'mine' \\(MyMaxPooling\\): NIR has no max-pooling"
    with pytest.raises(keras_snn.NIRExportError, match=refusal):
        exported(snn, tmp_path)
