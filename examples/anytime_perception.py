"""Anytime perception (Dutson et al.): train, sparsity fine-tune, convert, report Tables E-G.

Trains the anytime paper's Dense or Conv architecture (Tables B-D), fine-tunes
a copy with activation/weight sparsity penalties and scheduled magnitude
pruning, converts both to IF-neuron SNNs with a spiking input layer and a
membrane readout, and prints the ANN accuracy (Table F), the sparsity S_a,
S_w, S_c (Table G), and the time and synaptic operations each SNN needs to
reach 99% of its final accuracy (Table E).

    python examples/anytime_perception.py                  # digits, a few minutes on a CPU
    python examples/anytime_perception.py --dataset fashion_mnist --data_dir /usr/share/datasets/fashion-mnist --epochs 3
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

import keras_snn  # noqa: E402
from keras_snn import applications  # noqa: E402
from keras_snn.callbacks import SparsityMonitor  # noqa: E402
from keras_snn.callbacks import WeightPruning  # noqa: E402
from keras_snn.datasets import DATASETS  # noqa: E402
from keras_snn.datasets import load_dataset  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "digits", DATASETS, "Dataset.")
flags.DEFINE_string("data_dir", None, "Local IDX/.npz directory.")
flags.DEFINE_enum("model", "conv_mnist", ["dense_mnist", "conv_mnist", "conv_cifar"], "Table B, C or D.")
flags.DEFINE_integer("epochs", 20, "ANN training epochs.")
flags.DEFINE_integer("finetune_epochs", 10, "Sparsity fine-tuning epochs.")
flags.DEFINE_float("lambda_a", 0.5, "Activation sparsity penalty.")
flags.DEFINE_float("lambda_w", 0.0, "Weight L1 penalty.")
flags.DEFINE_float("final_sparsity", 0.8, "Weight sparsity at the end of the pruning schedule.")
flags.DEFINE_integer("timesteps", 64, "SNN steps simulated.")
flags.DEFINE_integer("test_items", 1000, "Test items simulated.")


def compile_model(model, learning_rate):
    model.compile(keras.optimizers.Adam(learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def summarise(name, model, x_train, x_test, y_test):
    sparsity = keras_snn.measure_sparsity(model, x_test)
    snn = keras_snn.convert_model(model, x_train[:1000], input_encoding="spiking",
                                  timesteps=FLAGS.timesteps)
    result = keras_snn.simulate(snn, x_test, y_test, verbose=0)
    threshold = 0.99 * result.accuracy[-1]
    ops = result.ops_to_accuracy(threshold)
    print(
        f"| {name} | {100 * model.evaluate(x_test, y_test, verbose=0)[1]:.2f}% | "
        f"{sparsity['activation']:.3f} | {sparsity['weight']:.3f} | {sparsity['combined']:.3f} | "
        f"{100 * result.accuracy[-1]:.2f}% | {result.time_to_accuracy(threshold)} | "
        f"{'not reached' if ops is None else f'{ops:.3g}'} |"
    )
    return ops


def main(_):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_dataset(FLAGS.dataset, FLAGS.data_dir)
    x_test, y_test = x_test[: FLAGS.test_items], y_test[: FLAGS.test_items]
    classes = int(y_train.max()) + 1
    ann = compile_model(getattr(applications, FLAGS.model)(x_train.shape[1:], classes), 1e-3)
    ann.fit(x_train, y_train, epochs=FLAGS.epochs, batch_size=64, verbose=0)

    sparse = keras_snn.add_sparsity_penalties(ann, activation=FLAGS.lambda_a, weight=FLAGS.lambda_w)
    compile_model(sparse, 3e-4)
    steps = FLAGS.finetune_epochs * -(-len(x_train) // 64)
    end = int(0.7 * steps)  # prune gradually over 70% of fine-tuning, then recover
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        0.0, FLAGS.final_sparsity, 0, end, frequency=max(1, end // 20)
    )
    history = sparse.fit(x_train, y_train, epochs=FLAGS.finetune_epochs, batch_size=64, verbose=0,
                         callbacks=[WeightPruning(schedule), SparsityMonitor(x_test[:200])])
    sparse = compile_model(keras_snn.strip_sparsity_penalties(sparse), 3e-4)
    print("S_c per fine-tuning epoch:", [round(v, 3) for v in history.history["S_c"]])

    print("\n| model | ANN top-1 | S_a | S_w | S_c | SNN top-1 | time to 99% | ops to 99% |")
    print("|---|---|---|---|---|---|---|---|")
    before = summarise("before", ann, x_train, x_test, y_test)
    after = summarise("after", sparse, x_train, x_test, y_test)
    if before and after:
        print(f"\nsynaptic operations to 99% of final accuracy: {before / after:.1f}x fewer")


if __name__ == "__main__":
    app.run(main)
