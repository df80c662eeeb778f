"""What running a large batch as several loop calls costs in speed (`sub_batch_size`).

`predict` on arrays and `simulate` run a batch larger than the model's
`sub_batch_size` (by default from the network's size, `keras_snn.sub_batching`)
as several calls of the loop, which bounds TensorFlow's allocator pool
(benchmarks/RESULTS.md, "Memory"). This script times, in one process, the
same items at the same `batch_size` with the default and with
`sub_batch_size=batch_size` (one call per batch, as before), on random inputs
(the cost does not depend on the weights): the first call of each (tracing and
compiling included), then the best of `--repeats` interleaved calls.

    python benchmarks/sub_batch_speed.py
    python benchmarks/sub_batch_speed.py --models conv_cifar --batch_size 100 --items 200 \
        --timesteps 20
"""

import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import keras_snn  # noqa: E402
from benchmarks import common  # noqa: E402
from keras_snn import applications  # noqa: E402
from keras_snn import sub_batching  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["dense_mnist", "conv_mnist"], "keras_snn.applications names.")
flags.DEFINE_integer("batch_size", 1000, "The batch size passed to predict and simulate.")
flags.DEFINE_integer("items", 1000, "Items per call.")
flags.DEFINE_integer("timesteps", 50, "Steps per call.")
flags.DEFINE_integer("repeats", 2, "Timed calls per setting after the first.")
flags.DEFINE_list("calls", ["predict", "simulate"], "What is timed: predict, simulate.")


def main(_):
    print(f"machine: {common.machine()}")
    print(f"{FLAGS.items} random items, batch_size {FLAGS.batch_size}, {FLAGS.timesteps} steps; "
          f"seconds, first call / best of {FLAGS.repeats} interleaved\n")
    print("| model | call | default: loop calls per batch | default | one call per batch | "
          "one call / default |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for name in FLAGS.models:
        shape = (32, 32, 3) if name == "conv_cifar" else (28, 28, 1)
        ann = getattr(applications, name)(input_shape=shape)
        x = rng.random((FLAGS.items, *shape)).astype("float32")
        y = rng.integers(0, 10, FLAGS.items)
        snn = keras_snn.convert_model(ann, x[:64], timesteps=FLAGS.timesteps)
        settings = {"default": snn, "one call": snn.with_options(sub_batch_size=FLAGS.batch_size)}
        calls = sub_batching.call_count(FLAGS.batch_size, sub_batching.rows_per_call(snn))
        for call in FLAGS.calls:

            def timed(model, call=call):
                start = time.perf_counter()
                if call == "predict":
                    model.predict(x, batch_size=FLAGS.batch_size, verbose=0)
                else:
                    keras_snn.simulate(model, x, y, batch_size=FLAGS.batch_size, verbose=0)
                return time.perf_counter() - start

            first = {label: timed(model) for label, model in settings.items()}
            best = {label: float("inf") for label in settings}
            for _ in range(FLAGS.repeats):
                for label, model in settings.items():
                    best[label] = min(best[label], timed(model))
            cells = [f"{first[label]:.1f} / {best[label]:.2f}" for label in settings]
            ratio = best["one call"] / best["default"]
            print(f"| {name} | {call} | {calls} | {cells[0]} | {cells[1]} | {ratio:.2f} |",
                  flush=True)


if __name__ == "__main__":
    app.run(main)
