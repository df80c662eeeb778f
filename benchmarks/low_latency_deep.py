"""Deep QReLU networks at low latency with convert_model's defaults (issue 16, ask 3).

Loads (or trains and caches in `--model_dir`, named like
`benchmarks/conversion_defaults.py` does) the small ResNet and the VGG-style
net trained with QReLU(levels) (eq. 1, shift 0) and QCFS (shift 0.5) on
Fashion-MNIST, converts each with `convert_model(model, calibration_data,
timesteps=T, **options)` for every `--settings` entry (`T` or `Tx<spike_max>`,
e.g. `8,4x2`) and reports, on the first `--test_items` test images:

- the ANN's and the SNN's top-1 accuracy and the paired standard error of their
  difference (the same images for both: sqrt(var(snn_i - ann_i) / n) with
  per-image correctness snn_i, ann_i), which is what a claim "within 0.5
  points" needs;
- the accuracy of a delayed readout that ignores the first k steps (the
  readout membrane after T steps minus the one after k steps), for every k.

    python benchmarks/low_latency_deep.py --data_dir /usr/share/datasets/fashion-mnist \
        --model_dir /tmp/lowlat_models --test_items 2000

The defaults train 2 epochs on 30000 images (minutes on 2 cores); the ResNets of
RESULTS.md's "Longer-trained ResNets" were trained on all 60000 for 10 epochs
(about 30 minutes each on 2 shared cores), cached under their own names:

    python benchmarks/low_latency_deep.py --data_dir /usr/share/datasets/fashion-mnist \
        --model_dir /tmp/lowlat_models_long --test_items 2000 --models resnet_small \
        --train_items 60000 --epochs 10
"""

import itertools
import os
import sys

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_snn  # noqa: E402
from benchmarks import common  # noqa: E402

FLAGS = flags.FLAGS
common.define_qrelu_training_flags(test_items=2000)
flags.DEFINE_list("models", ["resnet_small", "vgg_small"], "Architectures.")
flags.DEFINE_list("activations", ["qcfs", "qrelu"], "qrelu (shift 0), qcfs (shift 0.5).")
flags.DEFINE_list("settings", ["8", "4x2"], "T or Tx<spike_max>, converted and simulated.")
flags.DEFINE_integer("batch_size", 250, "Test images per simulation call.")

def readouts(snn, x, timesteps):
    """The readout after every step, (n, timesteps, classes)."""
    return np.concatenate([
        np.asarray(snn(x[start : start + FLAGS.batch_size], timesteps=timesteps))
        for start in range(0, len(x), FLAGS.batch_size)
    ])


def delayed(outputs, skip):
    """Readout over steps skip+1..T: the running mean's sums, T*m_T - k*m_k."""
    total = outputs.shape[1] * outputs[:, -1]
    return total if skip == 0 else total - skip * outputs[:, skip - 1]


def main(_):
    x_train, y_train, x_calibration, x_eval, y_eval = common.load_flagged_dataset()
    print(f"machine: {common.machine()}")
    print(f"keras_snn {keras_snn.__version__}; {len(x_eval)} test images")
    for name, activation in itertools.product(FLAGS.models, FLAGS.activations):
        tag = common.activation_tag(activation)
        model, seconds = common.train_or_load_flagged(name, activation, x_train, y_train)
        ann_correct = model.predict(x_eval, verbose=0).argmax(-1) == y_eval
        print(f"\n{name} {tag} ({FLAGS.epochs} epochs, {seconds:.0f} s training): "
              f"ANN {100 * ann_correct.mean():.2f}%", flush=True)
        for setting in FLAGS.settings:
            timesteps, spike_max = common.parse_setting(setting)
            with common.Timer() as timer:
                snn = keras_snn.convert_model(
                    model, x_calibration, timesteps=timesteps, spike_max=spike_max)
                outputs = readouts(snn, x_eval, timesteps)
            cells = []
            for skip in range(timesteps):
                correct = delayed(outputs, skip).argmax(-1) == y_eval
                difference, error = common.paired_gap(correct, ann_correct)
                cells.append(f"k={skip}: {100 * correct.mean():.2f} ({difference:+.2f} "
                             f"+- {error:.2f})")
            print(f"  T={timesteps} spike_max={spike_max} ({timer.seconds:.0f} s): "
                  + "; ".join(cells), flush=True)


if __name__ == "__main__":
    app.run(main)
