"""Peak memory against T: inference must stay flat, training (BPTT) grows linearly.

Each measurement runs in a fresh subprocess and reports its peak resident set
size (ru_maxrss) after `convert_model` and after the measured call, so one
run's allocations cannot hide another's.
- inference: the Conv MNIST SNN (or the `--model` one; untrained weights:
  memory does not depend on them) on `--batches` batches of random images, for every T in
  `--inference_steps` and batch size in `--batch_sizes`, through `simulate`
  (sums only), `predict` (the `(batch, T, 10)` readout, written in place by
  the loop into the returned array), `predict` with `readout_every="final"` and
  `keras_predict` (Keras's own predict loop, for comparison), with the
  default (autotuned) loop or the one `--loop` fixes, and the default
  `sub_batch_size` (a batch of 1000 runs as four loop calls of 250) or the
  one `--sub_batch_size` fixes. The growth over the
  smallest T is compared with the size of what the call returns;
  `--malloc_arena_max` caps glibc's malloc arenas in the measured processes;
  `--repeats` measures every cell in that many fresh processes and compares
  the means (and the extremes).
- training: one `fit` epoch of the VGG6 SNN (DIET-SNN's network) on
  `--train_items` images, batch 64, at several T; the slope is the memory per
  step, from which the largest T that fits in 24 GiB is extrapolated.

    python benchmarks/memory.py
    python benchmarks/memory.py --inference_steps 50,500,2000,5000 --batch_sizes 250,1000
    python benchmarks/memory.py --inference_steps 50,5000 --repeats 3 --training_steps ''
    python benchmarks/memory.py --inference_steps 50,5000 --batch_sizes 1000 --sub_batch_size 1000
    python benchmarks/memory.py --model conv_cifar --inference_steps 50,1000 --batch_sizes 200 \
        --modes predict --training_steps ''
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batches", 1, "Inference batches per point.")
flags.DEFINE_list("batch_sizes", ["250"], "Inference batch sizes.")
flags.DEFINE_list("inference_steps", ["50", "500", "2000"], "Inference T values.")
flags.DEFINE_list(
    "modes", ["simulate", "predict", "predict_final"],
    "Inference calls: simulate, predict, predict_final, keras_predict.",
)
flags.DEFINE_integer(
    "repeats", 1,
    "Fresh processes per inference cell: the peak varies between identical runs (RESULTS.md).",
)
flags.DEFINE_integer(
    "parallel_steps", None, "SpikingModel parallel_steps for inference (unset: the default, auto)."
)
flags.DEFINE_enum(
    "model", "conv_mnist", ["conv_mnist", "conv_cifar", "resnet_small"],
    "Inference network (keras_snn.applications, untrained).",
)
flags.DEFINE_integer(
    "sub_batch_size", None,
    "SpikingModel sub_batch_size for inference (unset: the default, auto: a batch of 1000 "
    "runs as four loop calls of 250).",
)
flags.DEFINE_enum(
    "loop", "auto", ["auto", "fused", "unfused", "xla"],
    "Inference loop variant: auto (the default options, autotuned) or a fixed one.",
)
flags.DEFINE_integer(
    "malloc_arena_max", None,
    "Set MALLOC_ARENA_MAX for the measured processes (glibc's cap on malloc arenas).",
)
flags.DEFINE_integer("train_items", 256, "Training items (one epoch, batch 64).")
flags.DEFINE_list("training_steps", ["2", "5", "10"], "Training T values ('' to skip).")

CHILD = r"""
import json, os, resource, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np, keras_snn
from keras_snn import applications

def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def mmapped_mib():
    # glibc's mallinfo2().hblkhd: memory in live mmapped blocks. TensorFlow's
    # oneDNN CPU allocator keeps tensors of 4 KiB and more in a BFC pool whose
    # regions (2 MiB, doubling) are such blocks and are never returned.
    import ctypes
    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]
    try:
        mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):  # not glibc 2.33+
        return float("nan")
    mallinfo2.restype = MallInfo2
    return mallinfo2().hblkhd / 2**20

mode, steps, items, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
parallel_steps = None if sys.argv[5] == "auto" else int(sys.argv[5])
loop = sys.argv[6]
sub_batch_size = None if sys.argv[7] == "auto" else int(sys.argv[7])
network = sys.argv[8]
rng = np.random.default_rng(0)
if mode == "training":
    ann = applications.vgg6()
    x = rng.random((items, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, items)
    snn = keras_snn.convert_model(ann, x[:200], neuron="lif", timesteps=steps)
    snn.compile("adam", loss=keras_snn.losses.ReadoutCrossentropy())
    converted = peak_mib()
    snn.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    returned = 0
else:
    shape = (32, 32, 3) if network == "conv_cifar" else (28, 28, 1)
    ann = getattr(applications, network)(input_shape=shape)
    x = rng.random((items,) + shape).astype("float32")
    y = rng.integers(0, 10, items)
    snn = keras_snn.convert_model(ann, x[:200], timesteps=steps)
    snn = snn.with_options(parallel_steps=parallel_steps, sub_batch_size=sub_batch_size)
    if loop != "auto":
        snn = snn.with_options(**keras_snn.autotune.VARIANTS[loop])
    converted = peak_mib()
    if mode == "simulate":
        result = keras_snn.simulate(snn, x, y, batch_size=batch, verbose=0)
        returned = 0
    else:
        every = "final" if mode == "predict_final" else 1
        snn = snn.with_options(readout_every=every)
        # keras_predict: Keras's own predict loop, which SpikingModel.predict
        # replaces for arrays (keras_snn.prediction).
        predict = keras.Model.predict if mode == "keras_predict" else type(snn).predict
        out = predict(snn, x, batch_size=batch, verbose=0)
        returned = out.nbytes / 2**20
print(json.dumps({"converted": converted, "peak": peak_mib(), "returned": returned,
                  "pool": mmapped_mib()}))
"""


def _child_environment():
    env = dict(os.environ)
    if FLAGS.malloc_arena_max is not None:
        env["MALLOC_ARENA_MAX"] = str(FLAGS.malloc_arena_max)
    return env


def measure(mode, steps, items, batch, parallel_steps=None, loop="auto", sub_batch_size=None,
            network="conv_mnist"):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(steps), str(items), str(batch),
         str(parallel_steps or "auto"), loop, str(sub_batch_size or "auto"), network],
        capture_output=True, text=True, check=True, env=_child_environment(),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(_):
    print(f"machine: {common.machine()}\n")
    steps = sorted(int(t) for t in FLAGS.inference_steps)
    for batch in (int(b) for b in FLAGS.batch_sizes):
        items = batch * FLAGS.batches
        print(f"{FLAGS.model} SNN, {items} random images, batch {batch}, parallel_steps "
              f"{FLAGS.parallel_steps or 'auto'}, sub_batch_size {FLAGS.sub_batch_size or 'auto'}, "
              f"loop {FLAGS.loop}, MALLOC_ARENA_MAX "
              f"{FLAGS.malloc_arena_max or 'unset'}; peak RSS in MiB "
              f"(growth over T={steps[0]}; what the call returns; live mmapped blocks at "
              f"the end, TensorFlow's allocator pool)\n")
        print("| call | " + " | ".join(f"T={t}" for t in steps) + " |")
        print("|---|" + "---|" * len(steps))
        for mode in FLAGS.modes:
            # runs[i][j]: the j-th fresh process at steps[i].
            runs = [
                [measure(mode, t, items, batch, FLAGS.parallel_steps, FLAGS.loop,
                         FLAGS.sub_batch_size, FLAGS.model)
                 for _ in range(FLAGS.repeats)]
                for t in steps
            ]
            peaks = [[run["peak"] for run in cell] for cell in runs]
            means = [sum(cell) / len(cell) for cell in peaks]
            cells = []
            for cell, mean, peak in zip(runs, means, peaks):
                spread = "" if len(peak) == 1 else (
                    f" [{', '.join(f'{p:.0f}' for p in peak)}]")
                pools = "/".join(f"{run['pool']:.0f}" for run in cell)
                cells.append(
                    f"{mean:.0f}{spread} ({mean - means[0]:+.0f}; returns "
                    f"{cell[0]['returned']:.1f}; pool {pools})"
                )
            print(f"| {mode} | " + " | ".join(cells) + " |")
            returned_more = runs[-1][0]["returned"] - runs[0][0]["returned"]
            print(f"\n{mode}: mean peak T={steps[-1]} / T={steps[0]} = "
                  f"{means[-1] / means[0]:.3f} (extremes {min(peaks[-1]) / max(peaks[0]):.3f}"
                  f"-{max(peaks[-1]) / min(peaks[0]):.3f}); growth {means[-1] - means[0]:.0f} "
                  f"MiB against {returned_more:.1f} MiB more returned "
                  f"(after convert_model: {runs[0][0]['converted']:.0f} MiB)\n")
    if not [t for t in FLAGS.training_steps if t]:
        return
    print("| training (VGG6 SNN, batch 64) | T | peak RSS (MiB) |\n|---|---|---|")
    training = {
        int(t): measure("training", int(t), FLAGS.train_items, 64)["peak"]
        for t in FLAGS.training_steps if t
    }
    for steps_, mib in training.items():
        print(f"| one epoch | {steps_} | {mib:.0f} |")
    low, high = min(training), max(training)
    per_step = (training[high] - training[low]) / (high - low)
    fits = (24 * 1024 - training[low]) / per_step + low if per_step > 0 else float("inf")
    print(f"\ntraining memory per step (batch 64): {per_step:.0f} MiB; "
          f"T that fits in 24 GiB at batch 64: about {fits:.0f}")


if __name__ == "__main__":
    app.run(main)
