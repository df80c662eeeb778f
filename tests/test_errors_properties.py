"""Property: whatever array a user passes, keras_snn answers right or fails with a short error.

Hypothesis draws shapes (wrong rank, empty, wrong size), dtypes (ints, floats, bool,
complex, strings) and values (NaN, infinities, zeros, huge) for convert_model's calibration
data, for a SpikingModel call and for simulate. Every failure must be a ConversionError,
ValueError or TypeError with a short message -- never a tf.errors.OpError or an internal
IndexError/KeyError -- and every success must be a right answer for valid input, never a
silently wrong one.
"""

import functools
import warnings

import keras
import numpy as np
import tensorflow as tf
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_snn

FEATURES, CLASSES, STEPS = 4, 3, 3
DTYPES = ["float32", "float64", "float16", "int32", "uint8", "bool", "complex64", "<U2"]
FILLS = ["random", "zeros", "nan", "inf", "-inf", "huge"]
EXPECTED_ERRORS = (ValueError, TypeError)  # ConversionError is a ValueError

SETTINGS = settings(
    max_examples=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@functools.lru_cache(maxsize=None)
def ann():
    keras.utils.set_random_seed(7)
    return keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(6, activation="relu"),
        keras.layers.Dense(CLASSES),
    ])


@functools.lru_cache(maxsize=None)
def snn():
    x = np.random.default_rng(0).random((32, FEATURES)).astype("float32")
    return keras_snn.convert_model(ann(), x, timesteps=STEPS)


@st.composite
def arrays(draw):
    """(array, valid shape?, finite?) with a random shape, dtype and fill."""
    rank = draw(st.sampled_from([0, 1, 2, 2, 2, 3]))
    shape = [draw(st.integers(0, 5)) for _ in range(rank)]
    if rank == 2 and draw(st.integers(0, 3)):
        shape[1] = FEATURES  # mostly the right frame, so the values get exercised
    dtype = draw(st.sampled_from(DTYPES))
    fill = draw(st.sampled_from(FILLS))
    values = np.random.default_rng(draw(st.integers(0, 2**16))).random(shape) * 3
    if fill == "zeros":
        values = np.zeros(shape)
    elif fill == "huge":
        values = values * 1e30
    elif fill in ("nan", "inf", "-inf") and values.size:
        values.flat[draw(st.integers(0, values.size - 1))] = float(fill)
    with np.errstate(all="ignore"):
        array = values.astype(dtype)
    valid_shape = rank == 2 and shape[0] > 0 and shape[1] == FEATURES
    numeric = np.dtype(dtype).kind in "biuf"
    finite = numeric and bool(np.all(np.isfinite(array.astype("float64"))))
    return array, valid_shape, numeric, finite


def assert_short_expected_error(error):
    assert isinstance(error, EXPECTED_ERRORS), f"{type(error).__name__}: {error}"
    assert not isinstance(error, (tf.errors.OpError, IndexError, KeyError)), repr(error)
    text = str(error)
    assert 0 < len(text) < 600 and len(text.splitlines()) <= 3, text


@SETTINGS
@given(arrays())
def test_convert_model_with_any_calibration_array(case):
    array, valid_shape, numeric, finite = case
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # all-zero data warns (tested elsewhere)
            model = keras_snn.convert_model(ann(), array, timesteps=STEPS)
    except Exception as error:  # noqa: BLE001 -- the property is about every exception
        assert_short_expected_error(error)
        # complex numbers may still be refused as non-numeric even with a fine shape
        assert not (valid_shape and numeric and finite), f"valid data refused: {error}"
        return
    assert valid_shape and numeric and finite, "bad calibration data accepted silently"
    assert isinstance(model, keras_snn.SpikingModel)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


@SETTINGS
@given(arrays())
def test_spiking_model_call_with_any_array(case):
    array, _, numeric, _ = case
    valid_shape = array.ndim == 2 and array.shape[1] == FEATURES  # an empty batch too, as Keras
    try:
        out = np.asarray(snn()(array))
    except Exception as error:  # noqa: BLE001
        assert_short_expected_error(error)
        assert not (valid_shape and numeric), f"valid input refused: {error}"
        return
    assert valid_shape and numeric, "bad input accepted silently"
    assert out.shape == (array.shape[0], STEPS, CLASSES)
    rows_finite = np.all(np.isfinite(array.astype("float64")), axis=1)
    # A sample with a non-finite value reads out NaN (as the ANN's logits); others are finite.
    assert np.all(np.isnan(out[~rows_finite]))
    assert np.all(np.isfinite(out[rows_finite]))
    if array.dtype != np.float32 and rows_finite.all():
        np.testing.assert_allclose(out, snn()(array.astype("float32")), atol=1e-5)


@SETTINGS
@given(arrays(), st.sampled_from(["good", "none", "range", "count", "float"]))
def test_simulate_with_any_array_and_labels(case, label_kind):
    array, valid_shape, numeric, finite = case
    samples = array.shape[0] if array.ndim else 0
    labels = {
        "good": np.arange(samples) % CLASSES,
        "none": None,
        "range": np.arange(samples) % CLASSES + CLASSES,
        "count": np.arange(samples + 1) % CLASSES,
        "float": np.arange(samples) % CLASSES + 0.25,
    }[label_kind]
    labels_ok = label_kind in ("good", "none") or (label_kind in ("range", "float") and not samples)
    try:
        result = keras_snn.simulate(snn(), array, labels, batch_size=4, verbose=0)
    except Exception as error:  # noqa: BLE001
        assert_short_expected_error(error)
        assert not (valid_shape and numeric and finite and labels_ok), f"refused: {error}"
        return
    assert valid_shape and numeric and finite and labels_ok, "bad input accepted silently"
    assert result.samples == array.shape[0]
    assert np.all(np.isfinite(result.synaptic_ops))
    if labels is not None:
        assert np.all((result.accuracy >= 0) & (result.accuracy <= 1))


def test_the_strategy_reaches_both_outcomes():
    """Guard against a vacuous property: valid and invalid draws both occur."""
    seen = set()

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(arrays())
    def collect(case):
        seen.add((case[1], case[2], case[3]))

    collect()
    assert (True, True, True) in seen and (False, True, True) in seen
    assert any(not numeric for _, numeric, _ in seen) and (True, True, False) in seen



ARGUMENT_VALUES = st.one_of(
    st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([None, True, "8", "all", [4]]),
)


@SETTINGS
@given(ARGUMENT_VALUES)
def test_call_and_simulate_timesteps_of_any_value(timesteps):
    x = np.ones((2, FEATURES), "float32")
    valid = isinstance(timesteps, int) and not isinstance(timesteps, bool) and 1 <= timesteps <= 40
    for run in (
        lambda: snn()(x, timesteps=timesteps),
        lambda: keras_snn.simulate(snn(), x, timesteps=timesteps, verbose=0).accuracy,
    ):
        try:
            run()
        except Exception as error:  # noqa: BLE001
            assert_short_expected_error(error)
            assert not valid, f"valid timesteps refused: {error}"
            continue
        assert valid or timesteps is None, f"timesteps={timesteps!r} accepted"


@settings(SETTINGS, max_examples=15)
@given(
    st.sampled_from(["timesteps", "spike_max", "percentile", "initial_membrane"]),
    ARGUMENT_VALUES,
)
def test_convert_model_arguments_of_any_value(argument, value):
    x = np.random.default_rng(0).random((8, FEATURES)).astype("float32")
    try:
        model = keras_snn.convert_model(ann(), x, **{"timesteps": 2, argument: value})
    except Exception as error:  # noqa: BLE001
        assert_short_expected_error(error)
        return
    assert isinstance(model, keras_snn.SpikingModel)
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
