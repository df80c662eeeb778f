"""A large batch runs as several loop calls in `predict` and `simulate`, with the same numbers.

Samples are independent at inference, so splitting a batch into slices must
not change what `predict` returns or what `simulate` counts; the number of
calls must follow `sub_batch_size` (or, by default, the neuron-state budget
of `keras_snn.sub_batching`), and a bad value must be refused by name.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_snn
from keras_snn import evaluation
from keras_snn import layers
from keras_snn import prediction
from keras_snn import sub_batching


def _conv_snn(x):
    keras.utils.set_random_seed(7)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.AveragePooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    ann = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(8, activation="relu")(h)))
    return keras_snn.convert_model(ann, x, timesteps=9)


def _data(samples=11, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((samples, 8, 8, 1)).astype("float32"), rng.integers(0, 3, samples)


@pytest.mark.parametrize("rows, limit", [(1000, 296), (7, 3), (5, 8), (1, 1), (12, 4), (13, 1)])
def test_call_slices_cover_the_batch_in_near_equal_calls_within_the_limit(rows, limit):
    slices = list(sub_batching.call_slices(rows, limit))
    sizes = [stop - start for start, stop in slices]
    assert slices[0][0] == 0 and slices[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))  # contiguous
    assert len(slices) == sub_batching.call_count(rows, limit) == -(-rows // limit)
    assert max(sizes) <= limit and max(sizes) - min(sizes) <= 1
    assert max(sizes) == sub_batching.call_rows(rows, limit)


def test_auto_rows_per_call_keeps_one_state_tensor_within_the_budget():
    x, _ = _data()
    snn = _conv_snn(x)
    neurons = sum(snn.neuron_counts().values())  # 4*8*8 + 4*4*4 + 8 (+ pooling)
    assert neurons > 0
    limit = sub_batching.rows_per_call(snn)
    assert limit == sub_batching.STATE_BYTES_PER_CALL // (neurons * 4)
    assert limit * neurons * 4 <= sub_batching.STATE_BYTES_PER_CALL
    assert (limit + 1) * neurons * 4 > sub_batching.STATE_BYTES_PER_CALL
    assert sub_batching.rows_per_call(snn.with_options(sub_batch_size=5)) == 5
    # float64 states take twice the bytes: half the samples
    wide = keras_snn.SpikingModel(snn.network, timesteps=9, dtype="float64")
    assert sub_batching.rows_per_call(wide) == sub_batching.STATE_BYTES_PER_CALL // (neurons * 8)


def _recording_predict_calls(monkeypatch):
    rows = []
    batch_runner = prediction._batch_runner

    def recording(model, every, inputs, buffer):
        run = batch_runner(model, every, inputs, buffer)
        rows.append(int(inputs.shape[0]))
        return run

    monkeypatch.setattr(prediction, "_batch_runner", recording)
    return rows


def _recording_simulate_calls(monkeypatch):
    rows = []
    compiled_step = evaluation._compiled_step

    def recording(*args):
        step = compiled_step(*args)

        def run(inputs, labels):
            rows.append(int(inputs.shape[0]))
            return step(inputs, labels)

        return run

    monkeypatch.setattr(evaluation, "_compiled_step", recording)
    return rows


def test_predict_in_sub_batches_returns_what_whole_batches_return(monkeypatch):
    x, _ = _data(11)
    snn = _conv_snn(x)
    whole = snn.predict(x, batch_size=5, verbose=0)  # batches 5, 5, 1: never split
    rows = _recording_predict_calls(monkeypatch)
    split = snn.with_options(sub_batch_size=2).predict(x, batch_size=5, verbose=0)
    assert rows == [2, 2, 1, 2, 2, 1, 1]  # each batch of 5 as 2 + 2 + 1, the last of 1 alone
    assert split.shape == whole.shape == (11, 9, 3)
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(split, snn(x).numpy(), rtol=1e-5, atol=1e-6)


def test_predict_callbacks_still_see_the_users_batches(monkeypatch):
    x, _ = _data(7)
    snn = _conv_snn(x).with_options(sub_batch_size=2)
    seen = []

    class Recorder(keras.callbacks.Callback):
        def on_predict_batch_end(self, batch, logs=None):
            seen.append((batch, logs["outputs"].shape[0]))

    snn.predict(x, batch_size=4, verbose=0, callbacks=[Recorder()])
    assert seen == [(0, 4), (1, 3)]


def test_simulate_in_sub_batches_counts_what_whole_batches_count(monkeypatch):
    x, y = _data(13, seed=1)
    snn = _conv_snn(x)
    whole = keras_snn.simulate(snn, x, y, batch_size=13, verbose=0)
    rows = _recording_simulate_calls(monkeypatch)
    split = keras_snn.simulate(snn.with_options(sub_batch_size=4), x, y, batch_size=13, verbose=0)
    assert rows == [4, 3, 3, 3]
    assert split.samples == whole.samples == 13
    np.testing.assert_allclose(split.accuracy, whole.accuracy, rtol=0, atol=1e-12)
    for name, ops in whole.layer_ops.items():
        np.testing.assert_allclose(split.layer_ops[name], ops, rtol=1e-9, err_msg=name)
    for name, rate in whole.spike_rates.items():
        assert split.spike_rates[name] == pytest.approx(rate, rel=1e-9), name
    assert whole.synaptic_ops.sum() > 0
    # A dataset's batches are split the same way.
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(13)
    rows.clear()
    from_dataset = keras_snn.simulate(snn.with_options(sub_batch_size=4), dataset, verbose=0)
    assert rows == [4, 3, 3, 3]
    np.testing.assert_allclose(from_dataset.accuracy, whole.accuracy, rtol=0, atol=1e-12)
    np.testing.assert_allclose(from_dataset.synaptic_ops, whole.synaptic_ops, rtol=1e-9)


def test_the_default_splits_by_the_budget(monkeypatch):
    x, y = _data(10, seed=2)
    snn = _conv_snn(x)
    neurons = sum(snn.neuron_counts().values())
    # A budget of three samples' states: batches of 10 run as 3 + 3 + 2 + 2.
    monkeypatch.setattr(sub_batching, "STATE_BYTES_PER_CALL", 3 * neurons * 4 + 1)
    predict_rows = _recording_predict_calls(monkeypatch)
    simulate_rows = _recording_simulate_calls(monkeypatch)
    snn.predict(x, batch_size=10, verbose=0)
    keras_snn.simulate(snn, x, y, batch_size=10, verbose=0)
    assert predict_rows == simulate_rows == [3, 3, 2, 2]


def test_a_small_network_is_not_split():
    inputs = keras.Input((4,))
    h = layers.SpikingDense(16)(layers.AnalogInput()(inputs))
    snn = keras_snn.SpikingModel(
        keras.Model(inputs, layers.Readout()(layers.SpikingDense(3, neuron=None)(h))),
        timesteps=4,
    )
    assert sub_batching.rows_per_call(snn) > 100_000


@pytest.mark.parametrize("value", [0, -3, 2.5, True, "auto"])
def test_bad_sub_batch_size_is_refused(value):
    x, _ = _data(2)
    with pytest.raises(ValueError, match="sub_batch_size"):
        _conv_snn(x).with_options(sub_batch_size=value)


def test_sub_batch_size_is_serialised():
    x, _ = _data(2)
    snn = _conv_snn(x).with_options(sub_batch_size=6)
    assert keras_snn.SpikingModel.from_config(snn.get_config()).sub_batch_size == 6
    assert _conv_snn(x).get_config()["sub_batch_size"] is None
