"""simulate() under MultiWorkerMirroredStrategy, the way users run it on several hosts.

Two real worker processes on 127.0.0.1 (free ports picked at run time, TF_CONFIG
set in each) build the same model, convert it inside `strategy.scope()` and
simulate; both must report the per-step accuracy, synaptic operations and
spike rates of one process simulating the same data alone. 37 samples in
global batches of 8 leave the workers an uneven last batch.
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

SAMPLES, BATCH, STEPS = 37, 8, 9

# Shared by the workers and the single-process reference: same data, same model.
BUILD = textwrap.dedent(f"""
    import keras, numpy as np, keras_snn
    x = np.random.default_rng(0).random(({SAMPLES}, 6, 6, 1)).astype("float32")
    y = np.random.default_rng(1).integers(0, 3, {SAMPLES})

    def build():
        keras.utils.set_random_seed(0)
        ann = keras.Sequential([
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            keras.layers.MaxPooling2D(2, name="pool"),
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="logits"),
        ])
        return keras_snn.convert_model(ann, x, timesteps={STEPS})
""")

WORKER = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
""") + BUILD + textwrap.dedent(f"""
    with strategy.scope():
        snn = build()
        first = keras_snn.simulate(snn, x, y, batch_size={BATCH}, verbose=0).to_dict()
        again = keras_snn.simulate(snn, x, y, batch_size={BATCH}, verbose=0).to_dict()
    print(json.dumps({{"result": first, "again": again,
                      "replicas": strategy.num_replicas_in_sync}}))
""")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_workers(script, workers=2, timeout=240):
    """Start `workers` processes of `script` as one cluster; their last stdout lines as JSON."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(workers)]}
    processes = []
    for index in range(workers):
        env = dict(os.environ)
        task = {"type": "worker", "index": index}
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": task})
        processes.append(subprocess.Popen(
            [sys.executable, "-c", script], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))
    reports = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=timeout)
            assert process.returncode == 0, err[-3000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return reports


def single_process_result():
    namespace = {}
    exec(BUILD, namespace)
    snn = namespace["build"]()
    return keras_snn.simulate(
        snn, namespace["x"], namespace["y"], batch_size=BATCH, verbose=0
    ).to_dict()


def test_two_workers_simulate_like_one_process():
    reports = run_workers(WORKER)
    single = single_process_result()
    assert single["samples"] == SAMPLES
    for report in reports:
        assert report["replicas"] == 2
        for result in (report["result"], report["again"]):
            assert result["samples"] == SAMPLES
            np.testing.assert_allclose(result["accuracy"], single["accuracy"], rtol=1e-12)
            np.testing.assert_allclose(result["synaptic_ops"], single["synaptic_ops"], rtol=1e-6)
            for name, ops in single["layer_ops"].items():
                np.testing.assert_allclose(result["layer_ops"][name], ops, rtol=1e-6)
            for name, rate in single["spike_rates"].items():
                assert result["spike_rates"][name] == pytest.approx(rate, rel=1e-6)
    assert max(single["accuracy"]) > 0  # the comparison is not between empty results
    assert single["synaptic_ops"][-1] > 0
