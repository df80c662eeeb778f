"""Where the simulator's time could still go: the products of spike-fed layers.

For every spike-fed weighted layer of an architecture (every Conv2D and Dense
after the first; the first layer's analog current is computed once per call)
the script times, on binary spike tensors of 20% density:

- step by step: T products at batch B, what the time loop does;
- layer by layer: one product over the T*B stacked steps, what an
  "all timesteps per layer" schedule would do;
- both in bfloat16 (what `SpikingModel(synapse_dtype="bfloat16")` runs);
- for Dense layers, an int8 x int8 -> int32 matmul (TensorFlow has no int8
  convolution on CPU).

It answers whether a layer-by-layer schedule or int8 spikes would beat the
step-by-step loop, before anyone builds them.

    python benchmarks/kernel_throughput.py
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import common  # noqa: E402
from keras_snn import applications  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["conv_mnist", "conv_cifar"], "Architectures.")
flags.DEFINE_integer("timesteps", 50, "Steps.")
flags.DEFINE_integer("batch_size", 100, "Batch size per step.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (the best is reported) after a warm-up.")

SHAPES = {"dense_mnist": (28, 28, 1), "conv_mnist": (28, 28, 1), "conv_cifar": (32, 32, 3)}


def best_time(fn):
    return common.best_time(fn, FLAGS.repeats)


def product(layer):
    """The layer's weight product as a function of (inputs, kernel)."""
    if isinstance(layer, keras.layers.Conv2D):
        return tf.function(lambda x, w: tf.nn.conv2d(x, w, layer.strides, layer.padding.upper()))
    return tf.function(lambda x, w: tf.matmul(x, w))


def int8_matmul():
    # BatchMatMulV3 is TensorFlow's only CPU kernel taking int8 operands.
    return tf.function(lambda x, w: tf.raw_ops.BatchMatMulV3(x=x, y=w, Tout=tf.int32))


def main(_):
    print(f"machine: {common.machine()}")
    print(f"{FLAGS.timesteps} steps, batch {FLAGS.batch_size}, best of {FLAGS.repeats}; seconds\n")
    print("| model | layer | input | step by step | layer by layer | step by step, bf16 | "
          "layer by layer, bf16 | step by step, int8 |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    steps, batch = FLAGS.timesteps, FLAGS.batch_size
    for name in FLAGS.models:
        ann = getattr(applications, name)(input_shape=SHAPES[name])
        weighted = [layer for layer in ann.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
        for layer in weighted[1:]:
            shape = tuple(layer.input.shape[1:])
            spikes = (rng.random((batch, *shape)) < 0.2).astype("float32")
            stacked = np.concatenate([spikes] * steps)
            kernel = layer.kernel.numpy()
            fn = product(layer)
            row = []
            for dtype in (tf.float32, tf.bfloat16):
                x, xs, w = (tf.cast(a, dtype) for a in (spikes, stacked, kernel))

                def step_by_step():
                    for _ in range(steps):
                        out = fn(x, w)
                    out.numpy()

                row += [best_time(step_by_step), best_time(lambda: fn(xs, w).numpy())]
            int8 = float("nan")
            if isinstance(layer, keras.layers.Dense):
                x8 = tf.cast(spikes, tf.int8)
                w8 = tf.cast(tf.clip_by_value(tf.round(kernel * 64), -127, 127), tf.int8)
                fn8 = int8_matmul()

                def int8_steps():
                    for _ in range(steps):
                        out = fn8(x8, w8)
                    out.numpy()

                int8 = best_time(int8_steps)
            print(
                f"| {name} | {layer.name} | {'x'.join(map(str, shape))} | "
                + " | ".join(f"{t:.3f}" for t in row) + f" | {int8:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
