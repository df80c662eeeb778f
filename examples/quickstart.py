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
    result = keras_snn.simulate(snn, x_test, y_test, verbose=0)

    print(f"ANN accuracy: {100 * ann_accuracy:.2f}% on {len(x_test)} {FLAGS.dataset} test items")
    print(f"first layer (analog input): {result.input_macs:,.0f} MACs per step")
    print(f"{'step':>5} {'SNN accuracy':>13} {'synaptic ops':>13} {'cumulative ops':>15}")
    shown = sorted({1, 2, 4, 8, 16, 32, FLAGS.timesteps} & set(range(1, FLAGS.timesteps + 1)))
    for t in shown:
        print(
            f"{t:>5} {100 * result.accuracy[t - 1]:>12.2f}% {result.synaptic_ops[t - 1]:>13,.0f} "
            f"{result.cumulative_ops[t - 1]:>15,.0f}"
        )
    within_one_point = ann_accuracy - 0.01
    print(
        f"reaches ANN - 1 point at step {result.time_to_accuracy(within_one_point)} "
        f"after {result.ops_to_accuracy(within_one_point) or float('nan'):,.0f} synaptic ops"
    )
    if FLAGS.plot:
        print(f"plot written to {result.plot(FLAGS.plot)}")

if __name__ == "__main__":
    app.run(main)
