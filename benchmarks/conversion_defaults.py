"""Which convert_model defaults to ship: old defaults, "auto" and hand-tuned options.

Trains (or loads from `--model_dir`) the repo's benchmark architectures on
Fashion-MNIST with ReLU, with QReLU(levels) (eq. 1, shift 0) and with QCFS
(QReLU shift 0.5), converts each with a grid of options, and prints top-1
accuracy (%) of the SNN after T steps on the first `--test_items` test
images. Every row names its options; "library default" is
`convert_model(model, calibration_data)` with nothing else, i.e. whatever this
version of keras_snn picks by itself, and "old defaults" is what keras_snn
picked before "auto" (IF / buffered for QReLU, per-layer ceilings, membrane
from 0, no bias calibration).

    python benchmarks/conversion_defaults.py --data_dir /usr/share/datasets/fashion-mnist \
        --model_dir /tmp/qcfs_models

`--train_only` trains and caches the ANNs without converting. Bias
calibration (on by default with calibration data) tunes the biases for one
simulation length, so rows that calibrate convert once per reported T;
`--defaults_only` compares them with `bias_calibration=False`.
"""

import itertools
import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_snn  # noqa: E402
from benchmarks import common  # noqa: E402

FLAGS = flags.FLAGS
common.define_qrelu_training_flags(test_items=1000)
flags.DEFINE_list("models", ["conv_mnist", "resnet_small"],
                  "keras_snn.applications or benchmarks.common.ARCHITECTURES names.")
flags.DEFINE_list("activations", ["relu", "qrelu", "qcfs"], "relu, qrelu (shift 0), qcfs (shift 0.5).")
flags.DEFINE_list("relu_timesteps", ["4", "8", "16", "32", "64", "128"], "T reported, ReLU models.")
flags.DEFINE_list("qrelu_timesteps", ["1", "2", "4", "8", "16", "32"], "T reported, QReLU models.")
flags.DEFINE_boolean("train_only", False, "Train and cache the ANNs, convert nothing.")
flags.DEFINE_boolean("defaults_only", False,
                     "Only the library default (and, for QReLU models, with spike_max=2).")

OLD_DEFAULTS = {"relu": dict(neuron="if", per_channel=False, initial_membrane=0.0,
                             bias_calibration=False),
                "quantized": dict(neuron="buffered", per_channel=False, initial_membrane=0.0,
                                  bias_calibration=False)}


def settings(kind):
    """(label, options) rows: library default, old defaults, then the grid."""
    if FLAGS.defaults_only:
        rows = [("library default", {}),
                ("bias_calibration=False", {"bias_calibration": False})]
        if kind != "relu":
            rows += [("library default, spike_max=2", {"spike_max": 2}),
                     ("bias_calibration=False, spike_max=2",
                      {"spike_max": 2, "bias_calibration": False})]
        return rows
    rows = [("library default", {}), ("old defaults", OLD_DEFAULTS[kind])]
    if kind == "relu":
        grid = itertools.product(("if", "buffered"), (False, True), (0.0, 0.5), (1,))
    else:
        grid = itertools.product(("if", "buffered"), (False,), (0.0, 0.5), (1, 2))
    for neuron, per_channel, membrane, spike_max in grid:
        options = dict(neuron=neuron, per_channel=per_channel, initial_membrane=membrane,
                       bias_calibration=False)
        label = f"{neuron}, per_channel={per_channel}, V0={membrane}"
        if spike_max != 1:
            options["spike_max"] = spike_max
            label += f", spike_max={spike_max}"
        rows.append((label, options))
    return rows


def main(_):
    x_train, y_train, x_calibration, x_eval, y_eval = common.load_flagged_dataset()
    print(f"machine: {common.machine()}")
    print(f"keras_snn {keras_snn.__version__}; ANNs: {FLAGS.epochs} epochs on the first "
          f"{len(x_train)} training images; {len(x_eval)} test images")
    for name, activation in itertools.product(FLAGS.models, FLAGS.activations):
        tag = common.activation_tag(activation)
        model, seconds = common.train_or_load_flagged(name, activation, x_train, y_train)
        ann = common.ann_accuracy(model, x_eval, y_eval)
        print(f"\n{name} {tag}: ANN {100 * ann:.2f}% ({seconds:.0f} s training)", flush=True)
        if FLAGS.train_only:
            continue
        kind = "relu" if activation == "relu" else "quantized"
        steps = sorted(int(t) for t in (
            FLAGS.relu_timesteps if kind == "relu" else FLAGS.qrelu_timesteps))
        print("| options | " + " | ".join(f"T={t}" for t in steps) + " |")
        print("|---|" + "---|" * len(steps))
        simulated = []  # (label, snn): a grid row equal to one of these is not rerun
        for label, options in settings(kind):
            if options.get("bias_calibration", "auto") is not False:
                # Biases are calibrated for one simulation length: convert per T.
                accuracy = {}
                for t in steps:
                    snn = keras_snn.convert_model(model, x_calibration, timesteps=t, **options)
                    accuracy[t] = keras_snn.simulate(
                        snn, x_eval, y_eval, timesteps=t, verbose=0).accuracy[t - 1]
                cells = " | ".join(
                    f"{100 * accuracy[t]:.2f} ({100 * (accuracy[t] - ann):+.1f})" for t in steps)
                print(f"| {label} (converted per T) | {cells} |", flush=True)
                continue
            snn = keras_snn.convert_model(model, x_calibration, **options)
            twin = next(
                (name for name, other in simulated if common.same_network(snn, other)), None)
            if twin is not None:
                print(f"| {label} | same network as \"{twin}\" |", flush=True)
                continue
            simulated.append((label, snn))
            accuracy = keras_snn.simulate(
                snn, x_eval, y_eval, timesteps=steps[-1], verbose=0
            ).accuracy
            cells = " | ".join(
                f"{100 * accuracy[t - 1]:.2f} ({100 * (accuracy[t - 1] - ann):+.1f})" for t in steps
            )
            print(f"| {label} | {cells} |", flush=True)


if __name__ == "__main__":
    app.run(main)
