"""keras_snn against peer ANN-to-SNN simulators, on one machine in one run.

The anytime paper's Dense MNIST and Conv MNIST ANNs (Tables B and C) are
trained once on Fashion-MNIST (or loaded from `--model_dir`); their weights
and the evaluation data go to a framework-neutral .npz (see
`write_exchange_file`), from which each peer runner in benchmarks/peers/
rebuilds the same network, converts it with its own converter and simulates
it. Every simulator runs T steps over the same test items at the same batch
size; the table reports simulation time (conversion excluded), its ratio to
T plain forward passes of the Keras ANN timed in this process, and top-1
accuracy after T steps.

Peers run in their own Python environments (they pin other framework
versions), each as a subprocess given by a flag; a peer whose flag is empty
is skipped. Environments that work on Python 3.11 (see each runner's
docstring for why the versions are pinned):

    python3 -m venv /tmp/venv-sj
    /tmp/venv-sj/bin/pip install torch==2.13.0
    /tmp/venv-sj/bin/pip install --no-deps spikingjelly==2.0.0
    /tmp/venv-sj/bin/pip install numpy tqdm loguru requests
    python3 -m venv /tmp/venv-snntb
    /tmp/venv-snntb/bin/pip install tensorflow-cpu==2.15.1 numpy==1.23.5
    /tmp/venv-snntb/bin/pip install --no-deps snntoolbox==0.6.0

(`--no-deps` keeps spikingjelly from pulling a CUDA torch and snntoolbox from
asking for the `tensorflow` distribution next to `tensorflow-cpu`.) Then:

    python benchmarks/peer_simulators.py --data_dir /usr/share/datasets/fashion-mnist \\
        --model_dir /tmp/ksnn_models \\
        --spikingjelly_python /tmp/venv-sj/bin/python \\
        --snntoolbox_python /tmp/venv-snntb/bin/python
"""

import json
import os
import subprocess
import sys
import tempfile

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_snn  # noqa: E402
from benchmarks import common  # noqa: E402
from keras_snn import applications  # noqa: E402
from keras_snn.datasets import load_dataset  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset name.")
flags.DEFINE_string("data_dir", None, "Local IDX/.npz directory (e.g. Debian's fashion-mnist).")
flags.DEFINE_string("model_dir", None, "Cache trained ANNs here (reused when present).")
flags.DEFINE_list("models", ["dense_mnist", "conv_mnist"], "Architectures.")
flags.DEFINE_integer("epochs", 3, "ANN training epochs.")
flags.DEFINE_integer("items", 1000, "Test items simulated.")
flags.DEFINE_integer("calibration", 2000, "Training images used for normalisation.")
flags.DEFINE_boolean("per_channel", True, "keras_snn IF rows: per-channel ceilings.")
flags.DEFINE_float("initial_membrane", 0.5,
                   "keras_snn IF rows: initial membrane (fraction of threshold).")
flags.DEFINE_integer("timesteps", 50, "Steps per item.")
flags.DEFINE_integer("batch_size", 100, "Batch size of every simulator.")
flags.DEFINE_integer("repeats", 2, "Timed repeats (the best is reported) after a warm-up.")
flags.DEFINE_string("spikingjelly_python", "", "Python of an environment with SpikingJelly.")
flags.DEFINE_string("snntoolbox_python", "", "Python of an environment with SNN Toolbox.")
flags.DEFINE_string("exchange_dir", None, "Where the .npz files go (default: a temp dir).")

PEERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers")


def write_exchange_file(path, model, x_test, y_test, x_calibration):
    """The ANN and the data in a form any framework can read.

    Arrays:
    - `layers`: the Keras class name of every layer in order (InputLayer
      excluded), e.g. ["Conv2D", "BatchNormalization", "ReLU", ...];
    - `config_{i:02d}`: layer i's Keras config as a JSON string;
    - `weight_{i:02d}_{j}`: layer i's j-th weight in `get_weights()` order,
      Keras layout: Conv2D kernel (kh, kw, in, out), bias (out,);
      BatchNormalization (scale=False) beta, moving_mean, moving_variance;
      Dense kernel (in, out), bias (out,). Flatten is channels-last (NHWC);
    - `x_test`, `y_test`, `x_calibration`: float32 NHWC images in [0, 1] and
      int labels.
    """
    arrays = {
        "layers": np.array([type(layer).__name__ for layer in model.layers]),
        "x_test": x_test.astype("float32"),
        "y_test": y_test.astype("int64"),
        "x_calibration": x_calibration.astype("float32"),
    }
    for i, layer in enumerate(model.layers):
        arrays[f"config_{i:02d}"] = np.array(json.dumps(layer.get_config(), default=str))
        for j, weight in enumerate(layer.get_weights()):
            arrays[f"weight_{i:02d}_{j}"] = weight
    np.savez(path, **arrays)


def keras_snn_rows(model, x_train, x_test, y_test):
    """The Keras floor and keras_snn, timed here in one interleaved run.

    Three conversions of the same ANN: the library default (only the
    calibration images and T given, as a user would call it), IF neurons at
    the setting the issue 9 table used, and that IF network with bfloat16
    synapses.
    """
    steps, batch_size = FLAGS.timesteps, FLAGS.batch_size
    batches = [tf.constant(x_test[i : i + batch_size]) for i in range(0, len(x_test), batch_size)]
    forward = tf.function(lambda batch: model(batch, training=False))
    calibration = x_train[: FLAGS.calibration]

    default = keras_snn.convert_model(model, calibration, timesteps=steps)
    if_neurons = keras_snn.convert_model(
        model, calibration, timesteps=steps, normalization="percentile",
        per_channel=FLAGS.per_channel, initial_membrane=FLAGS.initial_membrane, neuron="if",
    )

    def simulator(variant):
        """`run(batches)` that keeps the last step's readout of its latest run."""
        def run(batches):
            run.readouts = [variant(batch, return_ops=True)[0][:, -1].numpy() for batch in batches]
        return run

    labels = [
        "keras_snn, default conversion (ops counted)",
        "keras_snn, IF neurons (ops counted)",
        "keras_snn, IF neurons, bfloat16 synapses (ops counted)",
    ]
    runs = [simulator(default), simulator(if_neurons),
            simulator(if_neurons.with_options(synapse_dtype="bfloat16"))]
    floor, *seconds = common.best_times_interleaved(
        [common.forward_passes(forward, steps), *runs], batches, FLAGS.repeats
    )
    rows = [(f"Keras ANN, {steps} forward passes (the floor)", floor,
             common.ann_accuracy(model, x_test, y_test))]
    for label, run, taken in zip(labels, runs, seconds):
        # The last timed run covered every batch.
        accuracy = float((np.concatenate(run.readouts).argmax(-1) == y_test).mean())
        rows.append((label, taken, accuracy))
    return floor, rows


def peer_row(python, runner, arguments, exchange_path):
    """Run one peer in its own environment; returns its JSON report."""
    command = [
        python, os.path.join(PEERS_DIR, runner), "--exchange", exchange_path,
        "--timesteps", str(FLAGS.timesteps), "--batch_size", str(FLAGS.batch_size), *arguments,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{runner} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(_):
    (x_train, y_train), (x_test, y_test) = load_dataset(FLAGS.dataset, FLAGS.data_dir)
    x_test, y_test = x_test[: FLAGS.items], y_test[: FLAGS.items]
    exchange_dir = FLAGS.exchange_dir or tempfile.mkdtemp(prefix="ksnn_peers_")
    os.makedirs(exchange_dir, exist_ok=True)
    peers = [  # (python, runner, runner-specific arguments)
        (FLAGS.spikingjelly_python, "spikingjelly_run.py", ["--repeats", str(FLAGS.repeats)]),
        (FLAGS.snntoolbox_python, "snntoolbox_run.py",
         ["--workdir", os.path.join(exchange_dir, "snntoolbox")]),
    ]
    print(f"machine: {common.machine()}")
    print(f"protocol: {FLAGS.timesteps} steps over {len(x_test)} {FLAGS.dataset} test items, "
          f"batch {FLAGS.batch_size}, best of {FLAGS.repeats} after a warm-up")
    for name in FLAGS.models:
        model, _ = common.train_or_load(
            lambda: getattr(applications, name)(input_shape=x_train.shape[1:]),
            x_train, y_train, FLAGS.epochs, FLAGS.model_dir, f"{FLAGS.dataset}_{name}_relu",
        )
        exchange_path = os.path.join(exchange_dir, f"{name}.npz")
        write_exchange_file(exchange_path, model, x_test, y_test, x_train[: FLAGS.calibration])
        floor, rows = keras_snn_rows(model, x_train, x_test, y_test)
        notes = []
        for python, runner, arguments in peers:
            if not python:
                continue
            report = peer_row(python, runner, arguments, exchange_path)
            rows.append((report["simulator"], report["seconds"], report["accuracy"]))
            extra = {k: v for k, v in report.items() if k not in ("simulator", "seconds", "accuracy")}
            notes.append(f"{report['simulator']}: {json.dumps(extra)}")
        print(f"\n{name}\n")
        print(f"| simulator | time (s) | ratio to the floor | top-1 after {FLAGS.timesteps} steps |")
        print("|---|---|---|---|")
        for label, seconds, accuracy in rows:
            print(f"| {label} | {seconds:.2f} | {seconds / floor:.2f} | {100 * accuracy:.2f}% |")
        for note in notes:
            print(f"- {note}")


if __name__ == "__main__":
    app.run(main)
