"""Simulate a spiking network on several processes or hosts (MultiWorkerMirroredStrategy).

Two stages. `prepare` trains a small ANN, converts it and saves the spiking
model once, so that every worker simulates exactly the same weights (workers
that trained or converted on their own could differ in round-off, e.g. on
hosts with different CPUs). `simulate` runs on every worker: it loads the
saved model inside `MultiWorkerMirroredStrategy`'s scope and calls
`keras_snn.simulate`; each worker takes its share of every batch and all of
them print the accuracy and synaptic operations of the whole test set.

On one machine, as N local worker processes (picks free ports on 127.0.0.1):

    python examples/distributed_simulation.py --local_workers 2

On a real cluster, prepare once and copy the model to every host (or put it
on a shared filesystem), then start the same command on every host with its
own TF_CONFIG (the same "cluster" everywhere, "index" 0..N-1):

    python examples/distributed_simulation.py --stage prepare --model_path /shared/snn.keras
    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}' \\
        python examples/distributed_simulation.py --stage simulate --model_path /shared/snn.keras

Every worker must read the same test data (here: the same dataset files).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import keras_snn  # noqa: E402
from keras_snn.datasets import DATASETS  # noqa: E402
from keras_snn.datasets import load_dataset  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("stage", None, ["prepare", "simulate"],
                  "Run one stage only (default: both, on --local_workers processes).")
flags.DEFINE_integer("local_workers", 2, "Worker processes to start on this machine.")
flags.DEFINE_string("model_path", None, "Where the converted model is saved (.keras).")
flags.DEFINE_enum("dataset", "digits", DATASETS, "Dataset to train and test on.")
flags.DEFINE_string("data_dir", None, "Local directory of IDX or .npz files.")
flags.DEFINE_integer("epochs", 20, "ANN training epochs.")
flags.DEFINE_integer("timesteps", 32, "SNN simulation length.")
flags.DEFINE_integer("batch_size", 128, "Global batch size (split over the workers).")
flags.DEFINE_integer("test_items", 1000, "Test items to simulate.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("timeout", 900, "Seconds to wait for the local workers.")


def prepare(model_path):
    keras.utils.set_random_seed(FLAGS.seed)
    (x_train, y_train), (x_test, y_test) = load_dataset(FLAGS.dataset, FLAGS.data_dir)
    ann = keras.Sequential([
        keras.Input(x_train.shape[1:]),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(int(y_train.max()) + 1),
    ])
    ann.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    ann.fit(x_train, y_train, epochs=FLAGS.epochs, batch_size=64, verbose=0)
    snn = keras_snn.convert_model(ann, x_train[:1000], timesteps=FLAGS.timesteps)
    snn.save(model_path)
    x_test, y_test = x_test[: FLAGS.test_items], y_test[: FLAGS.test_items]
    accuracy = float((ann.predict(x_test, verbose=0).argmax(-1) == y_test).mean())
    print(f"ANN accuracy {100 * accuracy:.2f}% on {len(x_test)} test items; "
          f"converted model saved to {model_path}")


def simulate(model_path):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    _, (x_test, y_test) = load_dataset(FLAGS.dataset, FLAGS.data_dir)
    x_test, y_test = x_test[: FLAGS.test_items], y_test[: FLAGS.test_items]
    with strategy.scope():
        snn = keras.saving.load_model(model_path)
        result = keras_snn.simulate(snn, x_test, y_test, batch_size=FLAGS.batch_size, verbose=0)
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    print(json.dumps({
        "worker": task.get("index", 0),
        "replicas": strategy.num_replicas_in_sync,
        "samples": result.samples,
        "final_accuracy": float(result.accuracy[-1]),
        "cumulative_ops": float(result.cumulative_ops[-1]),
    }))


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_local_workers(model_path):
    """Start --local_workers copies of the simulate stage as one cluster on 127.0.0.1."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(FLAGS.local_workers)]}
    argv = [sys.executable, os.path.abspath(__file__), "--stage", "simulate",
            "--model_path", model_path, "--dataset", FLAGS.dataset,
            "--batch_size", str(FLAGS.batch_size), "--test_items", str(FLAGS.test_items)]
    if FLAGS.data_dir:
        argv += ["--data_dir", FLAGS.data_dir]
    workers = []
    for index in range(FLAGS.local_workers):
        task = {"type": "worker", "index": index}
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
        workers.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True))
    try:
        for worker in workers:
            out, _ = worker.communicate(timeout=FLAGS.timeout)
            if worker.returncode:
                raise SystemExit(f"a worker failed (exit code {worker.returncode}).")
            print(out.strip().splitlines()[-1])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()


def main(_):
    if FLAGS.stage == "prepare":
        prepare(FLAGS.model_path or "snn.keras")
    elif FLAGS.stage == "simulate":
        if not FLAGS.model_path:
            raise SystemExit("--stage simulate needs --model_path (from --stage prepare).")
        simulate(FLAGS.model_path)
    else:
        with tempfile.TemporaryDirectory() as directory:
            model_path = FLAGS.model_path or os.path.join(directory, "snn.keras")
            prepare(model_path)
            run_local_workers(model_path)


if __name__ == "__main__":
    app.run(main)
