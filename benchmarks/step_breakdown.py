"""Where one simulated step's time goes, against a plain forward pass (issue 15).

Two measurements, in one process on one machine:

1. Kernel time by kind. TensorFlow's profiler records `--timesteps` forward
   passes of the Keras ANN and one call of the converted SNN over as many steps
   (default conversion, the fused loop, op counting on), at one batch size.
   Each run's host kernel times are summed (over both kernel threads, so the
   sums exceed the wall time when kernels overlap) and grouped: weight
   products (convolutions, dense layers), elementwise kernels (the ANN's
   batch normalisation and ReLU; the SNN's XLA-compiled neuron updates),
   pooling, and op counting (absolute values, sums and the fan-out
   matrix-vector products).
2. The neuron update against the memory floor. For the SNN's largest spiking
   layer whose current changes every step, at the same batch: its compiled
   neuron update; an XLA kernel that reads and writes as many float32
   tensors of that shape with one add each
   (the time to move those bytes, the floor for any update that keeps its
   state in float32); the layer's synaptic current; and counting its spikes
   (events per sample and fan-out-weighted operations).

Untrained ANN, random inputs: every step is dense tensor work, so the times
do not depend on the weights.

    python benchmarks/step_breakdown.py
    python benchmarks/step_breakdown.py --model conv_cifar --batch_size 100
"""

import collections
import glob
import os
import sys
import tempfile

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

import keras_snn  # noqa: E402
from benchmarks import common  # noqa: E402
from keras_snn import applications  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "conv_mnist", "keras_snn.applications name.")
flags.DEFINE_integer("batch_size", 1000, "Batch size of every run.")
flags.DEFINE_integer("timesteps", 10, "Steps (and ANN passes) profiled.")
flags.DEFINE_integer("repeats", 20, "Calls per timing of the single-kernel measurements.")

# Host kernel types by kind; the rest is reported as "other".
KINDS = {
    "_MklNativeFusedConv2D": "weight products", "_MklNativeConv2D": "weight products",
    "_MklNativeFusedMatMul": "weight products", "Conv2D": "weight products",
    "_MklNativeDepthwiseConv2dNative": "weight products",
    "Mul": "elementwise", "AddV2": "elementwise", "Relu": "elementwise",
    "Sub": "elementwise", "Rsqrt": "elementwise",
    "ExecuteAsyncOnStream": "elementwise",  # an XLA kernel: the fused neuron updates
    "_MklNativeAvgPool": "pooling", "_MklNativeMaxPool": "pooling",
    "Abs": "op counting", "Sum": "op counting", "_MklMatMul": "op counting",
}


def profiled_kernel_ms(fn):
    """Kernel type -> milliseconds, summed over the host threads, of one call of `fn`."""
    fn()  # traced and compiled outside the profile
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        fn()
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
            space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                # Kernels are "op name:Type"; the XLA launch is a runtime event.
                if ":" in name and not name.startswith("$"):
                    totals[name.rsplit(":", 1)[-1]] += event.duration_ps / 1e9
                elif name.endswith("ExecuteAsyncOnStream"):
                    totals["ExecuteAsyncOnStream"] += event.duration_ps / 1e9
    return totals


def by_kind(totals):
    kinds = collections.Counter()
    for kernel, ms in totals.items():
        if kernel in KINDS:
            kinds[KINDS[kernel]] += ms
    return kinds


def best_ms(fn, *args):
    """Best of 3 timings of `--repeats` calls, in ms per call, after a warm-up."""
    def calls():
        for _ in range(FLAGS.repeats):
            result = fn(*args)
        tf.nest.map_structure(lambda t: t.numpy(), result)  # the work is done, not queued

    return 1e3 * common.best_time(calls, repeats=3) / FLAGS.repeats


def neuron_floor(snn, batch_size):
    """Times for the largest spiking layer: (name, neurons, rows of a Markdown table)."""
    plan = snn.plan
    node = max(  # its current computed every step (not the input layer's, computed once)
        (n for n in plan.nodes if n.synaptic and not n.static_current
         and getattr(n.layer, "neuron", None) is not None),
        key=lambda n: plan.neurons(n.key),
    )
    layer = node.layer
    shape = (batch_size,) + tuple(plan.output_shapes[node.key][1:])
    rng = np.random.default_rng(0)
    current = tf.constant(rng.standard_normal(shape).astype("float32"))
    state = tuple(layer.initial_state(batch_size))
    fire = tf.function(layer.fire, jit_compile=True, autograph=False)
    spikes, _ = fire(current, state)
    tensors = 1 + len(state)  # in: the current and the state; out: the spikes and the state

    def moved(*tensors):  # reads every tensor, writes as many: the same bytes
        return tuple(t + 1.0 for t in tensors)

    floor = tf.function(moved, jit_compile=True)
    inputs = [current] + [tf.ones(shape) for _ in state]
    # XLA:CPU writes each output of a kernel in a loop of its own (no
    # multi-output fusion by default), each reading its inputs again.
    hlo = fire.experimental_get_compiler_ir(current, state)(stage="optimized_hlo")
    entry = hlo[hlo.index("ENTRY"):]
    loops = sum(" fusion(" in line for line in entry.splitlines())
    rows = [
        (f"neuron update (XLA, the loop's kernel: {loops} loops over the neurons)",
         best_ms(fire, current, state)),
        (f"XLA kernel moving the same bytes ({tensors} tensors in, {tensors} out)",
         best_ms(floor, *inputs)),
    ]
    # Unit spikes (-1, 0, 1) into the layer: what a buffered layer before it emits.
    source = tf.constant(
        rng.integers(-1, 2, (batch_size,) + tuple(layer.input.shape[1:])).astype("float32"))
    current_ms = best_ms(tf.function(layer.compute_current), source)
    rows.append(("the layer's synaptic current", current_ms))
    flat = tf.reshape(spikes, [batch_size, -1])
    fanout = tf.ones([flat.shape[1]])
    # As the time loop counts unit spikes (keras_snn.time_loop, keras_snn.costs): the
    # magnitudes summed per sample, and their product with a fan-out map (ones here).
    count = tf.function(
        lambda s: (tf.reduce_sum(tf.abs(s), 1), tf.linalg.matvec(tf.abs(s), fanout)))
    rows.append(("counting its spikes (events and weighted ops per sample)", best_ms(count, flat)))
    return layer.name, int(np.prod(shape[1:])), rows


def main(_):
    print(f"machine: {common.machine()}")
    name, batch, steps = FLAGS.model, FLAGS.batch_size, FLAGS.timesteps
    shape = (32, 32, 3) if name == "conv_cifar" else (28, 28, 1)
    rng = np.random.default_rng(0)
    ann = getattr(applications, name)(input_shape=shape)
    x = tf.constant(rng.random((batch, *shape)).astype("float32"))
    snn = keras_snn.convert_model(ann, x[:64].numpy(), timesteps=steps).with_options(
        xla=False, fused_neurons=True)
    forward = tf.function(lambda inputs: ann(inputs, training=False))

    def ann_run():
        for _ in range(steps):
            out = forward(x)
        out.numpy()

    def snn_run():
        tf.nest.map_structure(lambda t: t.numpy(), snn(x, return_ops=True))

    wall = {label: common.best_time(fn, repeats=1)
            for label, fn in (("ANN", ann_run), ("SNN", snn_run))}
    kernels = {"ANN": profiled_kernel_ms(ann_run), "SNN": profiled_kernel_ms(snn_run)}
    print(f"\n{name}, batch {batch}: {steps} ANN passes against {steps} SNN steps "
          f"(ops counted); wall time of one unprofiled call: ANN {wall['ANN']:.2f} s, "
          f"SNN {wall['SNN']:.2f} s ({wall['SNN'] / wall['ANN']:.2f})\n")
    print("| kernels (ms, summed over threads) | ANN | SNN |")
    print("|---|---|---|")
    kinds = {label: by_kind(totals) for label, totals in kernels.items()}
    for kind in ("weight products", "elementwise", "pooling", "op counting"):
        print(f"| {kind} | {kinds['ANN'][kind]:.0f} | {kinds['SNN'][kind]:.0f} |")
    print("\nkernel types, SNN: " + ", ".join(
        f"{k} {v:.0f}" for k, v in kernels["SNN"].most_common(12) if k in KINDS))
    print("kernel types, ANN: " + ", ".join(
        f"{k} {v:.0f}" for k, v in kernels["ANN"].most_common(12) if k in KINDS))

    layer, neurons, rows = neuron_floor(snn, batch)
    print(f"\nlargest spiking layer: {layer} ({neurons} neurons per sample), batch {batch}, "
          f"ms per call, best of 3 x {FLAGS.repeats}\n")
    print("| kernel | ms |")
    print("|---|---|")
    for label, ms in rows:
        print(f"| {label} | {ms:.1f} |")


if __name__ == "__main__":
    app.run(main)
