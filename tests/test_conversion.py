"""convert_model: folding is exact, the SNN converges to the ANN, errors name layers."""

import keras
import numpy as np
import pytest

import keras_snn
from keras_snn.conversion.calibration import analog_forward
from keras_snn.graph import layer_graph

RNG = np.random.default_rng(0)
IMAGES = RNG.random((96, 8, 8, 2)).astype("float32")
VECTORS = RNG.random((96, 10)).astype("float32")


def randomise_batch_norms(model):
    """Give BatchNormalization non-trivial statistics, as training would."""
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([
                rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                rng.normal(0, 0.2, c), rng.uniform(0.3, 2.0, c),
            ])
    return model


def conv_model():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Rescaling(0.5)(inputs)
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(12)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Activation("relu")(x)
    x = keras.layers.BatchNormalization()(x)  # input side of the next Dense
    x = keras.layers.Dense(4)(x)
    outputs = keras.layers.Softmax()(x)
    return randomise_batch_norms(keras.Model(inputs, outputs)), IMAGES


def residual_model():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu")(inputs)
    shortcut = x
    x = keras.layers.Conv2D(6, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, padding="same")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Add()([x, shortcut])
    x = keras.layers.ReLU()(x)
    projection = keras.layers.Conv2D(4, 1, strides=2)(x)
    y = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(x)
    y = keras.layers.Conv2D(4, 3, padding="same")(y)
    x = keras.layers.ReLU()(keras.layers.Add()([y, projection]))
    a = keras.layers.Conv2D(3, 1, activation="relu")(x)
    x = keras.layers.Concatenate()([x, a])
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(4, activation="softmax")(x)
    return randomise_batch_norms(keras.Model(inputs, outputs)), IMAGES


def sequence_model():
    return keras.Sequential([
        keras.Input((10,)),
        keras.layers.Reshape((10, 1)),
        keras.layers.Conv1D(4, 3, padding="causal", activation="relu"),
        keras.layers.AveragePooling1D(2),
        keras.layers.UpSampling1D(2),
        keras.layers.Conv1D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.GaussianNoise(0.1),
        keras.layers.Dense(8, activation=None),
        keras.layers.ReLU(max_value=2.0),
        keras.layers.Dense(3, activation="softmax"),
    ]), VECTORS


def nested_model():
    block = keras.Sequential(
        [keras.Input((10,)), keras.layers.Dense(16, activation="relu"),
         keras.layers.Dense(16, activation="relu")],
        name="block",
    )
    inputs = keras.Input((10,))
    x = keras.layers.Normalization(mean=0.5, variance=0.08)(inputs)
    x = block(x)
    outputs = keras.layers.Dense(3)(x)
    return keras.Model(inputs, outputs), VECTORS


MODELS = [conv_model, residual_model, sequence_model, nested_model]


def logits(model, x):
    """The ANN's pre-softmax output."""
    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return keras.Model(model.inputs, last.input)(x).numpy()
    if keras.activations.serialize(last.activation) == "softmax":
        inner = keras.Model(model.inputs, last.input)(x).numpy()
        return inner @ last.kernel.numpy() + last.bias.numpy()
    return model(x).numpy()


@pytest.mark.parametrize("make", MODELS, ids=lambda f: f.__name__)
def test_converted_network_in_ann_mode_reproduces_the_ann(make):
    # Folding and normalisation are exact: replacing every neuron by its ReLU
    # gives back the ANN's logits.
    model, data = make()
    for normalization in ("none", "max"):
        snn = keras_snn.convert_model(model, data, normalization=normalization)
        graph = layer_graph(snn.network)
        values = analog_forward(graph, data[:16], {})
        readout_input = graph.nodes[[n.key for n in graph.nodes].index(graph.output_keys[0])].input_keys[0]
        np.testing.assert_allclose(values[readout_input], logits(model, data[:16]), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make", MODELS, ids=lambda f: f.__name__)
def test_snn_readout_converges_to_ann_logits(make):
    model, data = make()
    snn = keras_snn.convert_model(model, data, normalization="max", initial_membrane=0.5)
    readout = snn(data[:32], timesteps=256).numpy()
    target = logits(model, data[:32])
    scale = np.abs(target).max()
    errors = [np.abs(readout[:, t - 1] - target).mean() / scale for t in (16, 64, 256)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.02, errors
    agreement = (readout[:, -1].argmax(-1) == target.argmax(-1)).mean()
    assert agreement >= 0.9


def test_error_shrinks_roughly_like_one_over_t():
    model, data = nested_model()
    snn = keras_snn.convert_model(model, data, normalization="max", initial_membrane=0.5)
    readout = snn(data[:64], timesteps=512).numpy()
    target = logits(model, data[:64])
    e64 = np.abs(readout[:, 63] - target).mean()
    e512 = np.abs(readout[:, 511] - target).mean()
    assert 3.0 < e64 / e512 < 24.0  # 8x more steps: ~8x smaller error


def test_input_model_is_not_modified():
    model, data = residual_model()
    before = [w.copy() for w in model.get_weights()]
    names = [layer.name for layer in model.layers]
    keras_snn.convert_model(model, data, per_channel=True)
    assert [layer.name for layer in model.layers] == names
    for old, new in zip(before, model.get_weights()):
        assert np.array_equal(old, new)


def test_per_channel_and_percentile_options_build():
    model, data = conv_model()
    snn = keras_snn.convert_model(model, data, per_channel=True, percentile=99.0)
    target = logits(model, data[:32]).argmax(-1)
    assert (snn(data[:32], timesteps=128)[:, -1].numpy().argmax(-1) == target).mean() >= 0.8


def test_max_value_bounds_need_no_calibration_data():
    model = keras.Sequential([
        keras.Input((10,)), keras.layers.Dense(8), keras.layers.ReLU(max_value=1.0),
        keras.layers.Dense(3),
    ])
    snn = keras_snn.convert_model(model)  # auto: the ReLU bound is the ceiling
    hidden = snn.network.get_layer(model.layers[0].name)
    np.testing.assert_allclose(hidden.kernel.numpy(), model.layers[0].kernel.numpy())
    with pytest.raises(keras_snn.ConversionError, match=model.layers[0].name):
        keras_snn.convert_model(model, normalization="percentile")


def relu6_and_qrelu_model():
    keras.utils.set_random_seed(9)
    return keras.Sequential([
        keras.Input((10,)),
        keras.layers.Dense(8, activation="relu6", name="clipped"),  # activations far below 6
        keras.layers.Dense(8, name="quantized_linear"),
        keras_snn.layers.QReLU(levels=4, name="quantized"),
        keras.layers.Dense(3, name="logits"),
    ])


def test_auto_measures_clipped_relus_on_data_and_keeps_qrelu_bounds():
    model = relu6_and_qrelu_model()
    data = np.random.default_rng(9).random((256, 10)).astype("float32")
    hidden = keras.Model(model.inputs, model.get_layer("clipped").output).predict(data, verbose=0)
    assert hidden.max() < 6.0  # the bound is never reached: a data ceiling is tighter
    # One ceiling per layer: ratios are uniform. Bias calibration off: with data it
    # would also scale the kernels per channel (gains), which is not normalisation.
    one_per_layer = dict(per_channel=False, bias_calibration=False)
    with_data = keras_snn.convert_model(model, data, **one_per_layer)
    measured = keras_snn.convert_model(model, data, normalization="percentile", **one_per_layer)
    without_data = keras_snn.convert_model(model, **one_per_layer)  # no data needed

    def kernel(snn, name):
        return snn.network.get_layer(name).kernel.numpy()

    # ReLU6: ceiling from the data's percentile, as normalization="percentile" measures it.
    np.testing.assert_allclose(kernel(with_data, "clipped"), kernel(measured, "clipped"))
    np.testing.assert_allclose(kernel(without_data, "clipped"), model.layers[0].kernel.numpy() / 6)
    # QReLU: its learned bound stays its ceiling, so its input weights change only by the
    # clipped layer's new ceiling: W lambda_clipped / lambda_qrelu.
    clipped_ratio = kernel(with_data, "clipped") / kernel(without_data, "clipped")  # 6 / lambda
    quantized_ratio = (
        kernel(with_data, "quantized_linear") / kernel(without_data, "quantized_linear")
    )
    assert np.all(clipped_ratio > 1.5)
    np.testing.assert_allclose(quantized_ratio * clipped_ratio[0, 0], 1.0, rtol=1e-5)


def test_missing_calibration_data_names_the_layers():
    model, _ = nested_model()
    with pytest.raises(keras_snn.ConversionError, match="calibration_data.*block/dense|dense"):
        keras_snn.convert_model(model)


def test_options_reach_the_layers():
    model, data = nested_model()
    snn = keras_snn.convert_model(
        model, data, neuron="buffered", spike_max=2, initial_membrane=0.5,
        input_encoding="spiking", timesteps=7,
    )
    spiking = [layer for layer in snn.network.layers if getattr(layer, "neuron", None)]
    assert all(isinstance(layer.neuron, keras_snn.neurons.BufferedIF) for layer in spiking[1:])
    assert all(layer.neuron.spike_max == 2 for layer in spiking[1:])
    assert isinstance(snn.network.layers[1], keras_snn.layers.SpikingInput)
    assert snn.timesteps == 7 and tuple(snn(data[:2]).shape) == (2, 7, 3)
    poisson = keras_snn.convert_model(model, data, input_encoding="poisson")
    assert isinstance(poisson.network.layers[1], keras_snn.layers.PoissonInput)


def test_spike_max_two_at_half_t_matches_binary():
    # Seed 004 A.4: the same representational power at half the timesteps.
    model, data = nested_model()
    binary = keras_snn.convert_model(model, data, normalization="max", neuron="buffered")
    multibit = keras_snn.convert_model(
        model, data, normalization="max", neuron="buffered", spike_max=2
    )
    target = logits(model, data[:64])
    e_binary = np.abs(binary(data[:64], timesteps=64)[:, -1] - target).mean()
    e_multibit = np.abs(multibit(data[:64], timesteps=32)[:, -1] - target).mean()
    assert e_multibit < 1.5 * e_binary


def test_head_runs_the_rest_as_an_ann():
    inputs = keras.Input((10,))
    x = keras.layers.Dense(16, activation="relu", name="body")(inputs)
    x = keras.layers.Dense(8, activation="relu", name="neck")(x)
    outputs = keras.layers.Dense(3, activation="sigmoid", name="regression")(x)
    model = keras.Model(inputs, outputs)
    with pytest.raises(keras_snn.ConversionError, match="'regression'.*sigmoid"):
        keras_snn.convert_model(model, VECTORS)
    snn = keras_snn.convert_model(model, VECTORS, head="regression", timesteps=256,
                                  normalization="max", initial_membrane=0.5)
    out = snn(VECTORS[:16]).numpy()
    assert out.shape == (16, 256, 3)
    np.testing.assert_allclose(out[:, -1], model(VECTORS[:16]).numpy(), atol=0.02)
    with pytest.raises(keras_snn.ConversionError, match="'nowhere'"):
        keras_snn.convert_model(model, VECTORS, head="nowhere")


def test_converted_model_saves_and_reloads(tmp_path):
    model, data = residual_model()
    snn = keras_snn.convert_model(model, data, timesteps=5)
    path = str(tmp_path / "snn.keras")
    snn.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_array_equal(restored(data[:4]), snn(data[:4]))


def test_tf_keras_model_converts_like_its_keras3_twin():
    tf_keras = pytest.importorskip("tf_keras")
    k2 = tf_keras.Sequential([
        tf_keras.layers.InputLayer((8, 8, 2)),
        tf_keras.layers.Conv2D(4, 3, padding="same"),
        tf_keras.layers.BatchNormalization(),
        tf_keras.layers.ReLU(),
        tf_keras.layers.AveragePooling2D(2),
        tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(3, activation="softmax"),
    ])
    k3 = keras.Sequential([
        keras.Input((8, 8, 2)),
        keras.layers.Conv2D(4, 3, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.AveragePooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    k3.set_weights(k2.get_weights())
    snn2 = keras_snn.convert_model(k2, IMAGES, timesteps=12)
    snn3 = keras_snn.convert_model(k3, IMAGES, timesteps=12)
    np.testing.assert_allclose(snn2(IMAGES[:8]), snn3(IMAGES[:8]), atol=1e-5)


@pytest.mark.parametrize(
    "layer, message",
    [
        (keras.layers.PReLU(name="prelu"), "'prelu'.*negative"),
        (keras.layers.LeakyReLU(name="leaky"), "'leaky'.*negative"),
        (keras.layers.Activation("tanh", name="tanh"), "'tanh'.*tanh"),
        (keras.layers.LayerNormalization(name="layernorm"), "'layernorm'.*LayerNormalization"),
        (keras.layers.ReLU(negative_slope=0.1, name="slope"), "'slope'.*negative_slope"),
    ],
)
def test_refused_layers_raise_naming_the_layer(layer, message):
    model = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, activation="relu"), layer,
        keras.layers.Flatten(), keras.layers.Dense(3),
    ])
    with pytest.raises(keras_snn.ConversionError, match=message):
        keras_snn.convert_model(model, IMAGES)


def test_structural_errors():
    inputs = keras.Input((10,))
    hidden = keras.layers.Dense(8, name="no_relu")(inputs)
    outputs = keras.layers.Dense(3)(hidden)
    # A hidden layer without ReLU carries signed spikes (issue 17): no longer an error.
    snn = keras_snn.convert_model(keras.Model(inputs, outputs), VECTORS)
    assert isinstance(snn.network.get_layer("no_relu").neuron, keras_snn.neurons.SignedIF)
    with pytest.raises(keras_snn.ConversionError, match="neuron"):
        keras_snn.convert_model(keras.Model(inputs, outputs), VECTORS, neuron="sigmoid")
    with pytest.raises(keras_snn.ConversionError, match="spike_max"):
        keras_snn.convert_model(keras.Model(inputs, outputs), VECTORS, spike_max=0)
    with pytest.raises(keras_snn.ConversionError, match="percentile"):
        keras_snn.convert_model(keras.Model(inputs, outputs), VECTORS, percentile=0)
    with pytest.raises(keras_snn.ConversionError, match="Keras model"):
        keras_snn.convert_model("model.keras")
    assert issubclass(keras_snn.ConversionError, ValueError)


def test_calibration_accepts_datasets_and_generators():
    import tensorflow as tf

    model, data = nested_model()
    from_array = keras_snn.convert_model(model, data, normalization="max")
    dataset = tf.data.Dataset.from_tensor_slices((data, np.zeros(len(data)))).batch(10)
    from_dataset = keras_snn.convert_model(model, dataset, normalization="max")
    from_generator = keras_snn.convert_model(
        model, (data[i : i + 7] for i in range(0, len(data), 7)), normalization="max"
    )
    for other in (from_dataset, from_generator):
        np.testing.assert_allclose(other(data[:4]), from_array(data[:4]), atol=1e-5)
