"""snn.fit and convert_model's calibration under tf.distribute, against one process.

Real processes: MirroredStrategy over two logical CPUs in one subprocess (its
logical devices must be set before TensorFlow starts), and
MultiWorkerMirroredStrategy as two worker processes on 127.0.0.1 with free
ports picked at run time and TF_CONFIG set per process. The one-process
reference is trained in the Mirrored subprocess before the strategy is made.
Every run builds the same models from the same seed and trains them on the
same global batches, so the weights must agree to float rounding.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import keras_snn
from keras_snn import distributed_training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 480  # per run; about 60 s on 2 idle cores, 180 s measured under heavy load

# One script for every process: "mirrored" trains the one-process reference,
# then the same under MirroredStrategy(2 logical CPUs); "mwms" is one worker.
WORKER = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    mode, out = sys.argv[1], sys.argv[2]
    import tensorflow as tf
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import contextlib
    import keras, numpy as np, keras_snn
    from keras_snn import distributed_training

    rng = np.random.default_rng(0)
    X_DENSE = rng.random((16, 6)).astype("float32")
    Y_DENSE = rng.integers(0, 3, 16)
    W_DENSE = (0.5 + rng.random(16)).astype("float32")
    X_CONV = rng.random((32, 6, 6, 1)).astype("float32")
    Y_CONV = rng.integers(0, 3, 32)

    class Batches(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.losses = []
        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))

    def compiled(snn):
        snn.compile(keras.optimizers.SGD(0.2), keras_snn.losses.ReadoutCrossentropy(),
                    metrics=[keras_snn.metrics.StepAccuracy(), keras_snn.metrics.SynapticOps()])
        return snn

    def run(scope):
        weights, report = {}, {}
        # Dense, weighted array input, the last quarter held out for validation:
        # 2 epochs of 2 global batches (8 and 4), then evaluate in batches of 4.
        with scope():
            keras.utils.set_random_seed(0)
            ann = keras.Sequential([keras.Input((6,)), keras.layers.Dense(12, activation="relu"),
                                    keras.layers.Dense(3)])
            snn = compiled(keras_snn.convert_model(ann, X_DENSE, timesteps=4, neuron="lif"))
        weights["dense_converted"] = snn.get_weights()
        batches = Batches()
        history = snn.fit(X_DENSE, Y_DENSE, batch_size=8, epochs=2, shuffle=False, verbose=0,
                          callbacks=[batches], sample_weight=W_DENSE, validation_split=0.25)
        weights["dense_trained"] = snn.get_weights()
        report["dense_evaluate"] = snn.evaluate(X_DENSE, Y_DENSE, batch_size=4, verbose=0)
        report["dense_history"] = history.history
        report["dense_batch_losses"] = batches.losses
        # Conv, tf.data input: 3 global batches of 8, per-channel ceilings,
        # validation on arrays.
        with scope():
            keras.utils.set_random_seed(1)
            ann = keras.Sequential([
                keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                keras.layers.AveragePooling2D(2), keras.layers.Flatten(), keras.layers.Dense(3)])
            snn = compiled(keras_snn.convert_model(ann, X_CONV[:24], timesteps=5, per_channel=True))
        weights["conv_converted"] = snn.get_weights()
        data = tf.data.Dataset.from_tensor_slices((X_CONV[:24], Y_CONV[:24])).batch(8)
        history = snn.fit(data, epochs=1, verbose=0, validation_data=(X_CONV[24:], Y_CONV[24:]))
        weights["conv_trained"] = snn.get_weights()
        report["conv_history"] = history.history
        # A repeating dataset read on across epochs (steps_per_epoch), stopped
        # by a callback after 2 of 4 epochs: 3 + 3 global batches of 8.
        with scope():
            keras.utils.set_random_seed(2)
            ann = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                                    keras.layers.Dense(3)])
            snn = compiled(keras_snn.convert_model(ann, X_DENSE, timesteps=4))
        data = tf.data.Dataset.from_tensor_slices((X_DENSE, Y_DENSE)).batch(8).repeat()
        stop = keras.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0)
        history = snn.fit(data, epochs=4, steps_per_epoch=3, verbose=2, callbacks=[stop])
        weights["repeat_trained"] = snn.get_weights()
        report["repeat_history"] = history.history
        return weights, report

    def shuffled():  # a fresh compiled Dense SNN for the shuffled-input run
        keras.utils.set_random_seed(3)
        snn = keras_snn.convert_model(keras.Sequential([
            keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]),
            X_DENSE, timesteps=4)
        return compiled(snn)

    def save(name, weights, report):
        np.savez(os.path.join(out, name + ".npz"), **{
            f"{key}/{i}": w for key, ws in weights.items() for i, w in enumerate(ws)})
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump(report, f)

    if mode == "mirrored":
        weights, report = run(contextlib.nullcontext)
        # The permutations the workers below agree on: worker 0's first NumPy draw.
        np.random.seed(10)
        seed = np.random.randint(0, 2**31 - 1)
        snn = shuffled()
        for epoch in range(2):
            order = distributed_training.epoch_order(seed, epoch, len(X_DENSE))
            snn.fit(X_DENSE[order], Y_DENSE[order], batch_size=8, shuffle=False, verbose=0)
        weights["shuffled_trained"] = snn.get_weights()
        save("single", weights, report)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        weights, report = run(strategy.scope)
        report["replicas"] = strategy.num_replicas_in_sync
        save("mirrored", weights, report)
    else:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        weights, report = run(strategy.scope)
        report["replicas"] = strategy.num_replicas_in_sync
        # Workers with different NumPy states and global seeds still shuffle alike.
        task = strategy.cluster_resolver.task_id
        with strategy.scope():
            snn = shuffled()
        np.random.seed(10 + task)
        tf.random.set_seed(100 + task)
        snn.fit(X_DENSE, Y_DENSE, batch_size=8, epochs=2, shuffle=True, verbose=0)
        weights["shuffled_trained"] = snn.get_weights()
        np.random.seed(task)
        report["shared_seed"] = distributed_training.shuffle_seed(strategy)
        with strategy.scope():
            snn = compiled(keras_snn.convert_model(
                keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)]), X_DENSE, timesteps=4))
        try:
            snn.fit(X_DENSE, Y_DENSE, class_weight={0: 2.0}, verbose=0)
        except ValueError as error:
            report["refusal"] = str(error)
        save(f"worker{strategy.cluster_resolver.task_id}", weights, report)
""")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _environment(**extra):
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def _wait(processes):
    """Wait for all processes within TIMEOUT_S; fail with every failing worker's stderr."""
    failures = []
    for name, process in processes.items():
        try:
            _, stderr = process.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in processes.values():
                other.kill()
            pytest.fail(f"{name} did not finish within {TIMEOUT_S} s")
        if process.returncode != 0:
            failures.append(f"--- {name} (exit {process.returncode})\n{stderr[-3000:]}")
    assert not failures, "\n".join(failures)


def _load(directory, name):
    with np.load(directory / f"{name}.npz") as arrays:
        weights = {}
        for key in arrays.files:
            model, index = key.split("/")
            weights.setdefault(model, {})[int(index)] = arrays[key]
    with open(directory / f"{name}.json") as f:
        report = json.load(f)
    return {model: [ws[i] for i in sorted(ws)] for model, ws in weights.items()}, report


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run the Mirrored subprocess and the two MWMS workers at once; load their results."""
    directory = tmp_path_factory.mktemp("distributed_training")
    script = directory / "worker.py"
    script.write_text(WORKER)
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = {
        "mirrored": subprocess.Popen(
            [sys.executable, str(script), "mirrored", str(directory)],
            env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    }
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes[f"worker{index}"] = subprocess.Popen(
            [sys.executable, str(script), "mwms", str(directory)],
            env=_environment(TF_CONFIG=json.dumps(config)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
    _wait(processes)
    return {name: _load(directory, name) for name in ("single", "mirrored", "worker0", "worker1")}


def _assert_weights_close(got, want, rtol, atol):
    assert len(got) == len(want)
    for index, (g, w) in enumerate(zip(got, want)):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"weight {index}")


def _assert_histories_close(got, want):
    assert sorted(got) == sorted(want)  # the same keys as Keras's fit
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("run", ["mirrored", "worker0", "worker1"])
def test_calibration_under_a_strategy_equals_one_process(runs, run):
    single, _ = runs["single"]
    weights, report = runs[run]
    assert report["replicas"] == 2
    for model in ("dense_converted", "conv_converted"):
        # Every replica calibrates on the same data: ceilings (thresholds and
        # normalised weights) are exactly those of one process.
        for got, want in zip(weights[model], single[model]):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("run", ["mirrored", "worker0", "worker1"])
def test_fit_under_a_strategy_equals_one_process(runs, run):
    single, single_report = runs["single"]
    weights, report = runs[run]
    for model in ("dense", "conv"):
        # The weights moved, so this compares training, not the conversion.
        assert any(
            not np.array_equal(a, b)
            for a, b in zip(single[f"{model}_trained"], single[f"{model}_converted"])
        )
    for model in ("dense", "conv", "repeat"):
        _assert_weights_close(
            weights[f"{model}_trained"], single[f"{model}_trained"], rtol=1e-5, atol=1e-6
        )
        _assert_histories_close(report[f"{model}_history"], single_report[f"{model}_history"])
    assert len(single_report["repeat_history"]["loss"]) == 2  # EarlyStopping stopped it
    assert "val_final_accuracy" in single_report["conv_history"]
    assert "val_loss" in single_report["dense_history"]
    np.testing.assert_allclose(report["dense_evaluate"], single_report["dense_evaluate"], rtol=1e-5)
    assert len(report["dense_batch_losses"]) == 4  # 2 epochs of 2 global batches
    np.testing.assert_allclose(
        report["dense_batch_losses"], single_report["dense_batch_losses"], rtol=1e-5
    )


def test_multi_worker_shuffle_equals_one_process_in_the_same_order(runs):
    single, _ = runs["single"]
    for run in ("worker0", "worker1"):
        _assert_weights_close(
            runs[run][0]["shuffled_trained"], single["shuffled_trained"], rtol=1e-5, atol=1e-6
        )


def test_multi_worker_workers_agree_and_refuse_class_weight(runs):
    first, second = runs["worker0"][1], runs["worker1"][1]
    assert first["shared_seed"] == second["shared_seed"]
    for report in (first, second):
        assert "class_weight" in report["refusal"]
        assert "keras-team/keras#20585" in report["refusal"]


def _ann():
    import keras

    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])


def _tiny_snn():
    snn = keras_snn.convert_model(_ann(), np.ones((4, 4), "float32"), timesteps=2)
    snn.compile("sgd", keras_snn.losses.ReadoutCrossentropy())
    return snn


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"class_weight": {0: 1.0}}, ValueError, "sample_weight"),
        ({"validation_split": 1.0}, ValueError, "too few"),
        ({"epoch": 2}, TypeError, "unexpected keyword argument 'epoch'"),
    ],
)
def test_multi_worker_fit_refuses_what_it_does_not_implement(kwargs, error, message):
    with pytest.raises(error, match=message):
        distributed_training.fit_multi_worker(_tiny_snn(), np.ones((4, 4)), np.zeros(4), **kwargs)


def test_multi_worker_fit_checks_its_input():
    import tensorflow as tf

    snn = _tiny_snn()
    data = tf.data.Dataset.from_tensor_slices((np.ones((4, 4)), np.zeros(4))).batch(2)
    with pytest.raises(ValueError, match="batch_size"):
        distributed_training.fit_multi_worker(snn, data, batch_size=2)
    with pytest.raises(ValueError, match="inside the dataset"):
        distributed_training.fit_multi_worker(snn, data, np.zeros(4))
    with pytest.raises(ValueError, match="validation_data"):
        distributed_training.fit_multi_worker(snn, data, validation_split=0.5)
    with pytest.raises(TypeError, match="from_generator"):
        distributed_training.fit_multi_worker(snn, (row for row in np.ones((4, 4))))
    uncompiled = keras_snn.convert_model(_ann(), np.ones((4, 4)), timesteps=2)
    with pytest.raises(ValueError, match="must be compiled"):
        distributed_training.fit_multi_worker(uncompiled, np.ones((4, 4)), np.zeros(4))
