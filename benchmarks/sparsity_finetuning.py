"""Sparsity fine-tuning (anytime paper section D, Tables E-G) on the Conv MNIST net.

Trains (or loads from --model_dir) the ReLU Conv MNIST ANN, then fine-tunes a
copy with the mean-L1 activation and weight penalties and scheduled magnitude
pruning, and reports, before and after: ANN accuracy (Table F), S_a, S_w, S_c
(Table G), and the SNN's time and cumulative synaptic ops to reach 99% of its
own final accuracy (Table E).

    python benchmarks/sparsity_finetuning.py --data_dir /usr/share/datasets/fashion-mnist
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow_model_optimization as tfmot  # noqa: E402

import keras_snn  # noqa: E402
from benchmarks import common  # noqa: E402
from keras_snn import applications  # noqa: E402
from keras_snn.callbacks import WeightPruning  # noqa: E402
from keras_snn.datasets import load_dataset  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset name.")
flags.DEFINE_string("data_dir", None, "Local IDX/.npz directory.")
flags.DEFINE_integer("epochs", 3, "ANN training epochs (when not cached).")
flags.DEFINE_integer("finetune_epochs", 2, "Sparsity fine-tuning epochs.")
flags.DEFINE_float("lambda_a", 0.5, "Activation penalty (mean L1).")
flags.DEFINE_float("lambda_w", 0.0, "Weight penalty (mean L1).")
flags.DEFINE_float("final_sparsity", 0.8, "Weight sparsity reached by the pruning schedule.")
flags.DEFINE_float("learning_rate", 3e-4, "Fine-tuning learning rate.")
flags.DEFINE_integer("test_items", 1000, "Test images evaluated.")
flags.DEFINE_integer("timesteps", 100, "SNN steps simulated.")
flags.DEFINE_string("model_dir", None, "Cache trained ANNs here (reused when present).")


def report(name, model, x_train, x_eval, y_eval):
    ann = common.ann_accuracy(model, x_eval, y_eval)
    sparsity = keras_snn.measure_sparsity(model, x_eval)
    snn = keras_snn.convert_model(  # the defaults when RESULTS.md's table was made
        model, x_train[:2000], normalization="percentile", neuron="if", per_channel=False,
        initial_membrane=0.0,
    )
    result = keras_snn.simulate(snn, x_eval, y_eval, timesteps=FLAGS.timesteps, verbose=0)
    threshold = 0.99 * result.accuracy[-1]
    return {
        "name": name, "ann": ann, **sparsity, "snn": result.accuracy[-1],
        "threshold": threshold, "time": result.time_to_accuracy(threshold),
        "ops": result.ops_to_accuracy(threshold), "total_ops": result.cumulative_ops[-1],
    }


def main(_):
    (x_train, y_train), (x_test, y_test) = load_dataset(FLAGS.dataset, FLAGS.data_dir)
    x_eval, y_eval = x_test[: FLAGS.test_items], y_test[: FLAGS.test_items]
    print(f"machine: {common.machine()}")
    base, _ = common.train_or_load(
        lambda: applications.conv_mnist(input_shape=x_train.shape[1:]), x_train, y_train,
        FLAGS.epochs, FLAGS.model_dir, f"{FLAGS.dataset}_conv_mnist_relu",
    )
    sparse = keras_snn.add_sparsity_penalties(base, activation=FLAGS.lambda_a, weight=FLAGS.lambda_w)
    sparse.compile(
        optimizer=keras.optimizers.Adam(FLAGS.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    steps = FLAGS.finetune_epochs * -(-len(x_train) // 128)
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        0.0, FLAGS.final_sparsity, begin_step=0, end_step=int(0.7 * steps), frequency=50
    )
    with common.Timer() as timer:
        sparse.fit(x_train, y_train, epochs=FLAGS.finetune_epochs, batch_size=128, verbose=2,
                   callbacks=[WeightPruning(schedule)])
    sparse = keras_snn.strip_sparsity_penalties(sparse)
    rows = [report("before", base, x_train, x_eval, y_eval),
            report("after", sparse, x_train, x_eval, y_eval)]
    print(f"\nfine-tuning: {FLAGS.finetune_epochs} epochs ({timer.seconds:.0f} s), "
          f"lambda_a={FLAGS.lambda_a}, lambda_w={FLAGS.lambda_w}, "
          f"pruning 0 -> {FLAGS.final_sparsity}, T={FLAGS.timesteps}")
    print("\n| model | ANN top-1 (F) | S_a | S_w | S_c (G) | SNN top-1 at T | 99% threshold | time to it (E) | ops to it (E) | ops over T |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ops = "not reached" if r["ops"] is None else f"{r['ops']:.3g}"
        print(
            f"| {r['name']} | {100 * r['ann']:.2f}% | {r['activation']:.3f} | {r['weight']:.3f} | "
            f"{r['combined']:.3f} | {100 * r['snn']:.2f}% | {100 * r['threshold']:.2f}% | "
            f"{r['time']} | {ops} | {r['total_ops']:.3g} |"
        )
    if rows[0]["ops"] and rows[1]["ops"]:
        print(f"\nops to threshold reduced {rows[0]['ops'] / rows[1]['ops']:.1f}x; "
              f"ANN accuracy change {100 * (rows[1]['ann'] - rows[0]['ann']):+.2f} points")


if __name__ == "__main__":
    app.run(main)
