"""Where "auto" should stop calibrating: the default against calibrating at every T (issue 16).

`convert_model(..., bias_calibration="auto")` calibrates gains and biases
(keeping them only if the readout moves closer to the ANN's logits on the
calibration images) when the network has fewer than
`keras_snn.conversion.converter._CALIBRATE_BELOW_RESOLUTION` spikes per neuron
(timesteps x spike_max), and at any T for eq. 1 QReLU layers. This script
converts each model at each `--settings` entry (`T` or `Tx<spike_max>`) twice,
with the default and with that limit lifted (the same "auto" calibration and
its check, at every resolution), and reports both SNNs' top-1 on the same test
images with the paired standard error of their difference to the ANN. A setting
where the default already calibrates gives the same network twice and is
reported once.

    python benchmarks/calibration_resolution.py --data_dir /usr/share/datasets/fashion-mnist \
        --model_dir /tmp/lowlat_models --models conv_mnist,resnet_small,vgg_small \
        --activations relu,qcfs --settings 16,32,8x2 --test_items 2000

Models are trained (or loaded from `--model_dir`) by
`benchmarks.common.train_or_load_flagged`, under the names that
`low_latency_deep.py` and `conversion_defaults.py` share. Each cell also gives
the conversion's seconds: calibrating simulates the network once or twice per
layer, so its cost grows with T.
"""

import itertools
import os
import sys
from unittest import mock

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_snn  # noqa: E402
from benchmarks import common  # noqa: E402
from keras_snn.conversion import converter  # noqa: E402

FLAGS = flags.FLAGS
common.define_qrelu_training_flags(test_items=2000)
flags.DEFINE_list("models", ["conv_mnist", "resnet_small", "vgg_small"], "Architectures.")
flags.DEFINE_list("activations", ["relu", "qcfs"], "relu, qrelu (shift 0), qcfs (shift 0.5).")
flags.DEFINE_list("settings", ["16", "32", "8x2"], "T or Tx<spike_max>.")
flags.DEFINE_integer("batch_size", 250, "Test images per simulation call.")


def final_correct(snn, x, y, timesteps):
    """Per-image correctness of the readout after the last step."""
    return np.concatenate([
        np.asarray(snn(x[start : start + FLAGS.batch_size], timesteps=timesteps))[:, -1]
        .argmax(-1) == y[start : start + FLAGS.batch_size]
        for start in range(0, len(x), FLAGS.batch_size)
    ])


def main(_):
    x_train, y_train, x_calibration, x_eval, y_eval = common.load_flagged_dataset()
    print(f"machine: {common.machine()}")
    print(f"keras_snn {keras_snn.__version__}; {len(x_eval)} test images; auto calibrates "
          f"below {converter._CALIBRATE_BELOW_RESOLUTION} spikes per neuron")
    print("| model (ANN) | setting | auto (default) | auto, calibrating at every resolution |")
    print("|---|---|---|---|")
    for name, activation in itertools.product(FLAGS.models, FLAGS.activations):
        model, _ = common.train_or_load_flagged(name, activation, x_train, y_train)
        ann_correct = model.predict(x_eval, verbose=0).argmax(-1) == y_eval
        for setting in FLAGS.settings:
            timesteps, spike_max = common.parse_setting(setting)
            cells = []
            with common.Timer() as default_timer:
                default = keras_snn.convert_model(
                    model, x_calibration, timesteps=timesteps, spike_max=spike_max)
            with mock.patch.object(converter, "_CALIBRATE_BELOW_RESOLUTION", np.inf), \
                    common.Timer() as lifted_timer:
                lifted = keras_snn.convert_model(
                    model, x_calibration, timesteps=timesteps, spike_max=spike_max)
            for snn, timer in ((default, default_timer), (lifted, lifted_timer)):
                if snn is lifted and common.same_network(default, lifted):
                    cells.append("same network")
                    break
                correct = final_correct(snn, x_eval, y_eval, timesteps)
                difference, error = common.paired_gap(correct, ann_correct)
                cells.append(f"{100 * correct.mean():.2f} ({difference:+.2f} +- {error:.2f}; "
                             f"converted in {timer.seconds:.0f} s)")
            print(f"| {name} {activation} ({100 * ann_correct.mean():.2f}) | {setting} | "
                  + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    app.run(main)
