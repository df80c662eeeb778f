"""Which keras.applications families convert: build (weights=None, small input), convert, run.

For one model per family: build it untrained at a small input with 10 classes,
`convert_model(model, 8 random images, timesteps=2)`, run one image, and print a
Markdown row: converts (and the seconds it took), or the ConversionError's message.

    python benchmarks/applications_matrix.py
"""

import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_snn  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("families", None, "Only these model names (default: all below).")

# One model per family, at the smallest input it accepts.
MODELS = [
    ("VGG16", 32, {}), ("VGG19", 32, {}),
    ("ResNet50", 32, {}), ("ResNet50V2", 32, {}),
    ("DenseNet121", 32, {}),
    ("MobileNet", 32, {}), ("MobileNetV2", 32, {}),
    ("MobileNetV3Small", 32, {}),
    ("InceptionV3", 75, {}), ("InceptionResNetV2", 75, {}), ("Xception", 71, {}),
    ("NASNetMobile", 32, {}),
    ("EfficientNetB0", 32, {}), ("EfficientNetV2B0", 32, {}),
    ("ConvNeXtTiny", 32, {}),
]


def first_sentence(message):
    message = " ".join(str(message).split())
    return message.split(". ")[0].rstrip(".") + "."


def main(_):
    rng = np.random.default_rng(0)
    print("| model | input | result |")
    print("|---|---|---|")
    for name, size, kwargs in MODELS:
        if FLAGS.families and name not in FLAGS.families:
            continue
        shape = (size, size, 3)
        try:
            model = getattr(keras.applications, name)(
                weights=None, input_shape=shape, classes=10, **kwargs
            )
        except Exception as error:  # noqa: BLE001 - report whatever Keras raises
            print(f"| {name} | {size}x{size} | Keras cannot build it here: {first_sentence(error)} |")
            continue
        x = rng.random((8,) + shape).astype("float32")
        start = time.perf_counter()
        try:
            snn = keras_snn.convert_model(model, x, timesteps=2)
            out = np.asarray(snn(x[:1]))
            ok = out.shape == (1, 2, 10) and np.isfinite(out).all()
            result = f"converts and runs ({time.perf_counter() - start:.0f} s)" if ok else "runs, bad output"
        except keras_snn.ConversionError as error:
            result = f"refused: {first_sentence(error)}"
        except Exception as error:  # noqa: BLE001 - a crash is a finding too
            result = f"fails with {type(error).__name__} (not a ConversionError): {first_sentence(error)[:160]}"
        print(f"| {name} | {size}x{size} | {result} |", flush=True)


if __name__ == "__main__":
    app.run(main)
