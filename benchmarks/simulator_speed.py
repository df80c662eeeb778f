"""Simulator speed on the anytime paper's Table A protocol: 50 steps over 1000 items.

For each architecture (Dense MNIST, Conv MNIST, Conv CIFAR) the script times,
in one process on one machine:
- the floor: 50 plain forward passes of the same Keras ANN over the same items
  (one compiled forward function called 50 times per batch);
- the SNN (converted from that ANN with the library's default options, or
  `--neuron if` for the IF networks of earlier tables) with op counting on
  and off, `simulate` over the same items (ops and accuracy summed in the
  loop) with the loop variant autotuning chose (`keras_snn.autotune`; the
  script runs simulate until it has chosen and prints the choice) and with
  the untuned fused loop, the neuron updates unfused (`fused_neurons=False`, the loop before
  issue 15), with XLA, with bfloat16 synapses (`synapse_dtype="bfloat16"`),
  at several batch sizes;
- for reference, 50 passes of the ANN under Keras's mixed_bfloat16 policy;
and prints each time and its ratio to the floor. Speed does not depend on the
weights (every step is dense tensor work), so the ANNs are untrained and
calibrated on random inputs; the timed inputs are random images.

    python benchmarks/simulator_speed.py
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_snn  # noqa: E402
from benchmarks import common  # noqa: E402
from keras_snn import applications  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["dense_mnist", "conv_mnist", "conv_cifar"], "Architectures.")
flags.DEFINE_integer("items", 1000, "Items simulated.")
flags.DEFINE_integer("timesteps", 50, "Steps per item.")
flags.DEFINE_list("batch_sizes", ["100", "500"], "Batch sizes.")
flags.DEFINE_boolean("xla", True, "Also time XLA-compiled loops.")
flags.DEFINE_boolean(
    "bfloat16", True, "Also time bfloat16 synapses and the ANN under mixed_bfloat16."
)
flags.DEFINE_integer("repeats", 2, "Timed repeats (the best is reported) after a warm-up.")
flags.DEFINE_string("neuron", "auto", "convert_model's neuron (auto: the library default).")
flags.DEFINE_integer("max_tuning_calls", 20, "Most simulate calls spent on autotuning.")
flags.DEFINE_boolean(
    "tune", True, "Let autotuning choose the loop of the `simulate` column before timing it."
)

SHAPES = {"dense_mnist": (28, 28, 1), "conv_mnist": (28, 28, 1), "conv_cifar": (32, 32, 3)}


def bfloat16_copy(model):
    """The same ANN with every layer under Keras's mixed_bfloat16 policy.

    Layer configs carry their own dtype policy, so the global policy would
    not reach a clone; each layer is rebuilt from its config with the policy.
    """
    copy = keras.models.clone_model(
        model,
        clone_function=lambda layer: type(layer).from_config(
            {**layer.get_config(), "dtype": "mixed_bfloat16"}
        ),
    )
    copy.set_weights(model.get_weights())
    return copy


def tune(snn, x, labels, batch_size):
    """Run `simulate` until autotuning has chosen a loop variant; print the choice.

    The timed `simulate` column then runs on the chosen variant (the choice
    is kept with the model per batch size and steps).
    """
    for call in range(FLAGS.max_tuning_calls):
        keras_snn.simulate(snn, x, labels, batch_size=batch_size, verbose=0)
        choices = [c for k, c in snn.loop_choices.items() if f"batch {batch_size}," in k]
        if choices and choices[0]["chosen"]:
            seconds = ", ".join(f"{n} {t:.3f} s" for n, t in choices[0]["seconds"].items())
            print(f"autotune, batch {batch_size}: {choices[0]['chosen']} ({seconds} per batch)"
                  f" after {call + 1} simulate calls", flush=True)
            return
    # Tuning starts once its compilations cost at most autotune.TUNING_BUDGET
    # of the work expected (keras_snn.autotune): small networks need many calls.
    print(f"autotune, batch {batch_size}: not tuned after {FLAGS.max_tuning_calls} simulate "
          "calls (--max_tuning_calls)", flush=True)


def main(_):
    print(f"machine: {common.machine()}")
    print(f"protocol: {FLAGS.timesteps} steps over {FLAGS.items} items, best of {FLAGS.repeats}\n")
    columns = [
        "model", "batch", "50 ANN passes (s)", "SNN, ops off (s)", "ratio", "SNN, ops on (s)",
        "ratio", "op counting cost", "simulate, autotuned (s)", "ratio",
        "simulate, fused (s)", "ratio", "unfused, ops on (s)", "ratio",
        "XLA, ops on (s)", "ratio", "bf16 synapses, ops on (s)", "ratio",
        "50 ANN passes, mixed_bfloat16 (s)",
    ]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    rng = np.random.default_rng(0)
    for name in FLAGS.models:
        shape = SHAPES[name]
        ann = getattr(applications, name)(input_shape=shape)
        x = rng.random((FLAGS.items, *shape)).astype("float32")
        labels = rng.integers(0, 10, FLAGS.items)
        snn = keras_snn.convert_model(ann, x[:200], timesteps=FLAGS.timesteps, neuron=FLAGS.neuron)
        snn_xla = snn.with_options(xla=True)
        snn_bf16 = snn.with_options(synapse_dtype="bfloat16")
        forward = tf.function(lambda batch: ann(batch, training=False))
        ann_bf16 = bfloat16_copy(ann)
        forward_bf16 = tf.function(lambda batch: ann_bf16(batch, training=False))
        for batch_size in (int(b) for b in FLAGS.batch_sizes):
            batches = [tf.constant(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]

            def snn_run(model, ops):
                def run(batches):
                    for batch in batches:
                        out = model(batch, return_ops=ops)
                        (out[0] if ops else out).numpy()
                return run

            def simulate_run(model):
                def run(bts):
                    items = sum(int(b.shape[0]) for b in bts)
                    keras_snn.simulate(
                        model, x[:items], labels[:items], batch_size=batch_size, verbose=0
                    )
                return run

            if FLAGS.tune:
                tune(snn, x, labels, batch_size)

            variants = {
                "floor": common.forward_passes(forward, FLAGS.timesteps),
                "off": snn_run(snn, False),
                "on": snn_run(snn, True),
                "simulate": simulate_run(snn),
                "simulate_fused": simulate_run(snn.with_options(xla=False, fused_neurons=True)),
                "unfused": snn_run(snn.with_options(fused_neurons=False), True),
            }
            if FLAGS.xla:
                variants["xla"] = snn_run(snn_xla, True)
            if FLAGS.bfloat16:
                variants["bf16"] = snn_run(snn_bf16, True)
                variants["floor_bf16"] = common.forward_passes(forward_bf16, FLAGS.timesteps)
            seconds = dict(zip(variants, common.best_times_interleaved(
                list(variants.values()), batches, FLAGS.repeats
            )))
            floor, off, on = seconds["floor"], seconds["off"], seconds["on"]
            simulated, unfused = seconds["simulate"], seconds["unfused"]
            simulated_fused = seconds["simulate_fused"]
            nan = float("nan")
            xla, bf16 = seconds.get("xla", nan), seconds.get("bf16", nan)
            floor_bf16 = seconds.get("floor_bf16", nan)
            print(
                f"| {name} | {batch_size} | {floor:.2f} | {off:.2f} | {off / floor:.2f} | "
                f"{on:.2f} | {on / floor:.2f} | {100 * (on / off - 1):+.0f}% | "
                f"{simulated:.2f} | {simulated / floor:.2f} | "
                f"{simulated_fused:.2f} | {simulated_fused / floor:.2f} | "
                f"{unfused:.2f} | {unfused / floor:.2f} | "
                f"{xla:.2f} | {xla / floor:.2f} | {bf16:.2f} | {bf16 / floor:.2f} | "
                f"{floor_bf16:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
