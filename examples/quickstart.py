"""Quickstart: train a small ReLU network, convert it to a spiking network, and
read accuracy and synaptic operations after every timestep.

Runs in about a minute on a CPU with no download (scikit-learn's bundled 8x8
digits by default):

    python examples/quickstart.py
    python examples/quickstart.py --dataset fashion_mnist --data_dir /usr/share/datasets/fashion-mnist
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import keras_snn  # noqa: E402
from keras_snn.datasets import DATASETS  # noqa: E402
from keras_snn.datasets import load_dataset  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "digits", DATASETS, "Dataset to train on.")
flags.DEFINE_string("data_dir", None, "Local directory of IDX or .npz files.")
flags.DEFINE_integer("epochs", 30, "ANN training epochs.")
flags.DEFINE_integer("timesteps", 64, "SNN simulation length.")
flags.DEFINE_integer("test_items", 1000, "Test items to simulate.")
flags.DEFINE_string("plot", "quickstart.png", "Where to write the accuracy/ops plot ('' for none).")
flags.DEFINE_integer("seed", 0, "Random seed.")


def build_ann(input_shape, classes):
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(16, 3, padding="same"),
        keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.ReLU(),
        keras.layers.AveragePooling2D(2),
        keras.layers.Conv2D(32, 3, padding="same"),
        keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.ReLU(),
        keras.layers.AveragePooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dropout(0.2),
        keras.layers.Dense(classes),
    ])


def main(_):
    keras.utils.set_random_seed(FLAGS.seed)
    (x_train, y_train), (x_test, y_test) = load_dataset(FLAGS.dataset, FLAGS.data_dir)
    x_test, y_test = x_test[: FLAGS.test_items], y_test[: FLAGS.test_items]

    ann = build_ann(x_train.shape[1:], int(y_train.max()) + 1)
    ann.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    ann.fit(x_train, y_train, epochs=FLAGS.epochs, batch_size=64, verbose=0)
    ann_accuracy = float((ann.predict(x_test, verbose=0).argmax(-1) == y_test).mean())

    snn = keras_snn.convert_model(ann, x_train[:1000], timesteps=FLAGS.timesteps)
    correct = np.zeros(FLAGS.timesteps)
    ops = np.zeros(FLAGS.timesteps)
    for start in range(0, len(x_test), 250):
        record = snn.run(x_test[start : start + 250])
        correct += (record["readout"].numpy().argmax(-1) == y_test[start : start + 250, None]).sum(0)
        ops += record["synaptic_ops"].numpy().sum(0)
    accuracy, ops = correct / len(x_test), ops / len(x_test)
    input_macs = float(record["input_macs"])

    print(f"ANN accuracy: {100 * ann_accuracy:.2f}% on {len(x_test)} {FLAGS.dataset} test items")
    print(f"first layer (analog input): {input_macs:,.0f} MACs per step")
    print(f"{'step':>5} {'SNN accuracy':>13} {'synaptic ops':>13} {'cumulative ops':>15}")
    cumulative = np.cumsum(ops)
    shown = sorted({1, 2, 4, 8, 16, 32, FLAGS.timesteps} & set(range(1, FLAGS.timesteps + 1)))
    for t in shown:
        print(f"{t:>5} {100 * accuracy[t - 1]:>12.2f}% {ops[t - 1]:>13,.0f} {cumulative[t - 1]:>15,.0f}")

    if FLAGS.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        steps = np.arange(1, FLAGS.timesteps + 1)
        spent = np.where(cumulative > 0, cumulative, np.nan)  # log axis: skip silent steps
        for axis, x_values, label in ((left, steps, "timestep"), (right, spent, "cumulative synaptic ops")):
            axis.plot(x_values, 100 * accuracy, label="SNN")
            axis.axhline(100 * ann_accuracy, color="gray", linestyle="--", label="ANN")
            axis.set_xlabel(label)
            axis.set_ylabel("top-1 accuracy (%)")
            axis.legend()
        right.set_xscale("log")
        figure.tight_layout()
        figure.savefig(FLAGS.plot, dpi=100)
        print(f"plot written to {FLAGS.plot}")


if __name__ == "__main__":
    app.run(main)
