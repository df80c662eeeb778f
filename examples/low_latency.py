"""Low-latency conversion (seed 004): QReLU training, buffered and multi-bit spikes, T=8.

Trains a network with QReLU(levels=8) activations (a ResNet with weighted
adds by default; `--model conv_mnist` for the anytime paper's Table C net),
converts it from its learned bounds (no calibration data), and prints accuracy
at T = 1..16 for binary buffered spikes and for 2-bit spikes at half the steps.

    python examples/low_latency.py                       # digits, a few minutes on a CPU
    python examples/low_latency.py --dataset fashion_mnist --data_dir /usr/share/datasets/fashion-mnist
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import keras_snn  # noqa: E402
from keras_snn import applications  # noqa: E402
from keras_snn.datasets import DATASETS  # noqa: E402
from keras_snn.datasets import load_dataset  # noqa: E402
from keras_snn.layers import QReLU  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "digits", DATASETS, "Dataset.")
flags.DEFINE_string("data_dir", None, "Local IDX/.npz directory.")
flags.DEFINE_enum("model", "resnet_small", ["resnet_small", "conv_mnist"], "Architecture.")
flags.DEFINE_integer("levels", 8, "QReLU quantisation levels.")
flags.DEFINE_integer("epochs", 15, "Training epochs.")
flags.DEFINE_float("initial_membrane", 0.5, "Initial membrane as a fraction of the threshold.")
flags.DEFINE_integer("test_items", 1000, "Test items simulated.")


def main(_):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_dataset(FLAGS.dataset, FLAGS.data_dir)
    x_test, y_test = x_test[: FLAGS.test_items], y_test[: FLAGS.test_items]
    ann = getattr(applications, FLAGS.model)(
        input_shape=x_train.shape[1:], classes=int(y_train.max()) + 1,
        activation=lambda: QReLU(levels=FLAGS.levels, initial_bound=1.0),
    )
    ann.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    ann.fit(x_train, y_train, epochs=FLAGS.epochs, batch_size=64, verbose=0)
    ann_accuracy = ann.evaluate(x_test, y_test, verbose=0)[1]
    print(f"QReLU({FLAGS.levels}) {FLAGS.model} ANN accuracy: {100 * ann_accuracy:.2f}%")

    steps = 2 * FLAGS.levels
    for spike_max in (1, 2):
        snn = keras_snn.convert_model(  # ceilings from the learned bounds; buffered neurons
            ann, spike_max=spike_max, initial_membrane=FLAGS.initial_membrane, timesteps=steps
        )
        accuracy = keras_snn.simulate(snn, x_test, y_test, verbose=0).accuracy
        row = "  ".join(f"T={t}: {100 * accuracy[t - 1]:.2f}%" for t in (1, 2, 4, 8, 16))
        print(f"buffered, spike_max={spike_max}:  {row}")


if __name__ == "__main__":
    app.run(main)
