"""SpikingModel.predict on arrays: chunks of steps, the readout written into one array.

A run split into chunks that carry the neuron states must equal one long
run: same membranes, same Poisson draws (keyed by the absolute step), same
readout (the running mean over all steps so far, not over the chunk).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_snn
from keras_snn import layers
from keras_snn import prediction


def _network(encoder, neuron, classes=3):
    inputs = keras.Input((6, 6, 1))
    x = encoder(inputs)
    x = layers.SpikingConv2D(4, 3, neuron=neuron)(x)
    x = keras.layers.Flatten()(x)
    x = layers.SpikingDense(8, neuron=neuron)(x)
    x = layers.SpikingDense(classes, neuron=None)(x)
    return keras.Model(inputs, layers.Readout()(x))


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few steps, so that every test run crosses chunk boundaries."""
    monkeypatch.setattr(prediction, "_CHUNK_BYTES", 3 * 4 * 3 * 5)  # 3 samples, 5 steps


def _data(samples=11, seed=0):
    return np.random.default_rng(seed).random((samples, 6, 6, 1)).astype("float32")


@pytest.mark.parametrize(
    "encoder, neuron",
    [
        (lambda: layers.AnalogInput(), "if"),
        (lambda: layers.PoissonInput(seed=3), "lif"),
        (lambda: layers.AnalogInput(), "buffered"),
    ],
    ids=["analog-if", "poisson-lif", "analog-buffered"],
)
def test_chunked_predict_equals_one_long_run(small_chunks, encoder, neuron):
    keras.utils.set_random_seed(1)
    snn = keras_snn.SpikingModel(_network(encoder(), neuron), timesteps=23)
    x = _data()
    assert prediction.chunk_steps(23, 1, 3, 4 * 3) == 5  # 5 chunks: 5, 5, 5, 5, 3
    chunked = snn.predict(x, batch_size=3, verbose=0)
    # Keras's own predict loop: every batch of 3 in one call of all 23 steps
    # (Poisson draws depend on the batch's shape, so the batches must match).
    whole = keras.Model.predict(snn, x, batch_size=3, verbose=0)
    assert chunked.shape == (11, 23, 3)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)


def test_chunks_keep_whole_readout_periods(small_chunks):
    keras.utils.set_random_seed(2)
    snn = keras_snn.SpikingModel(
        _network(layers.AnalogInput(), "if"), timesteps=24, readout_every=4
    )
    x = _data(7)
    steps = prediction.chunk_steps(24, 4, 3, 4 * 3)
    assert steps % 4 == 0 and steps < 24
    chunked = snn.predict(x, batch_size=3, verbose=0)
    whole = snn(x).numpy()
    assert chunked.shape == whole.shape == (7, 6, 3)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    final = snn.with_options(readout_every="final").predict(x, batch_size=3, verbose=0)
    np.testing.assert_allclose(final[:, 0], whole[:, -1], rtol=1e-5, atol=1e-6)


def test_predict_runs_chunks_of_one_trace_never_the_whole_length(small_chunks, monkeypatch):
    """Chunks of 5 steps and a last one of 3, through one trace of the loop."""
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=23)
    lengths = []
    loop = snn._loop

    def recording_loop(inputs, timesteps, *args):
        lengths.append(timesteps)
        return loop(inputs, timesteps, *args)

    monkeypatch.setattr(snn, "_loop", recording_loop)
    snn.predict(_data(), batch_size=3, verbose=0)  # batches of 3 and a last one of 2
    assert len(prediction._CHUNK_RUNNERS[snn]) == 1
    assert len(lengths) == 1 and tf.is_tensor(lengths[0])  # traced once, steps a tensor
    assert loop.experimental_get_tracing_count() == 1


def test_predict_with_head_and_nonfinite_samples(small_chunks):
    keras.utils.set_random_seed(3)
    head = keras.Sequential([keras.Input((3,)), keras.layers.Softmax()])
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=12, head=head)
    x = _data(5)
    x[2, 0, 0, 0] = np.nan
    chunked = snn.predict(x, batch_size=3, verbose=0)
    whole = snn(x).numpy()
    assert np.isnan(chunked[2]).all() and np.isfinite(np.delete(chunked, 2, axis=0)).all()
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked[[0, 1, 3, 4]].sum(-1), 1.0, rtol=1e-5)


def test_callbacks_see_every_batch():
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=4)

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.events = []

        def on_predict_begin(self, logs=None):
            self.events.append("begin")

        def on_predict_batch_end(self, batch, logs=None):
            self.events.append((batch, logs["outputs"].shape))

        def on_predict_end(self, logs=None):
            self.events.append("end")

    record = Record()
    snn.predict(_data(5), batch_size=2, verbose=0, callbacks=[record])
    assert record.events == [
        "begin", (0, (2, 4, 3)), (1, (2, 4, 3)), (2, (1, 4, 3)), "end"
    ]


def test_other_inputs_use_keras_predict():
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=6)
    x = _data(5)
    assert prediction.runs_in_chunks(snn, x, None)
    assert not prediction.runs_in_chunks(snn, x, steps=2)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(2)
    assert not prediction.runs_in_chunks(snn, dataset, None)
    np.testing.assert_allclose(
        snn.predict(dataset, verbose=0), snn.predict(x, batch_size=2, verbose=0),
        rtol=1e-5, atol=1e-6,
    )
    stateful = snn.with_options(stateful=True, batch_size=5)
    assert not prediction.runs_in_chunks(stateful, x, None)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size_is_refused(batch_size):
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=2)
    with pytest.raises(ValueError, match="batch_size"):
        snn.predict(_data(3), batch_size=batch_size, verbose=0)


def test_wrong_input_shape_is_refused_before_running():
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=2)
    with pytest.raises(ValueError, match=r"expects inputs of rank 4.*received shape \(3, 6, 6\)"):
        snn.predict(np.zeros((3, 6, 6), "float32"), verbose=0)
