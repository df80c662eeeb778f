"""simulate() and its result checked against hand computations on tiny networks."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_snn
from keras_snn import SpikingModel
from keras_snn import layers


def tiny_snn():
    """EventInput -> SpikingDense(2, threshold 1) -> non-spiking Dense(2) -> Readout.

    Hidden unit 0 copies input 0, unit 1 copies input 1 (weights 1, fire on
    every input spike); the output layer maps hidden unit i to class i.
    """
    inputs = keras.Input((2,))
    x = layers.EventInput(name="events")(inputs)
    x = layers.SpikingDense(2, name="hidden")(x)
    x = layers.SpikingDense(2, neuron=None, name="out")(x)
    network = keras.Model(inputs, layers.Readout()(x))
    eye = np.eye(2, dtype="float32")
    network.get_layer("hidden").set_weights([eye, np.zeros(2, "float32"), np.float32(1)])
    network.get_layer("out").set_weights([eye, np.zeros(2, "float32"), np.float32(1)])
    return SpikingModel(network)


# Sample 0: class 0 spikes at steps 1-3, class 1 at steps 2-3 -> argmax 0 at t=1
# (tie at 2, 3 -> argmax picks 0). Sample 1: only input 1 at step 2 and 3.
FRAMES = np.array(
    [
        [[1, 0], [1, 1], [1, 1]],
        [[0, 0], [0, 1], [0, 1]],
    ],
    "float32",
)
LABELS = np.array([0, 1])


def test_metrics_match_hand_computation():
    result = keras_snn.simulate(tiny_snn(), FRAMES, LABELS, batch_size=1, verbose=0)
    # Readouts: sample 0 -> (0,0)+... step1 [0,0] (hidden fires at step 1, out sees
    # it the same step): [1,0]; step 2 [1,0.5]; step 3 [1, 0.667]: class 0 each step.
    # Sample 1: step1 [0,0] -> argmax 0 (wrong); steps 2-3 class 1 (right).
    np.testing.assert_allclose(result.accuracy, [0.5, 1.0, 1.0])
    # Ops: each input spike reaches one hidden synapse, each hidden spike one output synapse.
    events = FRAMES.sum(axis=(0, 2))  # input spikes per step, both samples
    np.testing.assert_allclose(result.layer_ops["hidden"], events / 2)
    np.testing.assert_allclose(result.layer_ops["out"], events / 2)
    np.testing.assert_allclose(result.synaptic_ops, events)
    np.testing.assert_allclose(result.cumulative_ops, np.cumsum(events))
    # Spike rates: hidden spikes copy the input: 7 spikes / (2 samples x 3 steps x 2 neurons).
    assert result.spike_rates["hidden"] == pytest.approx(7 / 12)
    assert result.spike_rates["events"] == pytest.approx(7 / 12)
    assert result.ann_macs == {"hidden": 2.0, "out": 2.0}
    assert result.input_macs == 0.0
    assert result.time_to_accuracy(0.9) == 2
    assert result.ops_to_accuracy(0.9) == pytest.approx(events[:2].sum())
    assert result.time_to_accuracy(1.1) is None and result.ops_to_accuracy(1.1) is None
    assert result.latency_area() == pytest.approx(0.5)
    assert result.power_area() == pytest.approx(0.5 * events[0])


def test_one_hot_labels_and_datasets_agree():
    snn = tiny_snn()
    by_int = keras_snn.simulate(snn, FRAMES, LABELS, verbose=0)
    by_one_hot = keras_snn.simulate(snn, FRAMES, np.eye(2)[LABELS], verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((FRAMES, LABELS)).batch(1)
    by_dataset = keras_snn.simulate(snn, dataset, verbose=0)
    for other in (by_one_hot, by_dataset):
        np.testing.assert_allclose(other.accuracy, by_int.accuracy)
        np.testing.assert_allclose(other.synaptic_ops, by_int.synaptic_ops)
    unlabelled = keras_snn.simulate(snn, FRAMES, verbose=0)
    assert unlabelled.accuracy is None
    with pytest.raises(ValueError, match="labels"):
        unlabelled.time_to_accuracy(0.5)


def test_energy_and_serialisation(tmp_path):
    result = keras_snn.simulate(tiny_snn(), FRAMES, LABELS, verbose=0)
    energy = result.energy(e_mac=4.0, e_ac=1.0)
    assert energy["snn"] == pytest.approx(result.cumulative_ops[-1] * 1.0)
    assert energy["ann"] == pytest.approx(4.0 * 4.0)
    text = result.to_json(str(tmp_path / "result.json"))
    assert json.loads(text)["accuracy"] == pytest.approx([0.5, 1.0, 1.0])
    assert os.path.exists(tmp_path / "result.json")
    result.write_tensorboard(str(tmp_path / "tb"))
    assert os.listdir(tmp_path / "tb")
    pytest.importorskip("matplotlib")
    assert os.path.getsize(result.plot(str(tmp_path / "curves.png"))) > 0


def test_bad_input_errors():
    snn = tiny_snn()
    with pytest.raises(ValueError, match="no samples"):
        keras_snn.simulate(snn, np.zeros((0, 3, 2), "float32"), verbose=0)
    with pytest.raises(ValueError, match="3 samples but y has 2"):
        keras_snn.simulate(snn, np.zeros((3, 3, 2), "float32"), LABELS, verbose=0)
    with pytest.raises(ValueError, match="rank 3"):
        keras_snn.simulate(snn, np.zeros((2, 2), "float32"), verbose=0)
    stateful = snn.with_options(stateful=True, batch_size=2)
    with pytest.raises(ValueError, match="stateful"):
        keras_snn.simulate(stateful, FRAMES, verbose=0)


def test_step_accuracy_metric_in_evaluate():
    snn = tiny_snn()
    snn.compile(
        loss=keras_snn.losses.ReadoutCrossentropy(),
        metrics=[keras_snn.metrics.StepAccuracy(1), keras_snn.metrics.StepAccuracy()],
    )
    scores = snn.evaluate(FRAMES, LABELS, verbose=0, return_dict=True)
    assert scores["accuracy_at_1"] == pytest.approx(0.5)
    assert scores["final_accuracy"] == pytest.approx(1.0)
    restored = keras_snn.metrics.StepAccuracy.from_config(
        keras_snn.metrics.StepAccuracy(3).get_config()
    )
    assert restored.step == 3
    with pytest.raises(ValueError, match="step"):
        keras_snn.metrics.StepAccuracy(0)


def test_measure_sparsity_by_hand():
    model = keras.Sequential([
        keras.Input((2,)), keras.layers.Dense(2, activation="relu"), keras.layers.Dense(1),
    ])
    model.layers[0].set_weights([np.array([[1.0, 0.0], [0.0, -1.0]]), np.zeros(2)])
    model.layers[1].set_weights([np.array([[1.0], [0.0]]), np.zeros(1)])
    x = np.array([[1.0, 1.0], [0.0, 2.0]], "float32")
    # Hidden activations: [1, 0] and [0, 0] -> 3 of 4 zero. Weights: 3 of 6 zero.
    sparsity = keras_snn.measure_sparsity(model, x)
    assert sparsity["activation"] == pytest.approx(0.75)
    assert sparsity["weight"] == pytest.approx(0.5)
    assert sparsity["combined"] == pytest.approx(1 - 0.25 * 0.5)


def test_distributed_simulation_equals_single_device(tmp_path):
    # Logical devices must be configured before TensorFlow starts, so in a fresh process.
    script = textwrap.dedent("""
        import json, os
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras, numpy as np, keras_snn
        keras.utils.set_random_seed(0)
        x = np.random.default_rng(0).random((37, 6)).astype("float32")
        y = np.random.default_rng(1).integers(0, 3, 37)
        def build():
            keras.utils.set_random_seed(0)
            ann = keras.Sequential([keras.Input((6,)),
                                    keras.layers.Dense(12, activation="relu", name="hidden"),
                                    keras.layers.Dense(3, name="logits")])
            return keras_snn.convert_model(ann, x, timesteps=9)
        single = keras_snn.simulate(build(), x, y, batch_size=8, verbose=0).to_dict()
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            snn = build()
            mirrored = keras_snn.simulate(snn, x, y, batch_size=8, verbose=0).to_dict()
        print(json.dumps({"single": single, "mirrored": mirrored,
                          "replicas": strategy.num_replicas_in_sync}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    single, mirrored = report["single"], report["mirrored"]
    assert mirrored["samples"] == single["samples"] == 37
    np.testing.assert_allclose(mirrored["accuracy"], single["accuracy"])
    np.testing.assert_allclose(mirrored["synaptic_ops"], single["synaptic_ops"])
    for name, rate in single["spike_rates"].items():
        assert mirrored["spike_rates"][name] == pytest.approx(rate)


def test_readout_crossentropy_final_step_and_all_steps():
    readout = np.array([[[0.0, 0.0], [5.0, 0.0]]], "float32")  # (1, 2 steps, 2 classes)
    final = keras_snn.losses.ReadoutCrossentropy()(np.array([0]), readout)
    average = keras_snn.losses.ReadoutCrossentropy("all")(np.array([[1.0, 0.0]]), readout)
    expected_final = np.log(1 + np.exp(-5.0))
    assert float(final) == pytest.approx(expected_final, rel=1e-5)
    assert float(average) == pytest.approx((np.log(2) + expected_final) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="step"):
        keras_snn.losses.ReadoutCrossentropy(step=0)


def test_synaptic_ops_metric_in_evaluate_matches_simulate():
    snn = tiny_snn()
    snn.compile(
        loss=keras_snn.losses.ReadoutCrossentropy(),
        metrics=[keras_snn.metrics.StepAccuracy(), keras_snn.metrics.SynapticOps(),
                 keras_snn.metrics.SynapticOps(step=2)],
    )
    scores = snn.evaluate(FRAMES, LABELS, batch_size=1, verbose=0, return_dict=True)
    result = keras_snn.simulate(snn, FRAMES, LABELS, verbose=0)
    assert scores["synaptic_ops"] == pytest.approx(result.cumulative_ops[-1])
    assert scores["synaptic_ops_at_2"] == pytest.approx(result.synaptic_ops[1])
    assert scores["final_accuracy"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="step"):
        keras_snn.metrics.SynapticOps(step=0)


# --------------------------------------- simulate's batch sums against run()
def reference_result(snn, x, y, timesteps, batch_size):
    """simulate's numbers from run()'s per-sample, per-step records."""
    correct, ops, spikes, samples = 0.0, {}, {}, 0
    for start in range(0, len(x), batch_size):
        record = snn.run(x[start:start + batch_size], timesteps=timesteps)
        predictions = np.argmax(record["readout"].numpy(), axis=-1)
        correct = correct + (predictions == y[start:start + batch_size, None]).sum(axis=0)
        for name, value in record["layer_ops"].items():
            ops[name] = ops.get(name, 0.0) + value.numpy().astype("float64").sum(axis=0)
        for name, value in record["spike_counts"].items():
            spikes[name] = spikes.get(name, 0.0) + value.numpy().astype("float64").sum()
        samples += len(predictions)
        neurons = record["neurons"]
    rates = {k: v / (samples * timesteps * neurons[k]) for k, v in spikes.items()}
    return correct / samples, {k: v / samples for k, v in ops.items()}, rates


def conv_max_pool_snn(x):
    keras.utils.set_random_seed(2)
    ann = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="relu"),
        keras.layers.Dense(4),
    ])
    return keras_snn.convert_model(ann, x, timesteps=11)


def signed_residual_snn(x):
    """Linear bottleneck (SignedIF, multi-bit) and a residual Add, buffered neurons."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    b = keras.layers.Conv2D(4, 1)(h)  # no ReLU: signed spikes
    h = keras.layers.ReLU()(keras.layers.Add()([h, b]))
    h = keras.layers.GlobalAveragePooling2D()(h)
    ann = keras.Model(inputs, keras.layers.Dense(4)(h))
    return keras_snn.convert_model(ann, x, timesteps=11, spike_max=2)


@pytest.mark.parametrize("make", [conv_max_pool_snn, signed_residual_snn])
def test_simulate_batch_sums_equal_the_per_sample_records(make):
    rng = np.random.default_rng(4)
    x = rng.random((45, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 4, 45)
    snn = make(x)
    result = keras_snn.simulate(snn, x, y, batch_size=16, verbose=0)
    accuracy, layer_ops, spike_rates = reference_result(snn, x, y, 11, 16)
    np.testing.assert_allclose(result.accuracy, accuracy, rtol=0, atol=1e-12)
    assert layer_ops.keys() == result.layer_ops.keys()
    for name, ops in layer_ops.items():
        np.testing.assert_allclose(result.layer_ops[name], ops, rtol=1e-9, err_msg=name)
    assert spike_rates.keys() == result.spike_rates.keys()
    for name, rate in spike_rates.items():
        assert result.spike_rates[name] == pytest.approx(rate, rel=1e-9), name
    assert result.synaptic_ops.sum() > 0 and 0 < result.accuracy.max()


def test_simulate_with_a_head_counts_the_heads_predictions():
    keras.utils.set_random_seed(5)
    head = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
    snn = tiny_snn().with_options(head=head)
    result = keras_snn.simulate(snn, FRAMES, np.array([0, 2]), verbose=0)
    predictions = np.argmax(snn(FRAMES).numpy(), axis=-1)  # (2 samples, 3 steps)
    np.testing.assert_allclose(result.accuracy, (predictions == [[0], [2]]).mean(axis=0))


def test_repeated_simulate_calls_reuse_one_compiled_step():
    from keras_snn import evaluation

    snn = tiny_snn()
    for _ in range(4):  # TensorFlow warns about retracing from the 5th trace
        keras_snn.simulate(snn, FRAMES, LABELS, batch_size=1, verbose=0)
        keras_snn.simulate(snn, np.concatenate([FRAMES] * 3), np.tile(LABELS, 3),
                           batch_size=4, verbose=0)  # batches of 4 and 2
    steps = list(evaluation._COMPILED_STEPS[snn].values())
    assert len(steps) == 1
    # Batch sizes 1, 4 and 2: the second size relaxes the batch dimension,
    # and every later call reuses that graph.
    assert steps[0].experimental_get_tracing_count() == 2


def test_simulate_counts_bad_samples_and_labels_of_a_dataset():
    frames = FRAMES.copy()
    frames[1, 2, 0] = np.nan
    dataset = tf.data.Dataset.from_tensor_slices((frames, LABELS)).batch(1)
    with pytest.raises(ValueError, match="1 samples with non-finite"):
        keras_snn.simulate(tiny_snn(), dataset, verbose=0)
    dataset = tf.data.Dataset.from_tensor_slices((FRAMES, np.array([0, 7]))).batch(1)
    with pytest.raises(ValueError, match=r"1 labels outside \[0, 2\)"):
        keras_snn.simulate(tiny_snn(), dataset, verbose=0)


# ------------------------------------------------------- readout_every (long T)
def test_readout_every_keeps_every_kth_step_of_the_full_readout():
    rng = np.random.default_rng(6)
    x = rng.random((5, 8, 8, 1)).astype("float32")
    snn = conv_max_pool_snn(x).with_options(timesteps=12)
    full = snn(x).numpy()
    np.testing.assert_array_equal(snn(x, readout_every=3).numpy(), full[:, 2::3])
    np.testing.assert_array_equal(snn(x, readout_every="final").numpy(), full[:, -1:])
    final_only = snn.with_options(readout_every="final")
    np.testing.assert_array_equal(final_only.predict(x, verbose=0), full[:, -1:])
    assert final_only.compute_output_shape((None, 8, 8, 1)) == (None, 1, 4)
    assert snn.compute_output_shape((None, 8, 8, 1), readout_every=4) == (None, 3, 4)
    restored = SpikingModel.from_config(final_only.get_config())
    assert restored.readout_every == "final"


def test_readout_every_keeps_nan_propagation_of_event_input():
    frames = FRAMES.copy()
    frames[0, 1, 0] = np.nan  # sample 0 turns NaN from step 2 on
    out = tiny_snn()(frames, readout_every=1).numpy()
    every = tiny_snn()(frames, readout_every=3).numpy()
    np.testing.assert_array_equal(np.isnan(every), np.isnan(out[:, 2::3]))
    assert np.isnan(out[0, 1:]).all() and not np.isnan(out[0, 0]).any()


@pytest.mark.parametrize("value, match", [
    (0, "int >= 1 or 'final'"), ("last", "int >= 1 or 'final'"), (5, "must divide"),
])
def test_bad_readout_every_is_refused(value, match):
    with pytest.raises(ValueError, match=match):
        tiny_snn()(FRAMES, readout_every=value)


def test_parallel_steps_changes_memory_overlap_not_results():
    rng = np.random.default_rng(10)
    x = rng.random((6, 8, 8, 1)).astype("float32")
    snn = conv_max_pool_snn(x)
    one_at_a_time = snn.with_options(parallel_steps=1)
    np.testing.assert_array_equal(one_at_a_time(x).numpy(), snn(x).numpy())
    y = rng.integers(0, 4, 6)
    a = keras_snn.simulate(snn, x, y, verbose=0)
    b = keras_snn.simulate(one_at_a_time, x, y, verbose=0)
    np.testing.assert_array_equal(a.accuracy, b.accuracy)
    np.testing.assert_array_equal(a.synaptic_ops, b.synaptic_ops)
    assert SpikingModel.from_config(one_at_a_time.get_config()).parallel_steps == 1
    with pytest.raises(ValueError, match="parallel_steps"):
        snn.with_options(parallel_steps=0)
