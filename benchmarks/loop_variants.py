"""First-call and steady cost of the three loop variants, over several architectures.

`keras_snn.autotune` chooses between the fused loop (each layer's neuron
update one XLA kernel inside a TensorFlow loop), the unfused loop (one
TensorFlow kernel per elementwise operation) and the XLA loop (the whole
loop compiled) by timing them on a long run; everything else (`snn(x)`,
short runs, Keras's fit/evaluate) runs the untuned variant. This script
measures what the untuned choice costs per architecture, in one process:
- the first call of each variant on a fresh model (tracing plus compiling,
  plus one batch);
- the best of `--repeats` further calls, interleaved across variants;
both with op counting on (`snn(x, return_ops=True)`), or with `--call predict`
as `snn.predict` on `--items` items (no op counting; its readout written in
place), on random inputs (the cost does not depend on the weights: every step
is dense tensor work). With
`--end_to_end_items`, also one `simulate` call as a user makes it, default
options (autotuning decides whether tuning pays for its compilations) against
a fixed fused copy.

    python benchmarks/loop_variants.py
    python benchmarks/loop_variants.py --models conv_mnist,mobilenet_v2 --batch_size 100
    python benchmarks/loop_variants.py --models mobilenet_v2 --batch_size 8 --timesteps 4 \
        --end_to_end_items 200
    python benchmarks/loop_variants.py --models conv_mnist --batch_size 250 --variants fused \
        --parallel_steps 1,2,10
    python benchmarks/loop_variants.py --models dense_mnist,conv_mnist,conv_cifar,resnet_small \
        --variants fused --parallel_steps 10,1 --call predict --timesteps 100 --items 500
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
from keras_snn import autotune  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "models", ["dense_mnist", "conv_mnist", "conv_cifar", "resnet_small", "mobilenet_v2"],
    "Architectures (mobilenet_v2: keras.applications.MobileNetV2, alpha 0.35, 64x64x3).",
)
flags.DEFINE_integer("batch_size", 100, "Batch size.")
flags.DEFINE_integer("timesteps", 50, "Steps per call.")
flags.DEFINE_integer("repeats", 3, "Timed calls per variant after the first.")
flags.DEFINE_list(
    "variants", list(autotune.VARIANTS), "Loop variants timed (keras_snn.autotune.VARIANTS)."
)
flags.DEFINE_list(
    "parallel_steps", ["10"],
    "SpikingModel parallel_steps values ('auto': the default); every variant is timed with each.",
)
flags.DEFINE_enum(
    "call", "ops", ["ops", "predict"],
    "What is timed: ops = `snn(x, return_ops=True)` on one batch; predict = `snn.predict` "
    "of --items items at --batch_size.",
)
flags.DEFINE_integer("items", 0, "Items per `--call predict` (0: one batch).")
flags.DEFINE_integer(
    "end_to_end_items", 0,
    "If > 0: also time one `simulate` of this many random items with the default options "
    "(autotuning decides whether tuning pays) against a fixed fused copy, both fresh.",
)


def build(name):
    """(ANN, input shape) for an architecture name."""
    if name == "mobilenet_v2":
        shape = (64, 64, 3)
        return keras.applications.MobileNetV2(
            input_shape=shape, alpha=0.35, weights=None, classes=10
        ), shape
    shape = (32, 32, 3) if name == "conv_cifar" else (28, 28, 1)
    return getattr(applications, name)(input_shape=shape), shape


def main(_):
    print(f"machine: {common.machine()}")
    items = FLAGS.items or FLAGS.batch_size
    timed = ("ops counted" if FLAGS.call == "ops"
             else f"`predict` of {items} items")
    print(f"batch {FLAGS.batch_size}, {FLAGS.timesteps} steps, {timed}; seconds\n")
    names = [
        (variant, None if parallel == "auto" else int(parallel))
        for variant in FLAGS.variants for parallel in FLAGS.parallel_steps
    ]
    labels = {
        n: n[0] if len(FLAGS.parallel_steps) == 1 else f"{n[0]}, parallel_steps {n[1] or 'auto'}"
        for n in names
    }
    header = ["model", "layers"]
    header += [f"{labels[n]}, first call" for n in names]
    header += [f"{labels[n]}, steady" for n in names]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rng = np.random.default_rng(0)
    for name in FLAGS.models:
        ann, shape = build(name)
        x = rng.random((max(items, FLAGS.batch_size), *shape)).astype("float32")
        snn = keras_snn.convert_model(ann, x[:64], timesteps=FLAGS.timesteps)
        batch = tf.constant(x[: FLAGS.batch_size])
        variants = {
            n: snn.with_options(parallel_steps=n[1], **autotune.VARIANTS[n[0]]) for n in names
        }

        def call(model):
            start = time.perf_counter()
            if FLAGS.call == "predict":
                model.predict(x[:items], batch_size=FLAGS.batch_size, verbose=0)
            else:
                readout, ops = model(batch, return_ops=True)
                readout.numpy(), ops.numpy()
            return time.perf_counter() - start

        first = {n: call(variants[n]) for n in names}
        steady = {n: float("inf") for n in names}
        for _ in range(FLAGS.repeats):
            for n in names:
                steady[n] = min(steady[n], call(variants[n]))
        cells = [name, str(len(snn.network.layers))]
        cells += [f"{first[n]:.1f}" for n in names]
        best = min(steady.values())
        cells += [f"{steady[n]:.3f}" + (" (best)" if steady[n] == best else "") for n in names]
        print("| " + " | ".join(cells) + " |", flush=True)
        if FLAGS.end_to_end_items:
            end_to_end(ann, shape, rng)


def end_to_end(ann, shape, rng):
    """One `simulate` call as a user makes it: default options against a fixed fused copy."""
    x = rng.random((FLAGS.end_to_end_items, *shape)).astype("float32")
    y = rng.integers(0, 10, len(x))
    snn = keras_snn.convert_model(ann, x[:64], timesteps=FLAGS.timesteps)
    fused = snn.with_options(**autotune.VARIANTS["fused"])
    seconds, results = {}, {}
    for label, model in (("default options", snn), ("fixed fused", fused)):
        start = time.perf_counter()
        results[label] = keras_snn.simulate(model, x, y, batch_size=FLAGS.batch_size, verbose=0)
        seconds[label] = time.perf_counter() - start
    same = np.array_equal(results["default options"].accuracy, results["fixed fused"].accuracy)
    print(f"\n  simulate of {len(x)} items at batch {FLAGS.batch_size}: default options "
          f"{seconds['default options']:.1f} s, fixed fused {seconds['fixed fused']:.1f} s; "
          f"same accuracy per step: {same}; loop_choices: {snn.loop_choices}\n", flush=True)


if __name__ == "__main__":
    app.run(main)
