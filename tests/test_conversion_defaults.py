"""convert_model's "auto" defaults: initial membrane, per-channel ceilings, neuron."""

import keras
import numpy as np
import pytest

import keras_snn
from keras_snn.layers import QReLU


def spiking_layers(snn):
    return [layer for layer in snn.network.layers if getattr(layer, "neuron", None)]


def relu_conv_model(groups=1):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((8, 8, 4)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.AveragePooling2D(2),
        keras.layers.Conv2D(8, 3, padding="same", groups=groups, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(3),
    ])


def calibration(shape=(8, 8, 4), count=64):
    return np.random.default_rng(1).random((count, *shape)).astype("float32")


def assert_same_network(a, b):
    for layer_a, layer_b in zip(a.network.layers, b.network.layers):
        assert type(layer_a) is type(layer_b)
        for wa, wb in zip(layer_a.get_weights(), layer_b.get_weights()):
            np.testing.assert_array_equal(wa, wb)
        if getattr(layer_a, "neuron", None) is not None:
            assert layer_a.neuron == layer_b.neuron


def test_relu_defaults_are_per_channel_ceilings_and_half_threshold_start():
    model, x = relu_conv_model(), calibration()
    default = keras_snn.convert_model(model, x)
    explicit = keras_snn.convert_model(
        model, x, neuron=keras_snn.neurons.BufferedIF(initial_membrane=0.5, burst=8),
        per_channel=True,
    )
    assert_same_network(default, explicit)
    np.testing.assert_array_equal(default(x[:4]), explicit(x[:4]))
    for layer in spiking_layers(default):  # the pooling neuron too
        assert isinstance(layer.neuron, keras_snn.neurons.BufferedIF)
        assert layer.neuron.initial_membrane == 0.5 and layer.neuron.burst == 8
    named = keras_snn.convert_model(model, x, neuron="buffered")  # the paper's neuron
    assert all(layer.neuron.burst == 1 for layer in spiking_layers(named))
    per_layer = keras_snn.convert_model(model, x, per_channel=False)
    kernels = [np.abs(w.get_weights()[0] - v.get_weights()[0]).max()
               for w, v in zip(spiking_layers(default), spiking_layers(per_layer))
               if w.get_weights()]
    assert max(kernels) > 0  # per-channel ceilings rescale differently


def test_explicit_options_still_give_the_old_behaviour():
    model, x = relu_conv_model(), calibration()
    snn = keras_snn.convert_model(model, x, per_channel=False, initial_membrane=0.0)
    assert all(layer.neuron.initial_membrane == 0.0 for layer in spiking_layers(snn))


def test_grouped_convolutions_keep_one_ceiling_per_layer():
    model, x = relu_conv_model(groups=2), calibration()
    with pytest.raises(keras_snn.ConversionError, match="per_channel=False"):
        keras_snn.convert_model(model, x, per_channel=True)
    assert_same_network(
        keras_snn.convert_model(model, x),
        keras_snn.convert_model(model, x, per_channel=False),
    )


@pytest.mark.parametrize(
    "shift, rule, expected",
    [(0.5, "auto", 0.5), (0.25, "auto", 0.25), (0.0, "auto", 0.5),
     (0.5, "shift", 0.5), (0.25, "shift", 0.25), (0.0, "shift", 0.0)],
)
def test_qrelu_layers_start_at_their_shift_and_other_layers_at_half(shift, rule, expected):
    # "shift": V(0) = phi theta for every QReLU layer; "auto" does the same for
    # a shifted QReLU but starts an eq. 1 QReLU (phi = 0) at theta / 2 (measured).
    model = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(5), QReLU(levels=4, shift=shift),
        keras.layers.Dense(5, activation="relu"), keras.layers.Dense(2),
    ])
    snn = keras_snn.convert_model(
        model, np.random.default_rng(0).random((32, 6)), initial_membrane=rule
    )
    membranes = [layer.neuron.initial_membrane for layer in spiking_layers(snn)]
    assert membranes == [expected, 0.5]
    assert all(isinstance(layer.neuron, keras_snn.neurons.BufferedIF)
               for layer in spiking_layers(snn))


def test_spiking_input_starts_at_half_threshold_by_default():
    model, x = relu_conv_model(), calibration()
    snn = keras_snn.convert_model(model, x, input_encoding="spiking")
    encoder = snn.network.layers[1]
    assert isinstance(encoder, keras_snn.layers.SpikingInput)
    assert encoder.neuron.initial_membrane == 0.5


def test_a_neuron_template_keeps_its_own_membrane():
    model, x = relu_conv_model(), calibration()
    snn = keras_snn.convert_model(model, x, neuron=keras_snn.neurons.IF(reset="zero"))
    assert all(layer.neuron.initial_membrane == 0.0 for layer in spiking_layers(snn))


@pytest.mark.parametrize(
    "options, message",
    [({"per_channel": "yes"}, "per_channel"), ({"initial_membrane": "half"}, "initial_membrane"),
     ({"initial_membrane": 1.0}, "initial_membrane"),
     ({"neuron": keras_snn.neurons.IF(), "initial_membrane": 0.5}, "Neuron instance")],
)
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(keras_snn.ConversionError, match=message):
        keras_snn.convert_model(relu_conv_model(), calibration(), **options)


@pytest.mark.parametrize("encoding", ["spiking", "poisson"])
def test_spike_encoded_input_refuses_negative_calibration_inputs(encoding):
    # A signed Conv1D signal: spike encoders fire at rate x / ceiling, so every
    # negative sample would read as 0. Conversion names them instead.
    model = keras.Sequential([
        keras.Input((16, 1)), keras.layers.Conv1D(4, 3, activation="relu"),
        keras.layers.Flatten(), keras.layers.Dense(2),
    ])
    signal = np.sin(np.linspace(0, 6, 16, dtype="float32"))[None, :, None].repeat(8, axis=0)
    negative = int(np.count_nonzero(signal < 0))
    with pytest.raises(keras_snn.ConversionError, match=(
            rf"input_encoding='{encoding}'.*{negative} of the {signal.size} calibration input "
            r"values are negative.*input_encoding='analog'")):
        keras_snn.convert_model(model, signal, input_encoding=encoding)
    keras_snn.convert_model(model, signal)  # analog input takes any sign
    keras_snn.convert_model(model, np.abs(signal), input_encoding=encoding)
