"""Peak memory against T: inference must stay flat, training (BPTT) grows linearly.

Each measurement runs in a fresh subprocess and reports its peak resident set
size (ru_maxrss), so one run's allocations cannot hide another's.
- inference: the Conv MNIST SNN over `--items` images at T=50 and T=500;
- training: one `fit` epoch of the VGG6 SNN (DIET-SNN's network) on
  `--train_items` images, batch 64, at several T; the slope is the memory per
  step, from which the largest T that fits in 24 GiB is extrapolated.

    python benchmarks/memory.py
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
flags.DEFINE_integer("items", 1000, "Inference items.")
flags.DEFINE_integer("train_items", 256, "Training items (one epoch, batch 64).")
flags.DEFINE_list("inference_steps", ["50", "500"], "Inference T values.")
flags.DEFINE_list("training_steps", ["2", "5", "10"], "Training T values.")

CHILD = r"""
import json, os, resource, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import keras, numpy as np, keras_snn
from keras_snn import applications
mode, steps, items = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
if mode == "inference":
    ann = applications.conv_mnist()
    x = rng.random((items, 28, 28, 1)).astype("float32")
    snn = keras_snn.convert_model(ann, x[:200], timesteps=steps)
    keras_snn.simulate(snn, x, verbose=0, batch_size=250)
else:
    ann = applications.vgg6()
    x = rng.random((items, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, items)
    snn = keras_snn.convert_model(ann, x[:200], neuron="lif", timesteps=steps)
    snn.compile("adam", loss=keras_snn.losses.ReadoutCrossentropy())
    snn.fit(x, y, batch_size=64, epochs=1, verbose=0)
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak(mode, steps, items):
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(steps), str(items)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main(_):
    print(f"machine: {common.machine()}\n")
    print("| inference (Conv MNIST SNN) | T | peak RSS (MiB) |\n|---|---|---|")
    inference = {int(t): peak("inference", int(t), FLAGS.items) for t in FLAGS.inference_steps}
    for steps, mib in inference.items():
        print(f"| {FLAGS.items} items | {steps} | {mib:.0f} |")
    first, last = min(inference), max(inference)
    print(f"\nratio T={last} / T={first}: {inference[last] / inference[first]:.3f}\n")
    print("| training (VGG6 SNN, batch 64) | T | peak RSS (MiB) |\n|---|---|---|")
    training = {int(t): peak("training", int(t), FLAGS.train_items) for t in FLAGS.training_steps}
    for steps, mib in training.items():
        print(f"| one epoch | {steps} | {mib:.0f} |")
    low, high = min(training), max(training)
    per_step = (training[high] - training[low]) / (high - low)
    fits = (24 * 1024 - training[low]) / per_step + low if per_step > 0 else float("inf")
    print(f"\ntraining memory per step (batch 64): {per_step:.0f} MiB; "
          f"T that fits in 24 GiB at batch 64: about {fits:.0f}")


if __name__ == "__main__":
    app.run(main)
