"""Low-latency conversion (seed 004): accuracy against T for four settings.

Trains the Conv MNIST architecture (Table C) twice on Fashion-MNIST, with
ReLU and with QReLU(levels=8), and reports SNN accuracy on the first
`--test_items` test images for: ReLU + percentile normalisation + IF; QReLU +
IF; QReLU + buffered; QReLU + buffered + spike_max=2; and the QReLU settings
again with the membrane starting at half the threshold (initial_membrane=0.5).

    python benchmarks/low_latency.py --data_dir /usr/share/datasets/fashion-mnist
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
from keras_snn.layers import QReLU  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset name.")
flags.DEFINE_string("data_dir", None, "Local IDX/.npz directory.")
flags.DEFINE_integer("epochs", 3, "ANN training epochs.")
flags.DEFINE_integer("levels", 8, "QReLU quantisation levels.")
flags.DEFINE_integer("test_items", 1000, "Test images evaluated.")
flags.DEFINE_integer("calibration", 2000, "Training images for percentile normalisation.")
flags.DEFINE_string("model_dir", None, "Cache trained ANNs here (reused when present).")
flags.DEFINE_string("synapse_dtype", None, "SpikingModel synapse_dtype, e.g. bfloat16.")

STEPS = (1, 2, 4, 8, 16, 32, 64)


def main(_):
    (x_train, y_train), (x_test, y_test) = load_dataset(FLAGS.dataset, FLAGS.data_dir)
    x_eval, y_eval = x_test[: FLAGS.test_items], y_test[: FLAGS.test_items]
    shape = x_train.shape[1:]
    print(f"machine: {common.machine()}")
    print(f"synapse_dtype: {FLAGS.synapse_dtype or 'float32 (default)'}")
    relu, _ = common.train_or_load(
        lambda: applications.conv_mnist(input_shape=shape), x_train, y_train, FLAGS.epochs,
        FLAGS.model_dir, f"{FLAGS.dataset}_conv_mnist_relu",
    )
    qrelu, _ = common.train_or_load(
        lambda: applications.conv_mnist(
            input_shape=shape, activation=lambda: QReLU(levels=FLAGS.levels, initial_bound=1.0)
        ),
        x_train, y_train, FLAGS.epochs, FLAGS.model_dir,
        f"{FLAGS.dataset}_conv_mnist_qrelu{FLAGS.levels}",
    )
    ann = {"relu": common.ann_accuracy(relu, x_eval, y_eval),
           "qrelu": common.ann_accuracy(qrelu, x_eval, y_eval)}
    bounds = [float(layer.bound) for layer in qrelu.layers if isinstance(layer, QReLU)]
    print(f"ANN accuracy: ReLU {100 * ann['relu']:.2f}%, QReLU({FLAGS.levels}) "
          f"{100 * ann['qrelu']:.2f}%; learned bounds {[round(b, 3) for b in bounds]}")
    # Options are explicit (membrane from 0 unless V0 is named, per-layer
    # ceilings), so the rows mean what they say whatever convert_model's defaults.
    settings = [
        ("ReLU + percentile, IF", relu, "relu",
         dict(calibration_data=x_train[: FLAGS.calibration], normalization="percentile",
              neuron="if", per_channel=False, initial_membrane=0.0)),
        ("QReLU, IF", qrelu, "qrelu", dict(neuron="if", initial_membrane=0.0)),
        ("QReLU, buffered", qrelu, "qrelu", dict(neuron="buffered", initial_membrane=0.0)),
        ("QReLU, buffered, spike_max=2", qrelu, "qrelu",
         dict(neuron="buffered", spike_max=2, initial_membrane=0.0)),
        ("QReLU, IF, V0=theta/2", qrelu, "qrelu", dict(neuron="if", initial_membrane=0.5)),
        ("QReLU, buffered, V0=theta/2", qrelu, "qrelu",
         dict(neuron="buffered", initial_membrane=0.5)),
        ("QReLU, buffered, spike_max=2, V0=theta/2", qrelu, "qrelu",
         dict(neuron="buffered", spike_max=2, initial_membrane=0.5)),
    ]
    print("\n| setting | ANN | " + " | ".join(f"T={t}" for t in STEPS) + " |")
    print("|---|---|" + "---|" * len(STEPS))
    for label, model, kind, options in settings:
        snn = keras_snn.convert_model(model, **options)
        snn = snn.with_options(synapse_dtype=FLAGS.synapse_dtype)
        accuracy = keras_snn.simulate(snn, x_eval, y_eval, timesteps=STEPS[-1], verbose=0).accuracy
        cells = " | ".join(f"{100 * accuracy[t - 1]:.2f}" for t in STEPS)
        print(f"| {label} | {100 * ann[kind]:.2f} | {cells} |")


if __name__ == "__main__":
    app.run(main)
