"""Neurons and surrogates save and load through Keras serialization, custom ones included."""

import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_snn import SpikingModel
from keras_snn import layers
from keras_snn import neurons

X = np.random.default_rng(0).random((4, 5)).astype("float32")


@keras.saving.register_keras_serializable(package="test_serialization")
class Box(neurons.Surrogate):
    """A rectangular surrogate: derivative 1 within `width` of the threshold."""

    def __init__(self, width=0.5):
        self.width = float(width)

    def derivative(self, u):
        return tf.cast(tf.abs(u - 1.0) < self.width, u.dtype)

    def get_config(self):
        return {"width": self.width}


@keras.saving.register_keras_serializable(package="test_serialization")
class GainIF(neurons.IF):
    """IF driven by `gain` times the current: dynamics the built-in neurons lack."""

    def __init__(self, gain=1.0, **kwargs):
        super().__init__(**kwargs)
        self.gain = float(gain)

    def step(self, current, state, threshold, **parameters):
        return super().step(self.gain * current, state, threshold, **parameters)

    def get_config(self):
        return {"gain": self.gain, **super().get_config()}


@neurons.register_neuron(name="half_lif")
class HalfLIF(neurons.LIF):
    """A LIF neuron registered only through keras_snn's own decorator."""

    def step(self, current, state, threshold, **parameters):
        return super().step(0.5 * current, state, threshold, **parameters)


def network(hidden_neuron, out_neuron=None):
    inputs = keras.Input((5,))
    x = layers.AnalogInput()(inputs)
    x = layers.SpikingDense(8, neuron=hidden_neuron, name="hidden")(x)
    x = layers.SpikingDense(3, neuron=out_neuron, name="out")(x)
    snn = SpikingModel(keras.Model(inputs, layers.Readout()(x)), timesteps=5)
    rng = np.random.default_rng(1)
    for layer in snn.network.layers:
        if layer.name in ("hidden", "out"):
            kernel, bias = layer.kernel.shape, layer.bias.shape
            layer.kernel.assign(rng.normal(size=kernel).astype("float32"))
            layer.bias.assign(rng.uniform(0.0, 0.3, size=bias).astype("float32"))
    return snn


def gradients(snn):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(snn(X) ** 2)
    return tape.gradient(loss, snn.trainable_variables)


def save_and_load(snn, tmp_path, **kwargs):
    path = str(tmp_path / "snn.keras")
    snn.save(path)
    return keras.saving.load_model(path, **kwargs), path


@pytest.mark.parametrize(
    "neuron",
    [
        neurons.IF(surrogate=Box(0.3)),
        GainIF(gain=0.6, spike_max=2, surrogate=Box(0.7)),
        HalfLIF(leak=0.8, surrogate=neurons.FastSigmoid(4.0)),
    ],
    ids=["custom_surrogate", "custom_neuron", "register_neuron"],
)
def test_custom_neuron_and_surrogate_round_trip_through_model_save(neuron, tmp_path):
    snn = network(neuron)
    restored, _ = save_and_load(snn, tmp_path)
    loaded = restored.network.get_layer("hidden").neuron
    assert loaded == neuron and type(loaded) is type(neuron)
    np.testing.assert_array_equal(restored(X), snn(X))
    # The surrogate (with its width) came back: training sees the same gradients.
    for expected, got in zip(gradients(snn), gradients(restored)):
        np.testing.assert_array_equal(got, expected)
    assert any(np.any(np.asarray(g) != 0) for g in gradients(snn)[:2])  # through the spikes


def test_custom_neuron_dynamics_survive_loading(tmp_path):
    # Loading GainIF as a plain IF would change the output; make sure the test could see that.
    custom = network(GainIF(gain=0.4))
    plain = network(neurons.IF())
    assert not np.array_equal(custom(X), plain(X))
    restored, _ = save_and_load(custom, tmp_path)
    np.testing.assert_array_equal(restored(X), custom(X))


def test_unregistered_surrogate_names_the_class_and_loads_with_custom_objects(tmp_path):
    class Triangle(neurons.Surrogate):
        def derivative(self, u):
            return tf.maximum(0.0, 1.0 - tf.abs(u - 1.0))

    snn = network(neurons.IF(surrogate=Triangle()))
    path = str(tmp_path / "snn.keras")
    snn.save(path)
    message = "Unknown surrogate class 'Triangle'.*register_keras_serializable"
    with pytest.raises(Exception, match=message):
        keras.saving.load_model(path)
    restored = keras.saving.load_model(path, custom_objects={"Triangle": Triangle})
    assert isinstance(restored.network.get_layer("hidden").neuron.surrogate, Triangle)
    np.testing.assert_array_equal(restored(X), snn(X))


def _to_legacy_format(config):
    """Rewrite neuron and surrogate dicts into the {"class_name", "config"} form of older files."""
    if isinstance(config, list):
        return [_to_legacy_format(item) for item in config]
    if not isinstance(config, dict):
        return config
    config = {key: _to_legacy_format(value) for key, value in config.items()}
    for key in ("neuron", "surrogate"):
        value = config.get(key)
        if isinstance(value, dict) and "registered_name" in value:
            config[key] = {"class_name": value["class_name"], "config": value["config"]}
    return config


def test_files_saved_in_the_old_format_still_load(tmp_path):
    snn = network(neurons.LIF(leak=0.7, surrogate=neurons.FastSigmoid(3.0)), neurons.BufferedIF())
    _, path = save_and_load(snn, tmp_path)
    legacy = str(tmp_path / "legacy.keras")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(legacy, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                text = json.dumps(_to_legacy_format(json.loads(data)))
                assert "registered_name\": \"keras_snn>LIF" not in text
                assert "{\"class_name\": \"FastSigmoid\", \"config\": {\"slope\": 3.0}}" in text
                data = text.encode()
            target.writestr(item, data)
    restored = keras.saving.load_model(legacy)
    assert restored.network.get_layer("hidden").neuron == snn.network.get_layer("hidden").neuron
    np.testing.assert_array_equal(restored(X), snn(X))


@pytest.mark.parametrize(
    "neuron", [neurons.IF(2, 0.5, "zero", surrogate=None), neurons.LIF(0.9), neurons.SignedIF()]
)
def test_legacy_dicts_deserialize(neuron):
    legacy = {"class_name": type(neuron).__name__, "config": neuron.get_config()}
    surrogate = legacy["config"]["surrogate"]
    if surrogate is not None:
        legacy["config"]["surrogate"] = {
            "class_name": surrogate["class_name"], "config": surrogate["config"]
        }
    assert neurons.deserialize(legacy) == neuron
    assert neurons.get(legacy) == neuron


def test_serialized_form_is_keras():
    config = neurons.serialize(neurons.IF(surrogate=neurons.FastSigmoid(2.0)))
    assert config["registered_name"] == "keras_snn>IF"
    assert config["config"]["surrogate"]["registered_name"] == "keras_snn>FastSigmoid"
    assert keras.saving.deserialize_keras_object(config) == neurons.IF(
        surrogate=neurons.FastSigmoid(2.0)
    )


def test_names_resolve_registered_neurons():
    assert isinstance(neurons.get("half_lif"), HalfLIF)
    assert isinstance(neurons.get("HALF_LIF"), HalfLIF)
    assert isinstance(neurons.get("HalfLIF"), HalfLIF)
    assert isinstance(neurons.get("test_serialization>GainIF"), GainIF)
    assert isinstance(neurons.get("keras_snn>BufferedIF"), neurons.BufferedIF)
    assert keras.saving.get_registered_name(HalfLIF) == "Custom>HalfLIF"
    with pytest.raises(ValueError, match="'nope'.*register_neuron"):
        neurons.get("nope")
    with pytest.raises(TypeError, match="Neuron subclass"):
        neurons.register_neuron(Box)
    not_a_neuron = "'test_serialization>Box' names .*not a keras_snn.neurons.Neuron"
    with pytest.raises(ValueError, match=not_a_neuron):
        neurons.deserialize(keras.saving.serialize_keras_object(Box()))
