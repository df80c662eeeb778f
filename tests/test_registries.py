"""convert_model reads the neuron and pass-through registries as they are when it runs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_snn
from keras_snn import layers
from keras_snn import neurons

RNG = np.random.default_rng(0)
VECTORS = RNG.random((64, 6)).astype("float32")


@neurons.register_neuron(name="my_neuron")
class HalfCurrentIF(neurons.IF):
    """IF driven by half its current: half the rate, so the readout would differ from IF's."""

    def step(self, current, state, threshold, **parameters):
        return super().step(0.5 * current, state, threshold, **parameters)


def mlp(middle=None):
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu")(inputs)
    if middle is not None:
        x = middle(x)
    x = keras.layers.Dense(5, activation="relu")(x)
    outputs = keras.layers.Dense(3)(x)
    return keras.Model(inputs, outputs)


def hidden_neurons(snn):
    return [
        layer.neuron for layer in snn.network.layers
        if isinstance(layer, layers.SpikingDense) and layer.neuron is not None
    ]


def test_convert_model_takes_a_registered_neuron_by_name():
    model = mlp()
    snn = keras_snn.convert_model(
        model, VECTORS, neuron="my_neuron", spike_max=2, initial_membrane=0.5
    )
    hidden = hidden_neurons(snn)
    assert len(hidden) == 2
    for neuron in hidden:
        assert type(neuron) is HalfCurrentIF
        assert (neuron.spike_max, neuron.initial_membrane) == (2, 0.5)
    assert hidden[0] is not hidden[1]
    plain = keras_snn.convert_model(
        model, VECTORS, neuron="if", spike_max=2, initial_membrane=0.5
    )
    assert not np.array_equal(snn(VECTORS[:8]), plain(VECTORS[:8]))  # its own dynamics ran


@pytest.mark.parametrize(
    "name, expected",
    [("if", neurons.IF), ("buffered", neurons.BufferedIF), ("lif", neurons.LIF),
     ("auto", neurons.BufferedIF), ("BufferedIF", neurons.BufferedIF)],  # auto: issue 16
)
def test_builtin_neuron_names_still_convert(name, expected):
    snn = keras_snn.convert_model(mlp(), VECTORS, neuron=name, spike_max=2)
    assert all(type(n) is expected and n.spike_max == 2 for n in hidden_neurons(snn))


@pytest.mark.parametrize("bad", ["sigmoid", None, 3])
def test_unknown_neuron_names_raise_a_clear_error(bad):
    with pytest.raises(keras_snn.ConversionError, match=r"`neuron` must be 'auto'.*register_neuron"):
        keras_snn.convert_model(mlp(), VECTORS, neuron=bad)


def test_neuron_template_that_is_not_registered_converts():
    class Unregistered(neurons.IF):
        pass

    snn = keras_snn.convert_model(mlp(), VECTORS, neuron=Unregistered(reset="zero"))
    hidden = hidden_neurons(snn)
    assert all(type(n) is Unregistered and n.reset == "zero" for n in hidden)
    assert hidden[0] is not hidden[1]


class ReverseFeatures(keras.layers.Layer):
    """Reverses the feature axis: moves values, no arithmetic."""

    def call(self, x):
        return tf.reverse(x, axis=[-1])

    def compute_output_shape(self, input_shape):
        return input_shape


def test_passthrough_layer_registered_after_import_converts():
    model = mlp(ReverseFeatures(name="reverse"))
    data = VECTORS
    # Not registered yet (keras_snn, and so its rules, are already imported):
    with pytest.raises(keras_snn.ConversionError, match="'reverse' \\(ReverseFeatures\\)"):
        keras_snn.convert_model(model, data)
    layers.register_passthrough_layer(ReverseFeatures)
    snn = keras_snn.convert_model(model, data, normalization="max", initial_membrane=0.5)
    assert isinstance(snn.network.get_layer("reverse"), ReverseFeatures)
    readout = snn(data[:32], timesteps=256).numpy()[:, -1]
    target = model.predict(data[:32], verbose=0)
    assert np.abs(readout - target).mean() < 0.02 * np.abs(target).max()


def test_passthrough_layer_without_output_shape_is_refused_at_registration():
    class NoShape(keras.layers.Layer):
        def call(self, x):
            return x

    with pytest.raises(TypeError, match="NoShape does not implement `compute_output_shape`"):
        layers.register_passthrough_layer(NoShape)


class ScaledDense(keras.layers.Dense):
    """A Dense subclass the weighted-layer table does not name: found through its MRO."""


class GatedDense(keras.layers.Layer):
    """Not a Dense: `x @ kernel + bias`, taught to the table with register_weighted_layer."""

    def __init__(self, units, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.activation = units, keras.activations.get(activation)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros", name="bias")

    def call(self, x):
        return self.activation(x @ self.kernel + self.bias)

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "activation": keras.activations.serialize(self.activation)}


def test_subclass_of_a_weighted_layer_converts_is_penalised_and_selected_for_pruning():
    from keras_snn.layers.weighted import find_weighted_layer
    from keras_snn.layers.weighted import has_weighted_kernel

    assert find_weighted_layer(ScaledDense).keras_class is keras.layers.Dense
    # WeightPruning prunes exactly the layers has_weighted_kernel selects.
    assert has_weighted_kernel(ScaledDense(3)) and not has_weighted_kernel(
        keras.layers.SeparableConv2D(2, 3))
    model = mlp(ScaledDense(7, activation="relu", name="scaled"))
    snn = keras_snn.convert_model(model, VECTORS)
    assert isinstance(snn.network.get_layer("scaled"), layers.SpikingDense)
    penalised = keras_snn.add_sparsity_penalties(model, weight=0.1)
    assert type(penalised.get_layer("scaled").kernel_regularizer).__name__ == "WeightL1"


def test_registered_weighted_layer_converts_like_dense():
    model = mlp(GatedDense(7, activation="relu", name="gated"))
    with pytest.raises(keras_snn.ConversionError, match="'gated' \\(GatedDense\\)"):
        keras_snn.convert_model(model, VECTORS)
    layers.register_weighted_layer(GatedDense, layers.SpikingDense)
    snn = keras_snn.convert_model(model, VECTORS, normalization="max", initial_membrane=0.5)
    gated = snn.network.get_layer("gated")
    assert isinstance(gated, layers.SpikingDense) and gated.neuron is not None
    readout = snn(VECTORS[:32], timesteps=256).numpy()[:, -1]
    target = model.predict(VECTORS[:32], verbose=0)
    assert np.abs(readout - target).mean() < 0.02 * np.abs(target).max()


def test_register_weighted_layer_refuses_what_it_cannot_use():
    with pytest.raises(TypeError, match="keras.layers.Layer subclass"):
        layers.register_weighted_layer(int, layers.SpikingDense)
    with pytest.raises(TypeError, match="kernel_channel_axes"):
        layers.register_weighted_layer(GatedDense, layers.SpikingAdd)
