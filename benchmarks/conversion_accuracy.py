"""Conversion accuracy against T: ReLU ANN -> IF SNN with percentile normalisation.

Trains the anytime paper's Conv MNIST architecture (Table C, BN + ReLU) and a
small functional ResNet (BN + Add) on Fashion-MNIST, converts each with
convert_model, and prints ANN and SNN top-1 accuracy on the first
`--test_items` test images at several T.

    python benchmarks/conversion_accuracy.py --data_dir /usr/share/datasets/fashion-mnist

`--pooling max` trains the same architectures with MaxPooling in place of
average pooling (the spiking max pool of cumulative counts).
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_snn  # noqa: E402
from benchmarks import common  # noqa: E402
from keras_snn import applications  # noqa: E402
from keras_snn.datasets import load_dataset  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset name.")
flags.DEFINE_string("data_dir", None, "Local IDX/.npz directory (e.g. Debian's fashion-mnist).")
flags.DEFINE_integer("epochs", 3, "ANN training epochs.")
flags.DEFINE_integer("test_items", 1000, "Test images evaluated.")
flags.DEFINE_integer("calibration", 2000, "Training images used for normalisation.")
flags.DEFINE_list("timesteps", ["10", "25", "50", "100", "200"], "T values reported.")
flags.DEFINE_list(
    "models", ["conv_mnist", "resnet_small"],
    "Architectures: keras_snn.applications names or benchmarks.common.ARCHITECTURES "
    "(inverted_residual: a small MobileNetV2-style net).",
)
flags.DEFINE_float("percentile", 99.99, "Normalisation percentile.")
flags.DEFINE_boolean("per_channel", False, "Per-channel ceilings.")
flags.DEFINE_float("initial_membrane", 0.0, "Initial membrane (fraction of threshold).")
flags.DEFINE_string("neuron", "if", "convert_model neuron (the recorded tables used IF).")
flags.DEFINE_string("model_dir", None, "Cache trained ANNs here (reused when present).")
flags.DEFINE_string("synapse_dtype", None, "SpikingModel synapse_dtype, e.g. bfloat16.")
flags.DEFINE_enum("pooling", "average", ["average", "max"], "Pooling of the architectures.")
flags.DEFINE_string("normalization", "percentile", "convert_model normalization.")
flags.DEFINE_boolean(
    "library_defaults", False,
    "Convert with convert_model's own defaults (only calibration data passed); the option "
    "flags above are then ignored.",
)


def build(name, input_shape):
    builder = common.ARCHITECTURES.get(name) or getattr(applications, name)
    model = builder(input_shape=input_shape)
    return common.with_max_pooling(model) if FLAGS.pooling == "max" else model


def main(_):
    (x_train, y_train), (x_test, y_test) = load_dataset(FLAGS.dataset, FLAGS.data_dir)
    x_eval, y_eval = x_test[: FLAGS.test_items], y_test[: FLAGS.test_items]
    steps = sorted(int(t) for t in FLAGS.timesteps)
    print(f"machine: {common.machine()}")
    print(f"synapse_dtype: {FLAGS.synapse_dtype or 'float32 (default)'}")
    for name in FLAGS.models:
        model, seconds = common.train_or_load(
            lambda: build(name, x_train.shape[1:]),
            x_train, y_train, FLAGS.epochs, FLAGS.model_dir,
            f"{FLAGS.dataset}_{name}_relu" + ("_maxpool" if FLAGS.pooling == "max" else ""),
        )
        ann = common.ann_accuracy(model, x_eval, y_eval)
        if FLAGS.library_defaults:
            snn = keras_snn.convert_model(model, x_train[: FLAGS.calibration])
        else:
            snn = keras_snn.convert_model(
                model, x_train[: FLAGS.calibration], normalization=FLAGS.normalization,
                percentile=FLAGS.percentile, per_channel=FLAGS.per_channel,
                initial_membrane=FLAGS.initial_membrane, neuron=FLAGS.neuron,
            )
        snn = snn.with_options(synapse_dtype=FLAGS.synapse_dtype)
        accuracy = keras_snn.simulate(snn, x_eval, y_eval, timesteps=steps[-1], verbose=0).accuracy
        options = "convert_model defaults" if FLAGS.library_defaults else (
            f"normalization={FLAGS.normalization}, per_channel={FLAGS.per_channel}, "
            f"initial_membrane={FLAGS.initial_membrane}, neuron={FLAGS.neuron}"
        )
        print(
            f"\n{name}: {FLAGS.epochs} epochs ({seconds:.0f} s training), ANN {100 * ann:.2f}%, "
            f"pooling={FLAGS.pooling}, {options}"
        )
        print("| T | SNN top-1 | ANN top-1 | SNN - ANN |")
        print("|---|---|---|---|")
        for t in steps:
            snn_t = accuracy[t - 1]
            print(f"| {t} | {100 * snn_t:.2f}% | {100 * ann:.2f}% | {100 * (snn_t - ann):+.2f} |")


if __name__ == "__main__":
    app.run(main)
