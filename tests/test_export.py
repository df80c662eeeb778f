"""SavedModel export: served in a fresh TensorFlow-only process with the same numbers."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_snn
from keras_snn import SpikingModel
from keras_snn import layers

LOADER = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np
    import tensorflow as tf
    served = tf.saved_model.load(sys.argv[1])
    data = np.load(sys.argv[2])
    report = {"signatures": sorted(served.signatures)}
    for name in data.files:
        out = served.signatures["serving_default"](inputs=tf.constant(data[name]))
        report[name] = {k: v.numpy().tolist() for k, v in out.items()}
    report["keras_snn_imported"] = "keras_snn" in sys.modules
    print(json.dumps(report))
""")


def serve_in_fresh_process(path, inputs, tmp_path):
    arrays = str(tmp_path / "inputs.npz")
    np.savez(arrays, **inputs)
    out = subprocess.run(
        [sys.executable, "-c", LOADER, path, arrays], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_converted_model_serves_identical_numbers(tmp_path):
    ann = keras.Sequential([
        keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.AveragePooling2D(2), keras.layers.Flatten(), keras.layers.Dense(3),
    ])
    x = np.random.default_rng(0).random((16, 6, 6, 1)).astype("float32")
    snn = keras_snn.convert_model(ann, x, timesteps=6)
    path = snn.export(str(tmp_path / "served"))
    report = serve_in_fresh_process(path, {"three": x[:3], "seven": x[3:10]}, tmp_path)
    assert {"serving_default", "serve"} <= set(report["signatures"])
    assert report["keras_snn_imported"] is False
    for name, batch in (("three", x[:3]), ("seven", x[3:10])):
        readout, ops = snn(batch, return_ops=True)
        np.testing.assert_allclose(report[name]["readout"], readout, atol=1e-6)
        np.testing.assert_array_equal(report[name]["synaptic_ops"], ops)


def test_event_input_model_serves_any_number_of_frames(tmp_path):
    inputs = keras.Input((4,))
    x = layers.EventInput()(inputs)
    x = layers.SpikingDense(3, neuron=None)(x)
    snn = SpikingModel(keras.Model(inputs, layers.Readout()(x)))
    frames = (np.random.default_rng(1).random((2, 5, 4)) < 0.5).astype("float32")
    path = snn.export(str(tmp_path / "events"))
    report = serve_in_fresh_process(path, {"five": frames, "two": frames[:, :2]}, tmp_path)
    np.testing.assert_allclose(report["five"]["readout"], snn(frames), atol=1e-6)
    np.testing.assert_allclose(report["two"]["readout"], snn(frames[:, :2]), atol=1e-6)


def test_stateful_and_foreign_formats_are_refused(tmp_path):
    inputs = keras.Input((4,))
    x = layers.SpikingDense(3, neuron=None)(layers.AnalogInput()(inputs))
    network = keras.Model(inputs, layers.Readout()(x))
    with pytest.raises(ValueError, match="stateful"):
        SpikingModel(network, stateful=True, batch_size=2).export(str(tmp_path / "s"))
    with pytest.raises(ValueError, match="tf_saved_model"):
        SpikingModel(network).export(str(tmp_path / "o"), format="onnx")
