"""Hidden layers without ReLU (signed spiking neurons), BatchNormalization that follows no
weighted layer, and the keras.applications families that convert (issue 17)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_snn
from keras_snn import layers
from keras_snn import neurons

RNG = np.random.default_rng(0)
IMAGES = RNG.random((64, 8, 8, 3)).astype("float32")


def relative_errors(ann, snn, steps, x=IMAGES[:16]):
    expected = ann.predict(x, verbose=0)
    out = np.asarray(snn(x, timesteps=max(steps)))
    return [np.abs(out[:, t - 1] - expected).max() / np.abs(expected).max() for t in steps]


# ------------------------------------------------------------------ neuron
@pytest.mark.parametrize("spike_max", [1, 4])
def test_signed_if_counts_are_the_signed_input_rounded_towards_zero(spike_max):
    neuron = neurons.SignedIF(spike_max=spike_max)
    current = tf.constant(np.linspace(-spike_max, spike_max, 41), tf.float32)
    state = neuron.initial_state(current.shape, threshold=1.0)
    counts = tf.zeros_like(current)
    for step in range(1, 51):
        spikes, state = neuron.step(current, state, threshold=1.0)
        counts += spikes
        assert float(tf.reduce_max(tf.abs(spikes))) <= spike_max
    ideal = 50 * current.numpy()
    # The membrane keeps the rest: within one spike of the largest size.
    assert np.all(np.abs(counts.numpy() - ideal) <= spike_max + 1e-4)
    assert np.all(np.abs(counts.numpy()) <= np.abs(ideal) + 1e-4)  # towards zero
    assert np.all(np.sign(counts.numpy()) == np.sign(np.round(ideal, 4)))
    assert neurons.deserialize(neurons.serialize(neuron)) == neuron
    assert neuron.emits_negative_spikes


@pytest.mark.parametrize("spike_max", [1, 4])
def test_signed_if_rounding_to_nearest_counts_the_signed_input_rounded_both_ways(spike_max):
    neuron = neurons.SignedIF(spike_max=spike_max, rounding="nearest")
    current = tf.constant(np.linspace(-spike_max, spike_max, 41) + 0.013, tf.float32)
    state = neuron.initial_state(current.shape, threshold=1.0)
    counts = tf.zeros_like(current)
    for steps in range(1, 9):
        spikes, state = neuron.step(current, state, threshold=1.0)
        counts += spikes
        ideal = steps * current.numpy()
        if spike_max == 1:  # the membrane stays within half a spike: the nearest count
            np.testing.assert_array_equal(counts.numpy(), np.round(ideal))
        else:  # power-of-two spikes: here within half the largest spike
            assert np.all(np.abs(counts.numpy() - ideal) <= spike_max / 2 + 1e-4)
    # Symmetric: an input's negative gives the negative count (no bias to either sign).
    negated = neurons.SignedIF(spike_max=spike_max, rounding="nearest")
    state = negated.initial_state(current.shape, threshold=1.0)
    negated_counts = tf.zeros_like(current)
    for _ in range(8):
        spikes, state = negated.step(-current, state, threshold=1.0)
        negated_counts += spikes
    np.testing.assert_array_equal(negated_counts.numpy(), -counts.numpy())
    assert neurons.deserialize(neurons.serialize(neuron)) == neuron
    assert neuron != neurons.SignedIF(spike_max=spike_max)
    with pytest.raises(ValueError, match="`rounding` must be one of"):
        neurons.SignedIF(rounding="up")


@pytest.mark.parametrize("rounding", ["nearest", "toward_zero"])
def test_signed_bursts_count_the_input_so_far_rounded_at_every_step(rounding):
    # With bursts as large as the input needs, nothing lags: after every step
    # the count is the accumulated input in spikes rounded to the nearest, or
    # (firing at +-theta) within one spike of it.
    currents = np.random.default_rng(1).normal(0.0, 2.0, (12, 64)).astype("float32")
    neuron = neurons.SignedIF(rounding=rounding, burst=64)
    state = neuron.initial_state((64,), threshold=0.5)
    counts = np.zeros(64)
    for step, current in enumerate(currents):
        spikes, state = neuron.step(tf.constant(current), state, threshold=0.5)
        assert np.abs(spikes.numpy()).max() <= 64
        counts += spikes.numpy()
        accumulated = currents[: step + 1].astype("float64").sum(axis=0) / 0.5
        if rounding == "nearest":
            np.testing.assert_array_equal(counts, np.round(accumulated))
        else:
            assert np.abs(counts - accumulated).max() < 1.0
    plain = neurons.SignedIF(rounding=rounding)
    assert neurons.deserialize(neurons.serialize(neuron)) == neuron != plain
    assert (neuron.largest_spike, plain.largest_spike) == (64, 1)
    with pytest.raises(ValueError, match="`burst` must be an integer >= 1"):
        neurons.SignedIF(burst=0)


# -------------------------------------------------------------- conversion
def test_a_hidden_linear_layer_gets_signed_neurons_scaled_by_its_absolute_ceiling():
    ann = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(12, name="linear"),
        keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3),
    ])
    # One ceiling for the layer (per_channel=False), the one the kernel is checked against.
    snn = keras_snn.convert_model(
        ann, IMAGES, normalization="max", per_channel=False, timesteps=400
    )
    linear = snn.network.get_layer("linear")
    assert isinstance(linear.neuron, neurons.SignedIF)
    assert linear.neuron.rounding == "nearest"  # the signed form of starting at theta/2
    hidden = keras.Model(ann.inputs, ann.get_layer("linear").output).predict(IMAGES, verbose=0)
    assert hidden.min() < 0 < hidden.max()
    ceiling = np.abs(hidden).max()
    np.testing.assert_allclose(
        np.asarray(linear.kernel), ann.get_layer("linear").get_weights()[0] / ceiling, rtol=1e-5
    )
    errors = relative_errors(ann, snn, (25, 400))
    assert errors[1] < errors[0] and errors[1] < 0.03


def inverted_residual_net():
    """MobileNetV2-style: expand (ReLU6), depthwise (ReLU6), linear project, Add, no ReLU."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(6, 1, name="first_project")(x)  # linear, feeds the block and the Add
    for index in range(2):
        y = keras.layers.Conv2D(12, 1, activation="relu6")(x)
        y = keras.layers.DepthwiseConv2D(3, padding="same")(y)
        y = keras.layers.BatchNormalization()(y)
        y = keras.layers.Activation("relu6")(y)
        y = keras.layers.Conv2D(6, 1)(y)
        y = keras.layers.BatchNormalization(name=f"project_bn_{index}")(y)
        x = keras.layers.Add(name=f"add_{index}")([x, y])
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    for layer in model.layers:  # trained-looking BN statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.moving_mean.assign(RNG.normal(0, 0.2, channels).astype("float32"))
            layer.moving_variance.assign(RNG.uniform(0.5, 2.0, channels).astype("float32"))
    return model


def pre_softmax(model):
    last = model.layers[-1]
    logits = keras.layers.Dense(last.units, name="logits")
    inputs = keras.Input(last.input.shape[1:])
    head = keras.Model(inputs, logits(inputs))
    logits.set_weights(last.get_weights())
    return keras.Model(model.inputs, head(last.input))


def test_inverted_residual_blocks_convert_with_signed_bottlenecks_and_adds():
    ann = inverted_residual_net()
    snn = keras_snn.convert_model(ann, IMAGES, timesteps=300)
    network = snn.network
    assert isinstance(network.get_layer("first_project").neuron, neurons.SignedIF)
    assert isinstance(network.get_layer("add_0").neuron, neurons.SignedIF)
    # The last Add feeds global pooling and the classifier: signed spikes too.
    assert isinstance(network.get_layer("add_1").neuron, neurons.SignedIF)
    errors = relative_errors(pre_softmax(ann), snn, (30, 300))
    assert errors[1] < errors[0] and errors[1] < 0.08


def test_signed_network_saves_and_reloads(tmp_path):
    snn = keras_snn.convert_model(inverted_residual_net(), IMAGES, timesteps=6)
    path = str(tmp_path / "signed.keras")
    snn.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.network.get_layer("add_0").neuron, neurons.SignedIF)
    np.testing.assert_array_equal(restored(IMAGES[:4]), snn(IMAGES[:4]))


def test_batch_norm_after_an_add_or_a_concatenation_becomes_a_depthwise_layer():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(a)
    x = keras.layers.Add()([a, b])  # pre-activation ResNet: the Add has no ReLU
    x = keras.layers.BatchNormalization(name="preact_bn")(x)
    x = keras.layers.ReLU()(x)
    c = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = keras.layers.Concatenate()([x, c])  # DenseNet: BN -> ReLU after a concatenation
    x = keras.layers.BatchNormalization(name="dense_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.BatchNormalization(name="flat_bn")(x)  # rank 2: a diagonal Dense
    x = keras.layers.ReLU()(x)
    outputs = keras.layers.Dense(3)(x)
    ann = keras.Model(inputs, outputs)
    for name in ("preact_bn", "dense_bn", "flat_bn"):
        layer = ann.get_layer(name)
        channels = layer.gamma.shape[0]
        layer.set_weights([  # gamma, beta, mean, variance: most units stay active
            RNG.uniform(0.5, 1.5, channels), RNG.uniform(0.0, 0.3, channels),
            RNG.normal(0.0, 0.1, channels), RNG.uniform(0.5, 1.5, channels),
        ])
    # neuron="if": the neuron the ReLU fused into is checked to be the plain, unsigned one.
    snn = keras_snn.convert_model(ann, IMAGES, timesteps=300, normalization="max", neuron="if")
    preact = snn.network.get_layer("preact_bn")
    assert isinstance(preact, layers.SpikingDepthwiseConv2D) and preact.kernel_size == (1, 1)
    assert isinstance(preact.neuron, neurons.IF)  # the ReLU fused into it
    assert isinstance(snn.network.get_layer("flat_bn"), layers.SpikingDense)
    errors = relative_errors(ann, snn, (30, 300))
    assert errors[1] < errors[0] and errors[1] < 0.05


# ---------------------------------------------------- keras.applications
APPLICATIONS = {
    "MobileNet": dict(alpha=0.25),
    "MobileNetV2": dict(alpha=0.35),
    "VGG16": {},
    "ResNet50": {},
    "ResNet50V2": {},
    "DenseNet121": {},
    "InceptionV3": dict(input_shape=(75, 75, 3)),
    "Xception": dict(input_shape=(71, 71, 3)),
}  # NASNetMobile converts too (benchmarks/applications_matrix.py) but takes ~20 s here


def test_separable_convolution_folds_exactly_into_one_convolution():
    ann = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.SeparableConv2D(5, 3, depth_multiplier=2, padding="same", activation="relu",
                                     name="separable"),
        keras.layers.Flatten(), keras.layers.Dense(3),
    ])
    snn = keras_snn.convert_model(ann, IMAGES, normalization="none", timesteps=2)
    conv = snn.network.get_layer("separable")
    assert isinstance(conv, layers.SpikingConv2D) and conv.kernel.shape == (3, 3, 3, 5)
    # In ANN terms the folded convolution is the separable one.
    reference = keras.Model(ann.inputs, ann.get_layer("separable").output)
    folded = conv.compute_current(IMAGES[:4])
    np.testing.assert_allclose(np.maximum(folded, 0), reference(IMAGES[:4]), atol=1e-5)


def test_relu_that_cannot_fuse_becomes_a_spiking_identity_layer():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same")(a)
    x = keras.layers.Add(name="add")([a, b])  # Xception: the sum feeds a ReLU and a shortcut
    relu = keras.layers.ReLU(name="relu")(x)
    shortcut = keras.layers.Conv2D(4, 1)(x)
    x = keras.layers.Add()([keras.layers.Conv2D(4, 3, padding="same")(relu), shortcut])
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.ReLU()(x)))
    ann = keras.Model(inputs, outputs)
    # neuron="if": the identity layer's neuron is checked to be the plain, unsigned one.
    snn = keras_snn.convert_model(ann, IMAGES, normalization="max", timesteps=400, neuron="if")
    identity = snn.network.get_layer("relu")
    assert isinstance(identity, layers.SpikingDepthwiseConv2D)
    assert isinstance(identity.neuron, neurons.IF)
    assert isinstance(snn.network.get_layer("add").neuron, neurons.SignedIF)
    errors = relative_errors(ann, snn, (40, 400))
    assert errors[1] < errors[0] and errors[1] < 0.05


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_applications_convert_and_run(name):
    kwargs = {"input_shape": (32, 32, 3), **APPLICATIONS[name]}
    model = getattr(keras.applications, name)(weights=None, classes=10, **kwargs)
    x = RNG.random((4,) + kwargs["input_shape"]).astype("float32")
    snn = keras_snn.convert_model(model, x, timesteps=2)
    out = np.asarray(snn(x[:1]))
    assert out.shape == (1, 2, 10) and np.isfinite(out).all()


def test_efficientnet_is_refused_naming_swish():
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10)
    with pytest.raises(keras_snn.ConversionError, match="'silu' \\(swish\\)"):
        keras_snn.convert_model(model, IMAGES[:2])


def test_tensor_operations_outside_layers_are_refused_by_name():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = x * 0.5 + 1.0  # graph operations, not layers (as in MobileNetV3's hard-swish)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    with pytest.raises(keras_snn.ConversionError, match="outside layers: '.*' \\(Multiply\\)"):
        keras_snn.convert_model(keras.Model(inputs, outputs), IMAGES)
