"""DIET-SNN: convert a VGG-style ANN, then train the SNN itself at T=5 (direct input).

Trains DIET-SNN's VGG6 (scaled to the dataset's image size) as a ReLU ANN,
converts it to LIF neurons (leak 1, thresholds from normalisation) with
direct (analog) input, and fine-tunes the SNN with surrogate gradients
through the time loop, learning each layer's leak and threshold, with one
dropout mask per sample held over all steps. Prints ANN accuracy, conversion
alone at T, and after fine-tuning.

    python examples/diet_snn.py                               # digits, a few minutes on a CPU
    python examples/diet_snn.py --dataset fashion_mnist --data_dir /usr/share/datasets/fashion-mnist \\
        --epochs 3 --finetune_items 10000 --finetune_epochs 1
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

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "digits", DATASETS, "Dataset.")
flags.DEFINE_string("data_dir", None, "Local IDX/.npz directory.")
flags.DEFINE_integer("epochs", 20, "ANN training epochs.")
flags.DEFINE_integer("timesteps", 5, "SNN timesteps (DIET-SNN: 5).")
flags.DEFINE_integer("finetune_epochs", 3, "Spike-based fine-tuning epochs.")
flags.DEFINE_integer("finetune_items", 0, "Training items used for fine-tuning (0: all).")
flags.DEFINE_float("finetune_learning_rate", 1e-3, "Fine-tuning learning rate.")
flags.DEFINE_float("percentile", 99.9, "Normalisation percentile (lower fires more at small T).")
flags.DEFINE_float("initial_membrane", 0.5, "Initial membrane, fraction of the threshold.")
flags.DEFINE_float("ann_dropout", 0.2, "ANN dropout before the classifier.")
flags.DEFINE_float("snn_dropout", 0.1, "SNN dropout (one mask per sample for all steps).")
flags.DEFINE_integer("test_items", 1000, "Test items evaluated.")
flags.DEFINE_string("model_dir", None, "Cache the trained ANN here (reused when present).")


def main(_):
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_dataset(FLAGS.dataset, FLAGS.data_dir)
    x_test, y_test = x_test[: FLAGS.test_items], y_test[: FLAGS.test_items]
    classes = int(y_train.max()) + 1
    path = FLAGS.model_dir and os.path.join(FLAGS.model_dir, f"{FLAGS.dataset}_vgg6.keras")
    if path and os.path.exists(path):
        ann = keras.saving.load_model(path)
    else:
        ann = applications.vgg6(x_train.shape[1:], classes, dropout=FLAGS.ann_dropout)
        ann.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
        ann.fit(x_train, y_train, epochs=FLAGS.epochs, batch_size=64, verbose=2)
        if path:
            os.makedirs(FLAGS.model_dir, exist_ok=True)
            ann.save(path)
    ann_accuracy = float((ann.predict(x_test, verbose=0).argmax(-1) == y_test).mean())

    snn = keras_snn.convert_model(
        ann, x_train[:2000], neuron="lif", timesteps=FLAGS.timesteps, percentile=FLAGS.percentile,
        initial_membrane=FLAGS.initial_membrane,
    )
    converted = keras_snn.simulate(snn, x_test, y_test, verbose=0).accuracy[-1]

    tuned = keras_snn.SpikingModel.from_config(  # same network, with SNN dropout for training
        {**snn.get_config(), "dropout": FLAGS.snn_dropout}
    )
    tuned.set_weights(snn.get_weights())
    tuned.compile(
        optimizer=keras.optimizers.Adam(FLAGS.finetune_learning_rate),
        loss=keras_snn.losses.ReadoutCrossentropy(),
        metrics=[keras_snn.metrics.StepAccuracy()],
    )
    items = FLAGS.finetune_items or len(x_train)
    tuned.fit(x_train[:items], y_train[:items], epochs=FLAGS.finetune_epochs, batch_size=64,
              verbose=2)
    finetuned = keras_snn.simulate(tuned, x_test, y_test, verbose=0).accuracy[-1]

    print(f"\nANN (VGG6, ReLU): {100 * ann_accuracy:.2f}%")
    print(f"SNN at T={FLAGS.timesteps}, conversion only: {100 * converted:.2f}%")
    print(f"SNN at T={FLAGS.timesteps}, after spike-based fine-tuning: {100 * finetuned:.2f}%")
    print("learned leak / threshold per layer:")
    for layer in tuned.network.layers:
        if getattr(layer, "neuron", None) is not None and "leak" in layer.neuron_parameters:
            leak = float(layer.neuron_parameters["leak"].numpy())
            print(f"  {layer.name}: leak {leak:.3f}, threshold {float(layer.threshold.numpy()):.3f}")


if __name__ == "__main__":
    app.run(main)
