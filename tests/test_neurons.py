"""Neuron rules against the papers' properties (seed 004 eqs. 2-3, 11-13; DESIGN.md 2)."""

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_snn import neurons

FAST = settings(max_examples=60, deadline=None)


def simulate(neuron, currents, threshold=1.0, **parameters):
    """Run one neuron element over a list of currents; return the spike train."""
    currents = np.asarray(currents, "float32").reshape(len(currents), 1)
    state = neuron.initial_state((1,), threshold)
    spikes = []
    for current in currents:
        s, state = neuron.step(tf.constant(current), state, threshold, **parameters)
        spikes.append(float(s[0]))
    return np.array(spikes), state


@FAST
@given(
    current=st.floats(-2.0, 4.0),
    steps=st.integers(1, 64),
    threshold=st.floats(0.25, 4.0),
    spike_max=st.sampled_from([1, 2, 4]),
)
def test_if_count_within_one_of_ideal_under_constant_input(current, steps, threshold, spike_max):
    # Seed 004 eq. 11: the ideal count is floor(max(V_a/theta, 0)) with V_a = T*z.
    # Multi-bit firing is limited to spike_max per step, so stay within that rate.
    current = min(current, spike_max) * threshold
    spikes, _ = simulate(neurons.IF(spike_max=spike_max), [current] * steps, threshold)
    ideal = math.floor(max(steps * current / threshold, 0.0))
    assert abs(spikes.sum() - ideal) <= 1


@FAST
@given(
    currents=st.lists(st.floats(-1.0, 3.0), min_size=1, max_size=60),
    initial_membrane=st.sampled_from([0.0, 0.5]),
)
def test_buffered_never_ends_above_ideal_count(currents, initial_membrane):
    # Section A.3: a negative spike undoes an over-fire. For binary spikes and
    # inputs no smaller than -theta per step, the net count after any run is
    # at most floor(max((V_a + V_0)/theta, 0)).
    threshold = 1.0
    neuron = neurons.BufferedIF(initial_membrane=initial_membrane)
    spikes, _ = simulate(neuron, currents, threshold)
    accumulated = np.cumsum(np.asarray(currents, "float32")) + initial_membrane * threshold
    counts = np.cumsum(spikes)
    ideal = np.floor(np.maximum(accumulated / threshold, 0.0) + 1e-5)
    assert np.all(counts <= ideal)


@FAST
@given(
    currents=st.lists(st.floats(-3.0, 3.0, width=32), min_size=1, max_size=40),
    threshold=st.sampled_from([0.3, 1.0, 2.5]),
)
def test_binary_buffered_neuron_follows_eq_13_step_by_step(currents, threshold):
    # Eq. 13 with spike_max=1, written out: +1 at V' >= theta, -1 at V' < 0
    # while the buffer holds a spike, else 0; subtractive reset.
    spikes, _ = simulate(neurons.BufferedIF(), currents, threshold)
    theta, membrane, held = np.float32(threshold), np.float32(0.0), 0.0
    for current, spike in zip(np.asarray(currents, "float32"), spikes):
        potential = membrane + current
        expected = 1.0 if potential >= theta else (-1.0 if potential < 0 and held >= 1 else 0.0)
        assert spike == expected
        membrane, held = potential - theta * np.float32(expected), held + expected


def test_if_over_fires_where_buffered_corrects():
    # Early strong input, then inhibition: IF keeps its early spikes, the
    # buffered neuron takes them back with negative spikes.
    currents = [1.0, 1.0, 1.0, -0.9, -0.9, -0.9]
    if_spikes, _ = simulate(neurons.IF(), currents)
    buffered_spikes, _ = simulate(neurons.BufferedIF(), currents)
    ideal = math.floor(max(sum(currents), 0))
    assert if_spikes.sum() > ideal
    assert buffered_spikes.sum() == ideal
    assert buffered_spikes.min() == -1


@FAST
@given(
    currents=st.lists(st.floats(-8.0, 12.0), min_size=1, max_size=40),
    spike_max=st.sampled_from([1, 2, 3, 4, 8]),
    buffered=st.booleans(),
)
def test_multibit_spikes_are_powers_of_two_up_to_spike_max(currents, spike_max, buffered):
    neuron = neurons.BufferedIF(spike_max) if buffered else neurons.IF(spike_max)
    spikes, _ = simulate(neuron, currents)
    sizes = np.abs(spikes[spikes != 0])
    assert np.all(sizes <= spike_max)
    assert np.all(np.log2(sizes) == np.round(np.log2(sizes)))
    if not buffered:
        assert np.all(spikes >= 0)


@FAST
@given(
    currents=st.lists(st.floats(-6.0, 6.0), min_size=1, max_size=40),
    initial_membrane=st.sampled_from([0.0, 0.5]),
    spike_max=st.sampled_from([1, 2]),
    threshold=st.sampled_from([0.5, 1.0, 3.0]),
)
def test_unlimited_bursts_count_the_input_so_far_clipped_to_the_ceiling(
        currents, initial_membrane, spike_max, threshold):
    # A burst as large as the run never lags: after every step t the net count
    # is the accumulated input in spikes, floored, clipped to [0, t * spike_max].
    steps = len(currents)
    neuron = neurons.BufferedIF(spike_max, initial_membrane, burst=steps)
    currents = np.asarray(currents, "float32") * threshold
    spikes, _ = simulate(neuron, currents, threshold)
    accumulated = initial_membrane + np.cumsum(currents.astype("float64")) / threshold
    ceiling = spike_max * np.arange(1, steps + 1)
    expected = np.clip(np.floor(accumulated), 0, ceiling)
    near_whole = np.abs(accumulated - np.round(accumulated)) < 1e-4  # float32 sums
    np.testing.assert_array_equal(np.cumsum(spikes)[~near_whole], expected[~near_whole])


@FAST
@given(
    currents=st.lists(st.floats(-8.0, 12.0), min_size=1, max_size=40),
    burst=st.integers(1, 5),
    spike_max=st.sampled_from([1, 2]),
)
def test_bursts_stay_within_burst_times_spike_max_and_the_ceiling(currents, burst, spike_max):
    spikes, _ = simulate(neurons.BufferedIF(spike_max, burst=burst), currents)
    counts = np.cumsum(spikes)
    assert np.all(np.abs(spikes) <= burst * spike_max)
    assert np.all(counts >= 0)
    assert np.all(counts <= spike_max * np.arange(1, len(currents) + 1))


def test_a_burst_spends_charge_that_arrived_late():
    # Nothing for three steps, then three spikes' worth at the last step: the
    # paper's neuron can send one of them, a burst of 3 (ceiling 4) all three.
    currents = [0.0, 0.0, 0.0, 3.0]
    plain, (membrane, _) = simulate(neurons.BufferedIF(), currents)
    bursting, _ = simulate(neurons.BufferedIF(burst=4), currents)
    assert plain.sum() == 1 and float(membrane[0]) == 2.0
    assert bursting.tolist() == [0.0, 0.0, 0.0, 3.0]
    # The ceiling still holds: driven at twice it, a burst neuron fires once per step.
    saturated, _ = simulate(neurons.BufferedIF(burst=4), [2.0] * 5)
    assert saturated.tolist() == [1.0] * 5


def test_the_burst_ceiling_is_one_float32_number_per_sample():
    # t * spike_max is the same for every neuron of a sample: keeping it per
    # neuron would add a full tensor to every step's memory traffic.
    neuron = neurons.BufferedIF(2, burst=3)
    state = neuron.initial_state((3, 5, 5, 2), 1.0)
    current = tf.random.stateless_uniform((3, 5, 5, 2), (0, 1), -4.0, 9.0)
    for step in range(1, 4):
        _, state = neuron.step(current, state, 1.0)
        ceiling = state[-1]
        assert ceiling.shape == (3, 1, 1, 1) and ceiling.dtype == tf.float32
        np.testing.assert_array_equal(ceiling, np.full((3, 1, 1, 1), 2.0 * step))
        assert np.all(state[1].numpy() <= 2.0 * step)  # the net count stays under it


def test_burst_one_is_the_papers_neuron():
    currents = np.random.default_rng(0).uniform(-3.0, 5.0, 50)
    assert neurons.BufferedIF(2, 0.5).get_config()["burst"] == 1
    plain, _ = simulate(neurons.BufferedIF(2, 0.5), currents)
    one, _ = simulate(neurons.BufferedIF(2, 0.5, burst=1), currents)
    np.testing.assert_array_equal(plain, one)
    assert len(neurons.BufferedIF().initial_state((1,), 1.0)) == 2
    assert len(neurons.BufferedIF(burst=2).initial_state((1,), 1.0)) == 3
    assert neurons.BufferedIF(2, burst=3).largest_spike == 6
    assert neurons.IF(4).largest_spike == 4


@FAST
@given(currents=st.lists(st.floats(-3.0, 3.0), min_size=1, max_size=40))
def test_lif_with_leak_one_equals_if(currents):
    if_spikes, if_state = simulate(neurons.IF(spike_max=2), currents)
    lif_spikes, lif_state = simulate(neurons.LIF(leak=1.0, spike_max=2), currents)
    np.testing.assert_array_equal(if_spikes, lif_spikes)
    np.testing.assert_allclose(if_state[0], lif_state[0])


def test_lif_leak_decays_membrane():
    _, state = simulate(neurons.LIF(leak=0.5), [0.8, 0.0, 0.0])
    np.testing.assert_allclose(state[0], [0.2], rtol=1e-6)  # V = 0.8, then 0.4, then 0.2


def test_adjust_function_matches_equation_3():
    n = tf.constant([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 8.0, 100.0])
    expected = [0, 1, 2, 2, 4, 4, 4, 8, 8]  # 2**floor(log2(min(n, 8)))
    np.testing.assert_array_equal(neurons.multibit_spike_count(n, 8), expected)


def test_initial_membrane_is_fraction_of_threshold():
    state = neurons.IF(initial_membrane=0.5).initial_state((2,), threshold=3.0)
    np.testing.assert_allclose(state[0], [1.5, 1.5])
    buffered = neurons.BufferedIF().initial_state((2,), threshold=3.0)
    assert len(buffered) == 2 and float(tf.reduce_sum(buffered[1])) == 0.0


def test_reset_to_zero_discards_residue():
    _, state = simulate(neurons.IF(reset="zero"), [1.7])
    assert float(state[0][0]) == 0.0
    _, state = simulate(neurons.IF(), [1.7])
    np.testing.assert_allclose(state[0], [0.7], rtol=1e-6)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: neurons.IF(spike_max=0), "spike_max"),
        (lambda: neurons.IF(spike_max=1.5), "spike_max"),
        (lambda: neurons.IF(initial_membrane=1.0), "initial_membrane"),
        (lambda: neurons.LIF(leak=0.0), "leak"),
        (lambda: neurons.IF(reset="hard"), "reset"),
        (lambda: neurons.BufferedIF(burst=0), "burst"),
        (lambda: neurons.BufferedIF(burst=2.0), "burst"),
        (lambda: neurons.get("sigmoid"), "Unknown neuron"),
        (lambda: neurons.deserialize({"class_name": "Nope"}), "Unknown neuron class"),
    ],
)
def test_bad_arguments_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    "neuron",
    [neurons.IF(2, 0.5, "zero"), neurons.LIF(0.9, 4), neurons.BufferedIF(2, 0.5),
     neurons.BufferedIF(1, 0.5, burst=8)],
)
def test_serialize_round_trip(neuron):
    restored = neurons.deserialize(neurons.serialize(neuron))
    assert restored == neuron and restored is not neuron
    assert neurons.get(neurons.serialize(neuron)) == neuron


def test_aliases():
    assert isinstance(neurons.get("if"), neurons.IF)
    assert isinstance(neurons.get("buffered"), neurons.BufferedIF)
    assert isinstance(neurons.get("lif"), neurons.LIF)
    assert neurons.get(None) is None


def test_a_burst_neurons_surrogate_gradient_is_the_binary_neurons():
    # Training through bursts: the same surrogate derivative at u = V'/theta.
    current = tf.constant([0.2, 0.9, 1.4, 3.0])
    grads = []
    for neuron in (neurons.BufferedIF(), neurons.BufferedIF(burst=4)):
        with tf.GradientTape() as tape:
            tape.watch(current)
            state = neuron.initial_state((4,), 2.0)
            spikes, _ = neuron.step(current, state, 2.0)
        grads.append(tape.gradient(spikes, current).numpy())
    expected = neurons.PiecewiseLinear().derivative(current / 2.0).numpy() / 2.0
    np.testing.assert_allclose(grads[0], expected, rtol=1e-6)
    np.testing.assert_allclose(grads[1], expected, rtol=1e-6)
