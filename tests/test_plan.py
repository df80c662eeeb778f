"""keras_snn.plan: what each connection carries, and who reads it."""

import keras
import numpy as np
import pytest

import keras_snn
from keras_snn import layers
from keras_snn import metrics
from keras_snn.plan import Carries
from keras_snn.plan import Plan


def test_synapse_and_passthrough_rules():
    S, A, C = Carries.SPIKES, Carries.ANALOG, Carries.CURRENT
    assert Carries.after_synapse([A], emits_spikes=True) is S
    assert Carries.after_synapse([A], emits_spikes=False) is A  # a linear map of the input
    assert Carries.after_synapse([S], emits_spikes=False) is C
    assert Carries.after_synapse([S, A], emits_spikes=False) is C
    # An average (pooling) without neuron passes on what it receives: the
    # window means of spikes are graded events.
    assert Carries.after_synapse([S], emits_spikes=False, averages=True) is S
    assert Carries.after_synapse([A], emits_spikes=False, averages=True) is A
    assert Carries.passed_on([S, S]) is S
    assert Carries.passed_on([A]) is A
    assert Carries.passed_on([S, C]) is C  # mixed values are not events


def residual_network(encoder):
    inputs = keras.Input((6, 6, 2))
    x = encoder(inputs)
    a = layers.SpikingConv2D(3, 3, padding="same")(x)
    b = layers.SpikingConv2D(3, 1)(a)
    x = layers.SpikingAdd()([a, b])
    x = layers.SpikingAveragePooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = layers.SpikingDense(4, neuron=None)(x)
    return keras.Model(inputs, layers.Readout()(x))


@pytest.mark.parametrize("encoder, first", [
    (lambda: layers.AnalogInput(), Carries.ANALOG),
    (lambda: layers.PoissonInput(seed=0), Carries.SPIKES),
])
def test_plan_kinds_and_what_the_loop_counts(encoder, first):
    plan = Plan(residual_network(encoder()))
    kinds = [node.kind for node in plan.nodes]
    assert kinds[0] is first
    assert kinds[1:-2] == [Carries.SPIKES] * (len(kinds) - 3)  # convs, add, pool, flatten
    assert kinds[-2:] == [Carries.CURRENT, Carries.CURRENT]  # readout layer and Readout
    # Operations are counted where spikes arrive: not on the analog input.
    counted = [node.layer.name for node in plan.op_nodes]
    first_conv = plan.nodes[1].layer.name
    assert (first_conv in counted) == (first is Carries.SPIKES)
    # Analog input: the first layer's current is time-invariant, computed once.
    assert plan.nodes[1].static_current == (first is Carries.ANALOG)
    # Poisson spikes are binary (their own event mask), by the layer's attribute.
    assert plan.nodes[0].binary == (first is Carries.SPIKES)


def test_a_pooling_without_neuron_passes_graded_events_counted_once_each():
    inputs = keras.Input((3, 3, 2))
    x = layers.EventInput()(inputs)
    x = layers.SpikingGlobalAveragePooling2D(neuron=None)(x)
    dense = layers.SpikingDense(4, neuron=None)
    network = keras.Model(inputs, layers.Readout()(dense(x)))
    kernel = np.array([[1.0, 0.0, 2.0, 0.0], [0.5, -1.0, 1.0, 3.0]], "float32")
    dense.kernel.assign(kernel)  # fan-out 2 from channel 0, 4 from channel 1
    plan = Plan(network)
    pool, readout_layer = plan.nodes[1], plan.nodes[2]
    assert pool.kind is Carries.SPIKES and not pool.binary and not pool.unit
    assert pool.counts_ops and readout_layer.counts_ops
    assert readout_layer.input_graded == [True] and not readout_layer.spike_products
    assert pool.key not in [node.key for node in plan.spiking_nodes]  # it fires nothing
    frames = (np.random.default_rng(0).random((5, 6, 3, 3, 2)) < 0.15).astype("float32")
    run = keras_snn.SpikingModel(network).run(frames)
    events = frames.reshape(5, 6, 9, 2)
    # The pool: one accumulate per input event. The layer after it: one event
    # per channel that had any spike this step, times that channel's fan-out.
    np.testing.assert_array_equal(run["layer_ops"][pool.key], events.sum(axis=(2, 3)))
    pooled_events = events.any(axis=2)
    np.testing.assert_array_equal(
        run["layer_ops"][readout_layer.key], pooled_events @ np.array([2.0, 4.0]))
    # The means themselves reach the layer: its current is kernel . mean.
    np.testing.assert_allclose(
        np.asarray(run["readout"])[:, -1], events.mean(axis=2).mean(axis=1) @ kernel, atol=1e-6)
    # Means such as 1/9 are not exact in bfloat16: their products stay float32.
    narrow = keras_snn.SpikingModel(network, synapse_dtype="bfloat16").run(frames)
    np.testing.assert_array_equal(narrow["readout"], run["readout"])


def test_a_burst_is_one_event_of_its_size_in_the_counts_and_the_readout():
    inputs = keras.Input((6,))
    x = layers.EventInput()(inputs)
    hidden = layers.SpikingDense(3, neuron=keras_snn.neurons.BufferedIF(burst=4))
    out = layers.SpikingDense(2, neuron=None)
    network = keras.Model(inputs, layers.Readout()(out(hidden(x))))
    rng = np.random.default_rng(0)
    w_hidden = rng.normal(0.5, 1.5, (6, 3)).astype("float32")
    w_out = np.array([[1.0, 0.0], [0.5, -2.0], [0.0, 0.0]], "float32")  # fan-outs 1, 2, 0
    hidden.kernel.assign(w_hidden)
    hidden.bias.assign(np.zeros(3, "float32"))
    out.kernel.assign(w_out)
    plan = Plan(network)
    node = next(n for n in plan.nodes if n.layer is hidden)
    assert not node.unit and not node.binary  # bursts are multi-bit, and negative spikes
    frames = (rng.random((4, 10, 6)) < 0.7).astype("float32")
    frames[:, :5] = 0.0  # silent, then late input: room for bursts
    run = keras_snn.SpikingModel(network).run(frames)
    # The spikes by the neuron rule itself, step by step.
    neuron, spikes = hidden.neuron, []
    state = neuron.initial_state((4, 3), 1.0)
    for t in range(10):
        s, state = neuron.step(frames[:, t] @ w_hidden, state, 1.0)
        spikes.append(np.asarray(s))
    spikes = np.stack(spikes, axis=1)
    assert np.abs(spikes).max() > 1  # some steps carry a burst
    fired = spikes != 0
    np.testing.assert_array_equal(run["spike_events"][hidden.name], fired.sum(axis=2))
    np.testing.assert_array_equal(run["spike_counts"][hidden.name], np.abs(spikes).sum(axis=2))
    np.testing.assert_array_equal(run["layer_ops"][out.name], fired @ np.array([1.0, 2.0, 0.0]))
    np.testing.assert_allclose(
        np.asarray(run["readout"])[:, -1], spikes.mean(axis=1) @ w_out, atol=1e-5)


def test_spiking_model_exposes_its_plan_and_simulate_reads_it():
    snn = keras_snn.SpikingModel(residual_network(layers.AnalogInput()), timesteps=3)
    assert isinstance(snn.plan, Plan)
    x = np.random.default_rng(0).random((5, 6, 6, 2)).astype("float32")
    result = keras_snn.simulate(snn, x, verbose=0)
    assert sorted(result.layer_ops) == sorted(node.key for node in snn.plan.op_nodes)
    assert sorted(result.spike_rates) == sorted(node.key for node in snn.plan.spiking_nodes)


def test_converter_refuses_what_the_plan_cannot_run():
    # Raw (analog) input added to spikes: no spiking Add takes analog values.
    inputs = keras.Input((4,))
    raw_add = keras.layers.Add()([inputs, keras.layers.Dense(4, activation="relu")(inputs)])
    with pytest.raises(keras_snn.ConversionError, match="adds the raw input"):
        keras_snn.convert_model(keras.Model(inputs, keras.layers.Dense(2)(raw_add)))
    # Nothing but the input reaches the output: it stays analog.
    inputs = keras.Input((4,))
    with pytest.raises(keras_snn.ConversionError, match="no weighted layer"):
        keras_snn.convert_model(keras.Model(inputs, keras.layers.Flatten()(inputs)))


def test_synaptic_ops_metric_weights_samples_and_checks_the_shape():
    metric = metrics.SynapticOps()
    metric.update_state(None, np.array([[1.0, 2.0], [3.0, 4.0]], "float32"),
                        sample_weight=np.array([1.0, 0.0], "float32"))
    assert float(metric.result()) == pytest.approx(3.0)  # only the first sample counts
    last = metrics.SynapticOps(step=-1)
    last.update_state(None, np.array([[1.0, 2.0], [3.0, 4.0]], "float32"))
    assert float(last.result()) == pytest.approx(3.0)
    with pytest.raises(ValueError, match=r"\(batch, T\)"):
        metric.update_state(None, np.zeros((2, 3, 4), "float32"))
