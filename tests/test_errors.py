"""Bad input gets a short, typed error (issue 18), and the user's model is never modified.

Every documented entry point fed what people get wrong: each test checks the exception
type and that the message names the problem in a few lines.
"""

import warnings

import keras
import numpy as np
import pytest

import keras_snn
from keras_snn import layers
from keras_snn import losses
from keras_snn import metrics
from keras_snn.spiking_model import SpikingModel

FEATURES, CLASSES, STEPS = 6, 3, 5


def short(error, lines=3):
    """The message of an exception, asserted to be a few lines."""
    text = str(error.value if hasattr(error, "value") else error)
    assert len(text.splitlines()) <= lines, text
    assert len(text) < 600, text
    return text


def data(samples=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((samples, FEATURES)).astype("float32")
    y = (x[:, 0] * CLASSES).astype("int64").clip(0, CLASSES - 1)
    return x, y


def dense_ann():
    keras.utils.set_random_seed(3)
    return keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(12, activation="relu", name="hidden"),
        keras.layers.Dense(CLASSES, name="logits"),
    ])


def dense_snn():
    x, _ = data()
    return keras_snn.convert_model(dense_ann(), x, timesteps=STEPS)


def event_snn():
    inputs = keras.Input((4,))
    hidden = layers.SpikingDense(5, name="hidden")(layers.EventInput()(inputs))
    outputs = layers.Readout()(layers.SpikingDense(2, neuron=None, name="out")(hidden))
    return SpikingModel(keras.Model(inputs, outputs), timesteps=4)


# ------------------------------------------------------------------ SpikingModel input
def test_wrong_frame_shape_is_one_value_error_naming_both_shapes():
    snn = dense_snn()
    with pytest.raises(ValueError) as error:
        snn(np.zeros((4, FEATURES + 1), "float32"))
    text = short(error, lines=1)
    assert f"(batch, {FEATURES})" in text and f"(4, {FEATURES + 1})" in text
    with pytest.raises(ValueError, match="rank 2") as error:
        snn(np.zeros((4, 2, FEATURES), "float32"))
    short(error, lines=1)
    with pytest.raises(ValueError, match=r"\(batch, T, 4\)") as error:
        event_snn()(np.zeros((2, 3, 5), "float32"))
    short(error, lines=1)
    with pytest.raises(ValueError, match="received shape"):  # run() checks too
        snn.run(np.zeros((4, FEATURES + 1), "float32"))


@pytest.mark.parametrize("dtype", ["uint8", "int32", "int64", "float64", "float16", "bool"])
def test_integer_bool_and_other_float_inputs_are_cast_like_keras(dtype):
    snn = dense_snn()
    x = (np.arange(2 * FEATURES).reshape(2, FEATURES) % 2).astype(dtype)
    expected = snn(x.astype("float32"))
    np.testing.assert_allclose(snn(x), expected, atol=1e-6)
    np.testing.assert_allclose(snn.run(x)["readout"], expected, atol=1e-6)


def test_non_numeric_input_is_a_type_error():
    snn = dense_snn()
    with pytest.raises(TypeError, match="numeric") as error:
        snn(np.full((2, FEATURES), "a"))
    short(error, lines=1)


def test_nan_input_propagates_to_that_samples_readout_like_the_ann():
    # Decision (issue 18): a non-finite input value makes that sample's readout NaN at
    # every step, as the ANN's logits are; other samples are untouched.
    ann = dense_ann()
    x, _ = data()
    snn = keras_snn.convert_model(ann, x, timesteps=STEPS)
    bad = x[:4].copy()
    bad[1, 2], bad[3, 0] = np.nan, np.inf
    out = np.asarray(snn(bad))
    assert np.all(np.isnan(out[[1, 3]]))
    np.testing.assert_array_equal(out[[0, 2]], np.asarray(snn(x[:4]))[[0, 2]])
    assert np.all(np.isnan(np.asarray(ann(bad))[1]))  # what the ANN does
    assert np.all(np.isnan(np.asarray(snn.run(bad)["readout"])[1]))


def test_nan_event_frame_makes_the_readout_nan_from_that_step_on():
    snn = event_snn()
    frames = np.ones((2, 4, 4), "float32")
    frames[0, 2, 1] = np.nan
    out = np.asarray(snn(frames))
    assert np.all(np.isfinite(out[0, :2])) and np.all(np.isnan(out[0, 2:]))
    assert np.all(np.isfinite(out[1]))
    assert np.all(np.isnan(np.asarray(snn(frames, timesteps=3))[0, 2:]))


# ------------------------------------------------------------------ convert_model data
def test_wrongly_shaped_calibration_data_names_both_shapes():
    with pytest.raises(keras_snn.ConversionError) as error:
        keras_snn.convert_model(dense_ann(), np.zeros((10, FEATURES + 1), "float32"))
    text = short(error, lines=1)
    assert f"(batch, {FEATURES})" in text and f"(10, {FEATURES + 1})" in text


def test_x_y_tuple_calibration_data_is_read_as_documented():
    x, y = data()
    ann = dense_ann()
    from_x = keras_snn.convert_model(ann, x, timesteps=STEPS)
    from_xy = keras_snn.convert_model(ann, (x, y), timesteps=STEPS)
    from_xyw = keras_snn.convert_model(ann, (x, y, np.ones(len(x))), timesteps=STEPS)
    for snn in (from_xy, from_xyw):
        for a, b in zip(from_x.get_weights(), snn.get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_calibration_data_is_refused_with_a_count(bad_value):
    x, _ = data()
    x[3, 1] = x[40, 0] = bad_value
    with pytest.raises(keras_snn.ConversionError, match="2 non-finite values") as error:
        keras_snn.convert_model(dense_ann(), x)
    short(error, lines=1)


def test_non_finite_values_in_a_later_dataset_batch_are_counted_too():
    import tensorflow as tf

    x, y = data(samples=600)
    x[500:, 0] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    with pytest.raises(keras_snn.ConversionError, match="100 non-finite"):
        keras_snn.convert_model(dense_ann(), dataset)


def test_all_zero_calibration_data_warns_naming_the_unmeasured_layers():
    ann = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(8, activation="relu", use_bias=False, name="no_bias"),
        keras.layers.Dense(CLASSES, name="logits"),
    ])
    with pytest.warns(UserWarning, match="all zeros") as record:
        keras_snn.convert_model(ann, np.zeros((16, FEATURES), "float32"))
    text = next(str(w.message) for w in record if "all zeros" in str(w.message))
    assert "'no_bias'" in text and "'logits'" not in text
    with pytest.warns(UserWarning, match="input encoder"):
        keras_snn.convert_model(
            ann, np.zeros((16, FEATURES), "float32"), input_encoding="spiking"
        )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        keras_snn.convert_model(ann, data()[0])  # representative data: no warning
    assert not [w for w in record if "calibration" in str(w.message)]


def test_bad_calibration_containers_are_conversion_errors():
    ann = dense_ann()
    for bad, match in [
        (np.zeros((0, FEATURES), "float32"), "empty"),
        (np.full((4, FEATURES), "x"), "numeric"),
        ([], "no batches"),
        (5, "iterable"),
        (np.zeros((FEATURES,), "float32"), "shape"),  # one sample, unbatched
    ]:
        with pytest.raises(keras_snn.ConversionError, match=match) as error:
            keras_snn.convert_model(ann, bad)
        short(error, lines=1)


# ------------------------------------------------------------------ simulate
def test_simulate_argument_checks():
    snn = dense_snn()
    x, y = data()
    for batch_size in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size") as error:
            keras_snn.simulate(snn, x, y, batch_size=batch_size, verbose=0)
        short(error, lines=1)
    with pytest.raises(ValueError, match="verbose"):
        keras_snn.simulate(snn, x, y, verbose="loud")
    with pytest.raises(TypeError, match="SpikingModel"):
        keras_snn.simulate(dense_ann(), x, y, verbose=0)
    with pytest.raises(ValueError, match=r"\(batch, 6\)") as error:
        keras_snn.simulate(snn, x[:, :4], y, verbose=0)
    short(error, lines=1)
    x_bad = x.copy()
    x_bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="1 non-finite") as error:
        keras_snn.simulate(snn, x_bad, y, verbose=0)
    short(error, lines=1)


@pytest.mark.parametrize(
    "labels, match",
    [
        (lambda y: y.astype(str), "numeric"),
        (lambda y: y + CLASSES, rf"\[0, {CLASSES}\)"),
        (lambda y: y - 1, rf"\[0, {CLASSES}\)"),
        (lambda y: y + 0.5, "whole numbers"),
        (lambda y: np.eye(CLASSES + 1)[y], f"{CLASSES + 1} columns"),
        (lambda y: y[:-1], "labels"),
        (lambda y: y.reshape(-1, 1, 1), "shape"),
    ],
)
def test_simulate_refuses_bad_labels(labels, match):
    snn = dense_snn()
    x, y = data()
    with pytest.raises(ValueError, match=match) as error:
        keras_snn.simulate(snn, x, labels(y), verbose=0)
    short(error, lines=2)


def test_simulate_accepts_integer_one_hot_and_column_labels_alike():
    snn = dense_snn()
    x, y = data()
    results = [
        keras_snn.simulate(snn, x, labels, verbose=0).accuracy
        for labels in (y, y.reshape(-1, 1), np.eye(CLASSES)[y], y.astype("float32"))
    ]
    for accuracy in results[1:]:
        np.testing.assert_array_equal(accuracy, results[0])


def test_string_labels_in_a_dataset_are_refused():
    import tensorflow as tf

    snn = dense_snn()
    x, y = data()
    dataset = tf.data.Dataset.from_tensor_slices((x, y.astype(str))).batch(8)
    with pytest.raises(ValueError, match="labels must be numeric"):
        keras_snn.simulate(snn, dataset, verbose=0)


def test_energy_beyond_the_simulated_steps_names_them():
    result = keras_snn.simulate(dense_snn(), *data(), verbose=0)
    for steps in (100, 0, -1, 2.0):
        with pytest.raises(ValueError, match=f"{STEPS} steps simulated") as error:
            result.energy(timesteps=steps)
        short(error, lines=1)
    assert result.energy(timesteps=STEPS) == result.energy()


# ------------------------------------------------------------------ compile, losses, metrics
@pytest.mark.parametrize(
    "loss",
    [
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        "sparse_categorical_crossentropy",
        keras.losses.categorical_crossentropy,
    ],
)
def test_keras_losses_are_refused_pointing_to_readout_crossentropy(loss):
    snn = dense_snn()
    with pytest.raises(ValueError, match="ReadoutCrossentropy") as error:
        snn.compile("adam", loss)
    assert "(batch, T, classes)" in short(error, lines=1)


@pytest.mark.parametrize("metric", ["accuracy", keras.metrics.SparseCategoricalAccuracy()])
def test_keras_metrics_are_refused_pointing_to_step_accuracy(metric):
    snn = dense_snn()
    with pytest.raises(ValueError, match="StepAccuracy") as error:
        snn.compile("adam", losses.ReadoutCrossentropy(), metrics=[metric])
    short(error, lines=1)
    with pytest.raises(ValueError, match="StepAccuracy"):
        snn.compile("adam", losses.ReadoutCrossentropy(), weighted_metrics={"x": metric})


def test_custom_losses_on_the_readout_are_accepted():
    snn = dense_snn()
    x, y = data()

    def final_step_crossentropy(y_true, y_pred):  # a user's own readout loss
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred[:, -1], True)

    snn.compile("sgd", final_step_crossentropy)
    expected = snn.evaluate(x, y, verbose=0)
    snn.compile("sgd", losses.ReadoutCrossentropy())
    assert snn.evaluate(x, y, verbose=0) == pytest.approx(expected, rel=1e-5)


def ops_compiled(snn, learning_rate=0.0, **kwargs):
    snn.compile(
        keras.optimizers.SGD(learning_rate), losses.ReadoutCrossentropy(),
        **({"metrics": [metrics.StepAccuracy(), metrics.SynapticOps()]} | kwargs),
    )
    return snn


def test_synaptic_ops_logged_during_fit_are_the_real_counts():
    x, y = data()
    snn = ops_compiled(dense_snn())  # learning rate 0: fit and evaluate see one network
    history = snn.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    expected = keras_snn.simulate(snn, x, verbose=0).cumulative_ops[-1]
    assert expected > 0
    assert history["synaptic_ops"][0] == pytest.approx(expected, rel=1e-5)
    scores = snn.evaluate(x, y, verbose=0, return_dict=True)
    assert scores["synaptic_ops"] == pytest.approx(expected, rel=1e-5)


def test_recompiling_without_synaptic_ops_removes_it():
    x, y = data()
    snn = ops_compiled(dense_snn())
    snn.fit(x, y, verbose=0)
    snn.compile("sgd", losses.ReadoutCrossentropy())
    assert "synaptic_ops" not in snn.fit(x, y, verbose=0).history
    assert "synaptic_ops" not in snn.evaluate(x, y, verbose=0, return_dict=True)
    snn.compile("sgd", losses.ReadoutCrossentropy(), metrics=[metrics.StepAccuracy()])
    assert set(snn.evaluate(x, y, verbose=0, return_dict=True)) == {"loss", "final_accuracy"}


def test_synaptic_ops_in_a_metrics_dict_are_counted():
    x, y = data()
    snn = dense_snn()
    expected = keras_snn.simulate(snn, x, verbose=0).cumulative_ops[-1]
    # One output: Keras applies every metric of a dict (or nested list) to it.
    snn.compile("sgd", losses.ReadoutCrossentropy(),
                metrics={"readout": [metrics.SynapticOps()]})
    assert snn.evaluate(x, y, verbose=0, return_dict=True)["synaptic_ops"] == pytest.approx(
        expected, rel=1e-5
    )
    snn.compile("sgd", losses.ReadoutCrossentropy(),
                weighted_metrics=[metrics.SynapticOps(step=1)])
    scores = snn.evaluate(x, y, verbose=0, return_dict=True)
    assert scores["synaptic_ops_at_1"] == pytest.approx(
        keras_snn.simulate(snn, x, verbose=0).synaptic_ops[0], rel=1e-5
    )


def test_save_and_load_restore_the_compile_state(tmp_path):
    x, y = data()
    snn = ops_compiled(dense_snn(), learning_rate=0.01)
    snn.fit(x, y, verbose=0)
    before = snn.evaluate(x, y, verbose=0, return_dict=True)
    path = str(tmp_path / "snn.keras")
    snn.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "compile() was not called" warning
        restored = keras.saving.load_model(path)
    assert restored.compiled
    assert restored.get_compile_config() == snn.get_compile_config()
    after = restored.evaluate(x, y, verbose=0, return_dict=True)
    assert set(after) == {"loss", "final_accuracy", "synaptic_ops"}
    for key, value in before.items():
        assert after[key] == pytest.approx(value, rel=1e-5), key
    restored.fit(x, y, verbose=0)  # the optimizer (and its state) came back too
    assert restored.optimizer.iterations.numpy() == 2 * snn.optimizer.iterations.numpy()


# ------------------------------------------------------------------ the user's model
def snapshot(model, x):
    return (
        model.name, model.trainable, [layer.name for layer in model.layers],
        model.to_json(), [w.copy() for w in model.get_weights()], np.asarray(model(x)),
    )


def assert_same(before, after):
    assert before[:4] == after[:4]
    for a, b in zip(before[4], after[4]):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(before[5], after[5])


def bn_ann():
    keras.utils.set_random_seed(4)
    inner = keras.Sequential([
        keras.Input((FEATURES,)), keras.layers.Dense(10, name="inner_dense"),
        keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(name="relu"),
    ], name="block")
    inputs = keras.Input((FEATURES,))
    outputs = keras.layers.Dense(CLASSES, name="logits")(keras.layers.Dropout(0.2)(inner(inputs)))
    model = keras.Model(inputs, outputs, name="user_model")
    bn = inner.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-0.5, 0.5, 10).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 10).astype("float32"))
    return model


@pytest.mark.parametrize(
    "convert",
    [
        lambda ann, x: keras_snn.convert_model(ann, x, timesteps=3),
        lambda ann, x: keras_snn.convert_model(ann, x, input_encoding="spiking", per_channel=True),
        lambda ann, x: keras_snn.convert_model(ann, np.where(x > 0.5, np.nan, x)),  # after build
        lambda ann, x: keras_snn.convert_model(ann, x[:, :2]),  # bad data, after build
        lambda ann, x: keras_snn.convert_model(ann, (x, x[:3, 0])),  # read as batches: shape error
        lambda ann, x: keras_snn.convert_model(ann, x, head="no_such_layer"),
        lambda ann, x: keras_snn.convert_model(ann, x, percentile=0),
    ],
)
def test_the_users_model_is_never_modified(convert):
    ann = bn_ann()
    x, _ = data()
    before = snapshot(ann, x[:8])
    try:
        convert(ann, x)
    except ValueError:
        pass
    assert_same(before, snapshot(ann, x[:8]))


def test_a_failure_late_in_the_graph_leaves_the_model_untouched():
    inputs = keras.Input((FEATURES,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(8, activation="relu")(inputs))
    outputs = keras.layers.Dense(CLASSES, activation="tanh", name="squash")(hidden)
    ann = keras.Model(inputs, outputs)
    x, _ = data()
    before = snapshot(ann, x[:8])
    with pytest.raises(keras_snn.ConversionError, match="squash") as error:
        keras_snn.convert_model(ann, x)
    short(error, lines=2)
    assert_same(before, snapshot(ann, x[:8]))
