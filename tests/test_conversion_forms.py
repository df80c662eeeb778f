"""Equivalent forms convert like their canonical ones: relu6, a sigmoid head, a final
linear layer followed by reshaping/pooling, padding and concatenation (issue 17)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_snn

RNG = np.random.default_rng(0)
IMAGES = RNG.random((64, 8, 8, 2)).astype("float32")


def logits_of(model, x, layer_index=-2):
    """The ANN's output before its final (dropped) activation."""
    return keras.Model(model.inputs, model.layers[layer_index].output).predict(x, verbose=0)


def relative_error(out, expected):
    return np.abs(out - expected).max() / np.abs(expected).max()


@pytest.mark.parametrize("form", ["inline", "activation_layer"])
def test_relu6_converts_like_relu_with_max_value_6(form):
    def model(*hidden):
        return keras.Sequential(
            [keras.Input((8, 8, 2)), keras.layers.Flatten(), *hidden, keras.layers.Dense(3)]
        )

    if form == "inline":
        relu6 = model(keras.layers.Dense(8, activation="relu6"))
    else:
        relu6 = model(keras.layers.Dense(8), keras.layers.Activation("relu6"))
    relu_max = model(keras.layers.Dense(8), keras.layers.ReLU(6.0))
    relu_max.set_weights([w * 20 for w in relu_max.get_weights()])  # so the clip at 6 matters
    relu6.set_weights(relu_max.get_weights())
    hidden = keras.Model(relu_max.inputs, relu_max.layers[-2].output).predict(IMAGES, verbose=0)
    assert hidden.max() == 6.0
    snn6 = keras_snn.convert_model(relu6, timesteps=8)  # the ceiling is known: no data needed
    snn_max = keras_snn.convert_model(relu_max, timesteps=8)
    np.testing.assert_allclose(snn6(IMAGES[:8]), snn_max(IMAGES[:8]), atol=1e-5)


def test_final_sigmoid_is_dropped_and_the_readout_decides_at_zero():
    ann = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Flatten(),
        keras.layers.Dense(16, activation="relu"), keras.layers.Dense(1, activation="sigmoid"),
    ])
    snn = keras_snn.convert_model(ann, IMAGES, timesteps=300)
    out = np.asarray(snn(IMAGES))[:, -1, 0]
    probability = ann.predict(IMAGES, verbose=0)[:, 0].astype("float64")
    logit = np.log(probability / (1.0 - probability))  # the sigmoid's input
    assert relative_error(out, logit) < 0.05
    confident = np.abs(logit) > 0.05 * np.abs(logit).max()
    np.testing.assert_array_equal((out > 0)[confident], (probability > 0.5)[confident])


def test_a_sigmoid_that_is_not_a_final_binary_head_is_refused_with_head_suggested():
    ann = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Flatten(),
        keras.layers.Dense(1, activation="sigmoid", name="gate"), keras.layers.Dense(2),
    ])
    with pytest.raises(keras_snn.ConversionError, match="'gate' applies sigmoid.*head='gate'"):
        keras_snn.convert_model(ann, IMAGES)
    ann = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Flatten(),
        keras.layers.Dense(3, activation="sigmoid", name="labels"),
    ])
    with pytest.raises(keras_snn.ConversionError, match="'labels'.*3 outputs.*head='labels'"):
        keras_snn.convert_model(ann, IMAGES)


def test_all_convolutional_classifier_reads_out_through_global_pooling():
    ann = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Conv2D(8, 3, activation="relu"),
        keras.layers.Conv2D(3, 3), keras.layers.GlobalAveragePooling2D(),
        keras.layers.Activation("softmax"),
    ])
    snn = keras_snn.convert_model(ann, IMAGES, timesteps=200)
    pooling = snn.network.layers[-2]
    assert isinstance(pooling, keras_snn.layers.SpikingGlobalAveragePooling2D)
    assert pooling.neuron is None  # it averages the readout layer's current
    errors = [relative_error(np.asarray(snn(IMAGES[:16]))[:, t - 1], logits_of(ann, IMAGES[:16]))
              for t in (20, 200)]
    assert errors[1] < errors[0] and errors[1] < 0.05


@pytest.mark.parametrize("pooling", [
    lambda: keras.layers.GlobalAveragePooling2D(),
    lambda: keras.layers.GlobalAveragePooling2D(keepdims=True),
    lambda: keras.layers.AveragePooling2D(8),  # a window as large as the map
])
def test_a_pooling_to_one_position_passes_its_mean_unrounded(pooling):
    # One pixel of 64 is on: the pooled mean is 1/64 of the conv's ceiling.
    # A pooling neuron would round it away (0.5 + 4/64 never reaches the
    # threshold in 4 steps); without one it reaches the readout at every step.
    ann = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(2, 1, activation="relu", kernel_initializer="ones"),
        pooling(), keras.layers.Flatten(),
        keras.layers.Dense(3, kernel_initializer=keras.initializers.Constant([[1, 2, 3]] * 2)),
    ])
    images = np.zeros((4, 8, 8, 1), "float32")
    images[np.arange(4), np.arange(4), 2 * np.arange(4), 0] = 1.0
    snn = keras_snn.convert_model(ann, images, timesteps=4, bias_calibration=False)
    pool = next(layer for layer in snn.network.layers if "pooling" in layer.name)
    assert pool.neuron is None
    readout = np.asarray(snn(images))
    np.testing.assert_allclose(readout, np.broadcast_to(ann.predict(images, verbose=0)[:, None],
                                                        readout.shape), rtol=1e-5)


def test_a_windowed_pooling_of_spikes_keeps_its_neuron():
    ann = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.AveragePooling2D(2), keras.layers.Flatten(), keras.layers.Dense(3),
    ])
    snn = keras_snn.convert_model(ann, IMAGES, timesteps=4)
    pool = next(layer for layer in snn.network.layers if "pooling" in layer.name)
    assert pool.neuron is not None and pool.neuron.spike_max == 1


def test_mobilenet_style_head_conv_reshape_softmax_is_the_readout():
    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(6, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = keras.layers.Dropout(0.1)(x)
    x = keras.layers.Conv2D(4, 1, name="conv_preds")(x)
    x = keras.layers.Reshape((4,))(x)
    outputs = keras.layers.Activation("softmax")(x)
    ann = keras.Model(inputs, outputs)
    snn = keras_snn.convert_model(ann, IMAGES, timesteps=200)
    out = np.asarray(snn(IMAGES[:16]))
    assert out.shape == (16, 200, 4)
    assert relative_error(out[:, -1], logits_of(ann, IMAGES[:16])) < 0.05


def test_dense_reshape_softmax_keeps_the_reshaped_readout():
    ann = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Flatten(), keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(6), keras.layers.Reshape((2, 3)), keras.layers.Softmax(),
    ])
    snn = keras_snn.convert_model(ann, IMAGES, timesteps=200)
    out = np.asarray(snn(IMAGES[:16]))
    assert out.shape == (16, 200, 2, 3)
    assert relative_error(out[:, -1], logits_of(ann, IMAGES[:16])) < 0.05


def test_max_pooling_of_a_linear_layer_pools_signed_counts():
    ann = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Conv2D(3, 3, name="linear"),
        keras.layers.GlobalMaxPooling2D(name="gmp"),
    ])
    kernel, _ = ann.get_layer("linear").get_weights()
    ann.get_layer("linear").set_weights([kernel, np.array([-1.5, -0.3, 0.0], "float32")])
    # One ceiling for the layer (per_channel=False), the scale the readout is checked in.
    snn = keras_snn.convert_model(
        ann, IMAGES, normalization="max", per_channel=False, timesteps=400
    )
    assert isinstance(snn.network.get_layer("linear").neuron, keras_snn.neurons.SignedIF)
    expected = ann.predict(IMAGES[:16], verbose=0)
    assert expected.min() < 0  # some channel maxima are negative
    # The readout is the pooled spike rate, in units of the conv's ceiling.
    conv = keras.Model(ann.inputs, ann.get_layer("linear").output)
    ceiling = np.abs(conv.predict(IMAGES, verbose=0)).max()
    out = np.asarray(snn(IMAGES[:16])) * ceiling
    errors = [relative_error(out[:, t - 1], expected) for t in (40, 400)]
    assert errors[1] < errors[0] and errors[1] < 0.03


def test_padding_and_concatenation_of_differently_scaled_branches():
    inputs = keras.Input((8, 8, 2))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    b = keras.layers.Conv2D(3, 3, padding="same", name="b")(inputs)
    b = keras.layers.ReLU()(b)
    x = keras.layers.Concatenate()([a, b])
    x = keras.layers.ZeroPadding2D(1)(x)
    x = keras.layers.Conv2D(5, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3)(x)
    ann = keras.Model(inputs, outputs)
    kernel, bias = ann.get_layer("b").get_weights()
    ann.get_layer("b").set_weights([kernel * 5.0, bias])  # a five times larger ceiling
    snn = keras_snn.convert_model(ann, IMAGES, timesteps=300, normalization="max")
    expected = ann.predict(IMAGES[:16], verbose=0)
    errors = [relative_error(np.asarray(snn(IMAGES[:16]))[:, t - 1], expected) for t in (30, 300)]
    assert errors[1] < errors[0] and errors[1] < 0.05


def variable_length_model():
    keras.utils.set_random_seed(7)
    inputs = keras.Input((None, 3))
    x = keras.layers.Conv1D(6, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv1D(6, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(2)(x))


def test_variable_length_model_converts_at_the_calibration_length():
    ann = variable_length_model()
    sequences = RNG.random((32, 12, 3)).astype("float32")
    snn = keras_snn.convert_model(ann, sequences, timesteps=8, initial_membrane=0.5)
    assert tuple(ann.inputs[0].shape) == (None, None, 3)  # the user's model is unchanged
    expected = ann.predict(sequences, verbose=0)
    readout = snn(sequences, timesteps=512).numpy()[:, -1]
    assert relative_error(readout, expected) < 0.05
    with pytest.raises(ValueError, match=r"\(batch, 12, 3\).*\(2, 20, 3\)"):
        snn(RNG.random((2, 20, 3)).astype("float32"))
    longer = keras_snn.convert_model(ann, RNG.random((8, 20, 3)).astype("float32"))
    assert tuple(longer(RNG.random((2, 20, 3)).astype("float32")).shape) == (2, 32, 2)


def test_variable_length_model_needs_calibration_data_of_one_shape():
    ann = variable_length_model()
    with pytest.raises(keras_snn.ConversionError, match="variable shape.*calibration_data"):
        keras_snn.convert_model(ann, normalization="none")
    with pytest.raises(keras_snn.ConversionError, match="variable shape"):
        keras_snn.convert_model(ann, RNG.random((8, 12, 4)).astype("float32"))
    mixed = [RNG.random((4, 12, 3)).astype("float32"), RNG.random((4, 16, 3)).astype("float32")]
    with pytest.raises(keras_snn.ConversionError, match=r"\(batch, 12, 3\).*\(4, 16, 3\)"):
        keras_snn.convert_model(ann, mixed)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("layer", ["rescaling", "normalization"])
def test_input_offset_before_a_zero_padded_conv_is_applied_by_the_encoder(layer, data_format):
    """`W (a x + b)` cannot fold into a padded conv (borders); the analog encoder applies it."""
    keras.utils.set_random_seed(8)
    first = data_format == "channels_first"
    shape = (2, 8, 8) if first else (8, 8, 2)
    images = np.moveaxis(IMAGES, -1, 1) if first else IMAGES
    if layer == "rescaling":
        affine = keras.layers.Rescaling(2.0, offset=-1.0)
    else:
        affine = keras.layers.Normalization(axis=1 if first else -1)
        affine.adapt(images)
    ann = keras.Sequential([
        keras.Input(shape), affine,
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", data_format=data_format),
        keras.layers.Flatten(), keras.layers.Dense(3),
    ])
    # The exact folding is checked: no bias calibration (it shifts the biases on purpose).
    snn = keras_snn.convert_model(ann, images, timesteps=8, initial_membrane=0.5,
                                  bias_calibration=False)
    encoder = snn.network.layers[1]
    assert isinstance(encoder, keras_snn.layers.AnalogInput) and not encoder.is_identity
    from keras_snn.conversion.calibration import analog_forward
    from keras_snn.graph import layer_graph

    graph = layer_graph(snn.network)
    readout = next(node for node in graph.nodes if node.key == graph.output_keys[0])
    ann_mode = np.asarray(analog_forward(graph, images, {})[readout.input_keys[0]])
    # Under XLA: CPUs without oneDNN have no NCHW convolution for the channels_first ANN.
    expected = np.asarray(tf.function(ann, jit_compile=True)(images))
    np.testing.assert_allclose(ann_mode, expected, rtol=1e-4, atol=1e-4)  # exact conversion
    assert relative_error(snn(images, timesteps=512).numpy()[:, -1], expected) < 0.05
    restored = keras_snn.SpikingModel.from_config(snn.get_config())
    restored.set_weights(snn.get_weights())
    np.testing.assert_allclose(restored(images[:4]).numpy(), snn(images[:4]).numpy())


def test_input_offset_with_spiking_input_is_still_refused_and_nir_names_the_encoder(tmp_path):
    ann = keras.Sequential([
        keras.Input((8, 8, 2)), keras.layers.Rescaling(2.0, offset=-1.0),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(3),
    ])
    with pytest.raises(keras_snn.ConversionError, match="padding='same' pads zeros"):
        keras_snn.convert_model(ann, IMAGES, input_encoding="spiking")
    snn = keras_snn.convert_model(ann, IMAGES, neuron=keras_snn.neurons.IF(reset="zero"))
    pytest.importorskip("nir")
    with pytest.raises(keras_snn.NIRExportError, match="analog_input.*Rescaling"):
        keras_snn.export_nir(snn, tmp_path / "model.nir")
