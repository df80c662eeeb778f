"""Spiking max pooling: cumulative counts against SNN Toolbox's gating and a max over currents.

Trains (or loads) the anytime paper's Conv MNIST (Table C) with MaxPooling2D in
place of average pooling, converts it with default options, and runs the same
spiking network with three forms of its two max-pooling layers:

- `cumulative` (keras_snn): the output's spike count is the window max of the
  inputs' counts; each step emits its increase (exact rate form).
- `gating` (SNN Toolbox's `SpikeMaxPooling2D`, temporal_mean_rate backend):
  accumulate the inputs' spikes, pick the window's winner by accumulated count
  (`max_pool_with_argmax`, ties to the first), pass on only the winner's spike.
- `currents`: max-pool the previous layer's input currents and put the neuron
  after the pooling (`relu(max z) == max relu(z)` holds for the currents of one
  step, not for their spike trains).

    python benchmarks/max_pooling_gating.py --data_dir /usr/share/datasets/fashion-mnist \
        --model_dir /tmp/ksnn_models
"""

import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_snn  # noqa: E402
from benchmarks import common  # noqa: E402
from keras_snn import applications  # noqa: E402
from keras_snn import layers  # noqa: E402
from keras_snn import neurons  # noqa: E402
from keras_snn.datasets import load_dataset  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Local IDX/.npz directory (e.g. Debian's fashion-mnist).")
flags.DEFINE_integer("epochs", 2, "ANN training epochs.")
flags.DEFINE_integer("test_items", 1000, "Test images evaluated.")
flags.DEFINE_integer("calibration", 2000, "Training images used for normalisation.")
flags.DEFINE_list("timesteps", ["10", "25", "50", "100"], "T values reported.")
flags.DEFINE_string("model_dir", None, "Cache trained ANNs here (reused when present).")


class ToolboxGatedMaxPooling2D(layers.SpikingMaxPooling2D):
    """SNN Toolbox's gate: pass the spike of the input with the highest count so far."""

    def fire(self, current, states):
        counts, maxima = states
        counts = counts + current
        _, winners = tf.nn.max_pool_with_argmax(
            counts, self.pool_size, self.strides, self.padding.upper(),
            include_batch_in_index=True,
        )
        gate = tf.scatter_nd(
            tf.reshape(winners, (-1, 1)), tf.ones(tf.size(winners)), [tf.size(counts, tf.int64)]
        )
        gated = current * tf.reshape(gate, tf.shape(counts))
        return self.pool(gated), (counts, maxima)


def rebuild(network, variant):
    """The converted chain network with its max-pooling layers replaced."""
    inputs = keras.Input(network.inputs[0].shape[1:])
    x, chain = inputs, network.layers[1:]
    copies = []
    for index, layer in enumerate(chain):
        following = chain[index + 1] if index + 1 < len(chain) else None
        config = layer.get_config()
        if isinstance(layer, layers.SpikingMaxPooling2D) and variant == "gating":
            new = ToolboxGatedMaxPooling2D.from_config(config)
        elif variant == "currents" and isinstance(following, layers.SpikingMaxPooling2D):
            config["neuron"] = None  # the conv passes its current to the pooling
            new = type(layer).from_config(config)
            copies.append((layer, new))
            x = new(x)
            x = layers.SpikingMaxPooling2D.from_config(
                {**following.get_config(), "cumulative": False, "name": following.name + "_cur"}
            )(x)
            # An IF neuron after the pooling: average pooling of size 1 is the identity.
            x = layers.SpikingAveragePooling2D(
                1, neuron=neurons.deserialize(layer.get_config()["neuron"]),
                name=layer.name + "_neuron",
            )(x)
            continue
        elif variant == "currents" and isinstance(layer, layers.SpikingMaxPooling2D):
            continue  # already replaced together with the layer before it
        else:
            new = type(layer).from_config(config)
        copies.append((layer, new))
        x = new(x)
    rebuilt = keras.Model(inputs, x)
    for old, new in copies:
        new.set_weights(old.get_weights())
    return rebuilt


def main(_):
    (x_train, y_train), (x_test, y_test) = load_dataset("fashion_mnist", FLAGS.data_dir)
    x_eval, y_eval = x_test[: FLAGS.test_items], y_test[: FLAGS.test_items]
    steps = sorted(int(t) for t in FLAGS.timesteps)
    print(f"machine: {common.machine()}")
    model, seconds = common.train_or_load(
        lambda: common.with_max_pooling(applications.conv_mnist(input_shape=x_train.shape[1:])),
        x_train, y_train, FLAGS.epochs, FLAGS.model_dir, "fashion_mnist_conv_mnist_relu_maxpool",
    )
    ann = common.ann_accuracy(model, x_eval, y_eval)
    # The options that were the defaults when RESULTS.md's table was made.
    snn = keras_snn.convert_model(
        model, x_train[: FLAGS.calibration], neuron="if", per_channel=False,
        initial_membrane=0.0,
    )
    print(f"conv_mnist with MaxPooling2D: ANN {100 * ann:.2f}% ({seconds:.0f} s training)")
    header = " | ".join(f"T={t}" for t in steps)
    print(f"| max pooling | {header} | ops/sample to T={steps[-1]} | seconds |")
    print("|---" * (len(steps) + 3) + "|")
    for variant in ("cumulative", "gating", "currents"):
        network = snn.network if variant == "cumulative" else rebuild(snn.network, variant)
        model_variant = keras_snn.SpikingModel(network, timesteps=steps[-1])
        keras_snn.simulate(model_variant, x_eval[:8], y_eval[:8], timesteps=steps[-1], verbose=0)
        start = time.perf_counter()
        result = keras_snn.simulate(model_variant, x_eval, y_eval, timesteps=steps[-1], verbose=0)
        seconds = time.perf_counter() - start
        cells = " | ".join(
            f"{100 * result.accuracy[t - 1]:.2f}% ({100 * (result.accuracy[t - 1] - ann):+.2f})"
            for t in steps
        )
        ops = float(np.sum(result.synaptic_ops))
        print(f"| {variant} | {cells} | {ops:.3g} | {seconds:.1f} |")


if __name__ == "__main__":
    app.run(main)
