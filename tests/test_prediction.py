"""SpikingModel.predict on arrays: the loop writes the readout in place into the result.

Writing each kept step's readout into the rows of one preallocated array
must give exactly what Keras's own predict loop returns (the same loop,
collected, stacked and concatenated), for every neuron and encoder, with
`readout_every`, a head, non-finite inputs and a smaller last batch.
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
def test_predict_in_place_equals_keras_predict(encoder, neuron):
    keras.utils.set_random_seed(1)
    snn = keras_snn.SpikingModel(_network(encoder(), neuron), timesteps=23)
    x = _data()
    in_place = snn.predict(x, batch_size=3, verbose=0)  # batches of 3 and a last one of 2
    # Keras's own predict loop (Poisson draws depend on the batch's shape,
    # so the batches must match).
    collected = keras.Model.predict(snn, x, batch_size=3, verbose=0)
    assert in_place.shape == (11, 23, 3) and in_place.flags.writeable
    np.testing.assert_allclose(in_place, collected, rtol=1e-5, atol=1e-6)


def test_predict_in_place_keeps_every_kth_readout():
    keras.utils.set_random_seed(2)
    snn = keras_snn.SpikingModel(
        _network(layers.AnalogInput(), "if"), timesteps=24, readout_every=4
    )
    x = _data(7)
    kept = snn.predict(x, batch_size=3, verbose=0)
    whole = snn.with_options(readout_every=1)(x).numpy()
    assert kept.shape == (7, 6, 3)
    np.testing.assert_allclose(kept, whole[:, 3::4], rtol=1e-5, atol=1e-6)
    final = snn.with_options(readout_every="final").predict(x, batch_size=3, verbose=0)
    assert final.shape == (7, 1, 3)
    np.testing.assert_allclose(final[:, 0], whole[:, -1], rtol=1e-5, atol=1e-6)


def test_predict_traces_one_loop_for_every_batch_and_call(monkeypatch):
    """Full batches, a smaller last batch and another sample count: one trace."""
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=5)
    traces = []
    loop = snn._loop

    def recording_loop(*args):
        traces.append(args[0].shape)
        return loop(*args)

    monkeypatch.setattr(snn, "_loop", recording_loop)
    snn.predict(_data(11), batch_size=3, verbose=0)
    snn.predict(_data(4), batch_size=3, verbose=0)
    assert len(prediction._BATCH_RUNNERS[snn]) == 1
    assert len(traces) == 1 and traces[0][0] is None  # traced once, batch left free
    assert loop.experimental_get_tracing_count() == 1


def test_predict_writes_no_stacked_readout(monkeypatch):
    """The loop collects no per-step readouts when it writes them in place."""
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=5)
    results = []
    run = snn._time_loop.run

    def recording_run(*args, **kwargs):
        results.append(run(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(snn._time_loop, "run", recording_run)
    snn._loop = tf.function(snn._time_loop.run)
    snn.predict(_data(4), batch_size=2, verbose=0)
    assert results and all("readout" not in result for result in results)


@pytest.mark.parametrize("parallel_steps, in_predict, elsewhere", [(None, 1, 10), (4, 4, 4)])
def test_auto_parallel_steps_runs_predict_one_step_at_a_time(
    monkeypatch, parallel_steps, in_predict, elsewhere
):
    """"auto" overlaps steps where operations are counted, not in predict; a fixed value holds."""
    snn = keras_snn.SpikingModel(
        _network(layers.AnalogInput(), "if"), timesteps=5, parallel_steps=parallel_steps
    )
    seen = []
    while_loop = tf.while_loop

    def recording_while_loop(*args, **kwargs):
        seen.append(kwargs["parallel_iterations"])
        return while_loop(*args, **kwargs)

    monkeypatch.setattr(tf, "while_loop", recording_while_loop)
    x = _data(4)
    snn.predict(x, batch_size=2, verbose=0)
    assert seen == [in_predict]
    keras_snn.simulate(snn, x, np.zeros(4, "int64"), batch_size=2, verbose=0)
    snn(x)
    assert seen[1:] == [elsewhere, elsewhere]


def test_predict_returns_the_written_buffer_not_a_copy(monkeypatch):
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=6)
    buffers = []
    zeroed_buffer = prediction._zeroed_buffer

    def recording_buffer(*args):
        buffers.append(zeroed_buffer(*args))
        return buffers[-1]

    monkeypatch.setattr(prediction, "_zeroed_buffer", recording_buffer)
    result = snn.predict(_data(5), batch_size=2, verbose=0)
    (buffer,) = buffers
    # A dense read shares the variable's memory once copy-on-read is off.
    assert buffer.read_value()._numpy().ctypes.data == result.ctypes.data
    result[0, 0, 0] = 7.0  # writable, as Keras's predict result is
    assert buffer.read_value()[0, 0, 0] == 7.0


def test_predict_with_head_and_nonfinite_samples():
    keras.utils.set_random_seed(3)
    head = keras.Sequential([keras.Input((3,)), keras.layers.Softmax()])
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=12, head=head)
    x = _data(5)
    x[3, 0, 0, 0] = np.nan
    in_place = snn.predict(x, batch_size=3, verbose=0)  # the NaN sample in the second batch
    whole = snn(x).numpy()
    assert np.isnan(in_place[3]).all() and np.isfinite(np.delete(in_place, 3, axis=0)).all()
    np.testing.assert_allclose(in_place, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(in_place[[0, 1, 2, 4]].sum(-1), 1.0, rtol=1e-5)


def test_callbacks_see_every_batch():
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=4)

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.events = []
            self.outputs = []

        def on_predict_begin(self, logs=None):
            self.events.append("begin")

        def on_predict_batch_end(self, batch, logs=None):
            self.events.append((batch, logs["outputs"].shape))
            self.outputs.append(logs["outputs"])

        def on_predict_end(self, logs=None):
            self.events.append("end")

    record = Record()
    result = snn.predict(_data(5), batch_size=2, verbose=0, callbacks=[record])
    assert record.events == [
        "begin", (0, (2, 4, 3)), (1, (2, 4, 3)), (2, (1, 4, 3)), "end"
    ]
    # Each batch's logged readout is its rows of the result, as written then.
    np.testing.assert_array_equal(np.concatenate(record.outputs), result)


def test_other_inputs_use_keras_predict():
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=6)
    x = _data(5)
    assert prediction.runs_in_place(snn, x, None)
    assert not prediction.runs_in_place(snn, x, steps=2)
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(2)
    assert not prediction.runs_in_place(snn, dataset, None)
    np.testing.assert_allclose(
        snn.predict(dataset, verbose=0), snn.predict(x, batch_size=2, verbose=0),
        rtol=1e-5, atol=1e-6,
    )
    stateful = snn.with_options(stateful=True, batch_size=5)
    assert not prediction.runs_in_place(stateful, x, None)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_bad_batch_size_is_refused(batch_size):
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=2)
    with pytest.raises(ValueError, match="batch_size"):
        snn.predict(_data(3), batch_size=batch_size, verbose=0)


def test_wrong_input_shape_is_refused_before_running():
    snn = keras_snn.SpikingModel(_network(layers.AnalogInput(), "if"), timesteps=2)
    with pytest.raises(ValueError, match=r"expects inputs of rank 4.*received shape \(3, 6, 6\)"):
        snn.predict(np.zeros((3, 6, 6), "float32"), verbose=0)
