"""Helpers shared by the benchmark scripts: training and per-step accuracy."""

import os
import platform
import time

import keras
from absl import flags
import numpy as np
import tensorflow as tf


def train(model, x, y, epochs, batch_size=128, learning_rate=1e-3, seed=0):
    """Adam on sparse labels from logits; returns the trained model."""
    keras.utils.set_random_seed(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=2)
    return model


def train_or_load(build, x, y, epochs, model_dir=None, name=None, seed=0):
    """Train `build()` or, when `model_dir` holds `name`.keras, load that instead.

    Caching lets one run explore conversion settings on the same trained ANN.
    """
    path = os.path.join(model_dir, f"{name}.keras") if model_dir and name else None
    if path and os.path.exists(path):
        return keras.saving.load_model(path), 0.0
    with Timer() as timer:
        model = train(build(), x, y, epochs, seed=seed)
    if path:
        os.makedirs(model_dir, exist_ok=True)
        model.save(path)
    return model, timer.seconds


def ann_accuracy(model, x, y):
    return float((model.predict(x, verbose=0).argmax(-1) == y).mean())


def snn_accuracy_per_step(snn, x, y, timesteps, batch_size=200):
    """Top-1 accuracy of the readout after every step, shape (timesteps,)."""
    correct = np.zeros(timesteps)
    for start in range(0, len(x), batch_size):
        readout = snn(x[start : start + batch_size], timesteps=timesteps).numpy()
        correct += (readout.argmax(-1) == y[start : start + batch_size, None]).sum(0)
    return correct / len(x)


def same_network(a, b):
    """Same layers, weights and neurons: the two conversions simulate alike."""
    if len(a.network.layers) != len(b.network.layers):
        return False
    for layer_a, layer_b in zip(a.network.layers, b.network.layers):
        if type(layer_a) is not type(layer_b):
            return False
        if getattr(layer_a, "neuron", None) != getattr(layer_b, "neuron", None):
            return False
        weights_a, weights_b = layer_a.get_weights(), layer_b.get_weights()
        if len(weights_a) != len(weights_b) or any(
            wa.shape != wb.shape or not np.array_equal(wa, wb)
            for wa, wb in zip(weights_a, weights_b)
        ):
            return False
    return True


def paired_gap(correct, ann_correct):
    """(SNN - ANN in points, its paired standard error in points)."""
    diff = correct.astype(float) - ann_correct.astype(float)
    return 100 * diff.mean(), 100 * diff.std(ddof=1) / np.sqrt(len(diff))


def parse_setting(setting):
    """"8" -> (8, 1), "4x2" -> (4, 2): timesteps and spike_max of a `--settings` entry."""
    steps, _, spike_max = setting.partition("x")
    return int(steps), int(spike_max or 1)


# The lscpu flags that decide which kernels oneDNN (and XLA) pick on x86.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_model_and_flags():
    """(CPU model name, the KERNEL_FLAGS it has), read from /proc/cpuinfo."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: the model from platform only
        pass
    return model, [flag for flag in KERNEL_FLAGS if flag in flags]


def machine():
    """One line naming the CPU (model, kernel-relevant lscpu flags), cores and versions."""
    model, flags = cpu_model_and_flags()
    # oneDNN and XLA can be told to use an older instruction set than the CPU
    # has (e.g. AVX2 on an AVX-512 CPU, to approximate an AVX2-only machine).
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA")
    limit = f", oneDNN limited to {isa} (ONEDNN_MAX_CPU_ISA)" if isa else ""
    xla_isa = [f for f in os.environ.get("XLA_FLAGS", "").split() if "xla_cpu_max_isa" in f]
    limit += f", XLA limited by {xla_isa[0]}" if xla_isa else ""
    return (
        f"{model} (flags: {' '.join(flags) or 'none of ' + ', '.join(KERNEL_FLAGS)}), "
        f"{os.cpu_count()} cores, TensorFlow {tf.__version__}, Keras {keras.__version__}{limit}"
    )


def forward_passes(forward, timesteps):
    """`run(batches)`: `timesteps` plain forward passes per batch, the speed floor.

    `forward` is one compiled forward function; the last output of each batch
    is read back so the work is not left queued.
    """
    def run(batches):
        for batch in batches:
            for _ in range(timesteps):
                out = forward(batch)
            out.numpy()
    return run


def best_time(fn, repeats, warm_up=None):
    """Best of `repeats` timed calls of `fn()` after one untimed `warm_up()`.

    The warm-up (by default `fn` itself) pays for tracing and compilation;
    the best time is the least disturbed by other work on a shared machine.
    """
    (warm_up or fn)()
    times = []
    for _ in range(repeats):
        with Timer() as timer:
            fn()
        times.append(timer.seconds)
    return min(times)


def best_times_interleaved(fns, batches, repeats):
    """Best time of each `fn(batches)`, the functions taking turns in every round.

    Each function is warmed up on the first batch; then every round times
    each function once. Taking turns spreads slow drifts in machine load
    (other processes, clock changes) over all the functions instead of
    charging them to whichever ran during the slow spell.
    """
    for fn in fns:
        fn(batches[:1])
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            with Timer() as timer:
                fn(batches)
            best[i] = min(best[i], timer.seconds)
    return best


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def with_max_pooling(model):
    """The architecture with every (global) average pooling made a max pooling."""
    swaps = {
        keras.layers.AveragePooling2D: keras.layers.MaxPooling2D,
        keras.layers.GlobalAveragePooling2D: keras.layers.GlobalMaxPooling2D,
    }

    def clone(layer):
        cls = swaps.get(type(layer), type(layer))
        return cls.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=clone)


def inverted_residual_net(input_shape=(28, 28, 1), classes=10):
    """A small MobileNetV2-style net: ReLU6, depthwise convs, linear bottlenecks, residual adds.

    Stem conv (stride 2), five inverted-residual blocks (1x1 expand x4 + BN + ReLU6, 3x3
    depthwise + BN + ReLU6, 1x1 linear projection + BN, Add where shapes match), a 1x1 conv
    + BN + ReLU6, global average pooling and the logits.
    """

    def norm(x):
        return keras.layers.BatchNormalization(momentum=0.9)(x)

    inputs = keras.Input(input_shape)
    x = keras.layers.ReLU(6.0)(norm(keras.layers.Conv2D(16, 3, strides=2, padding="same")(inputs)))
    for filters, strides in ((16, 1), (24, 2), (24, 1), (32, 1), (32, 1)):
        y = keras.layers.ReLU(6.0)(norm(keras.layers.Conv2D(4 * x.shape[-1], 1)(x)))
        y = keras.layers.DepthwiseConv2D(3, strides=strides, padding="same")(y)
        y = keras.layers.ReLU(6.0)(norm(y))
        y = norm(keras.layers.Conv2D(filters, 1)(y))  # linear bottleneck
        x = keras.layers.Add()([x, y]) if strides == 1 and x.shape[-1] == filters else y
    x = keras.layers.ReLU(6.0)(norm(keras.layers.Conv2D(64, 1)(x)))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes)(x)
    return keras.Model(inputs, outputs, name="inverted_residual")


def vgg_small(input_shape=(28, 28, 1), classes=10, activation="relu"):
    """A VGG-style net with 9 weighted layers: 2x32, pool, 2x64, pool, 3x128, pool, 128, classes.

    3x3 'same' convolutions, each followed by BatchNormalization (momentum 0.9, no scale) and
    the activation ("relu" or a callable making a layer, e.g. a QReLU); average pooling.
    """
    def act():
        return keras.layers.ReLU() if activation == "relu" else activation()

    layers = [keras.Input(input_shape)]
    for filters, count in ((32, 2), (64, 2), (128, 3)):
        for _ in range(count):
            layers += [keras.layers.Conv2D(filters, 3, padding="same"),
                       keras.layers.BatchNormalization(momentum=0.9, scale=False), act()]
        layers.append(keras.layers.AveragePooling2D(2))
    layers += [keras.layers.Flatten(), keras.layers.Dense(128),
               keras.layers.BatchNormalization(momentum=0.9, scale=False), act(),
               keras.layers.Dense(classes)]
    return keras.Sequential(layers, name="vgg_small")


def strided_gap(input_shape=(28, 28, 1), classes=10, activation="relu"):
    """Four 3x3 convolutions 24-48-48-96 (the 2nd and 4th strided), global average pooling,
    Dense 64, classes; no BatchNormalization. Not designed for conversion: a network of the
    kind users bring, first tried untuned in issue 16's tenth pass.
    """
    def act():
        return keras.layers.ReLU() if activation == "relu" else activation()

    layers = [keras.Input(input_shape)]
    for filters, strides in ((24, 1), (48, 2), (48, 1), (96, 2)):
        layers += [keras.layers.Conv2D(filters, 3, strides=strides, padding="same"), act()]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(64), act(),
               keras.layers.Dense(classes)]
    return keras.Sequential(layers, name="strided_gap")


ARCHITECTURES = {
    "inverted_residual": inverted_residual_net, "vgg_small": vgg_small, "strided_gap": strided_gap,
}

# QReLU shift per activation name: eq. 1 (floor) and QCFS (Bu et al., ICLR 2022).
QRELU_SHIFTS = {"qrelu": 0.0, "qcfs": 0.5}


def build_architecture(name, activation, input_shape, levels=8):
    """An ARCHITECTURES or keras_snn.applications net with ReLU, eq. 1 QReLU or QCFS."""
    from keras_snn import applications
    from keras_snn.layers import QReLU

    builder = ARCHITECTURES.get(name) or getattr(applications, name)
    if activation == "relu":
        return builder(input_shape=input_shape)
    shift = QRELU_SHIFTS[activation]
    return builder(
        input_shape=input_shape,
        activation=lambda: QReLU(levels=levels, initial_bound=1.0, shift=shift),
    )


def define_qrelu_training_flags(test_items):
    """The flags of the scripts that train (or load cached) QReLU ANNs on a dataset."""
    flags.DEFINE_string("dataset", "fashion_mnist", "Dataset name.")
    flags.DEFINE_string("data_dir", None, "Local IDX/.npz directory.")
    flags.DEFINE_integer("epochs", 2, "ANN training epochs (when not cached).")
    flags.DEFINE_integer("train_items", 30000, "Training images used (the first N).")
    flags.DEFINE_integer("levels", 8, "QReLU quantisation levels.")
    flags.DEFINE_integer("test_items", test_items, "Test images evaluated (the first N).")
    flags.DEFINE_integer("calibration", 2000, "Training images passed as calibration data.")
    flags.DEFINE_string("model_dir", None, "Cache trained ANNs here (reused when present).")
    flags.DEFINE_integer("seed", 0, "Training seed (cached under its own name unless 0).")


def activation_tag(activation):
    """"relu", or the QReLU kind with its levels ("qrelu8", "qcfs8"), as the flags say."""
    return activation if activation == "relu" else f"{activation}{flags.FLAGS.levels}"


def train_or_load_flagged(name, activation, x_train, y_train):
    """(model, training seconds) of architecture `name` with `activation`, as the flags say.

    Cached as `{dataset}_{name}_{relu | qrelu<levels> | qcfs<levels>}_{items}x{epochs}`
    (with `_seed<N>` for a seed other than 0), so every script shares the ANNs.
    """
    f = flags.FLAGS
    tag = activation_tag(activation)
    suffix = f"_seed{f.seed}" if f.seed else ""
    return train_or_load(
        lambda: build_architecture(name, activation, x_train.shape[1:], f.levels),
        x_train, y_train, f.epochs, f.model_dir,
        f"{f.dataset}_{name}_{tag}_{f.train_items}x{f.epochs}{suffix}", seed=f.seed,
    )


def load_flagged_dataset():
    """(x_train, y_train, x_calibration, x_eval, y_eval) as the training flags say."""
    from keras_snn.datasets import load_dataset

    f = flags.FLAGS
    (x_train, y_train), (x_test, y_test) = load_dataset(f.dataset, f.data_dir)
    x_train, y_train = x_train[: f.train_items], y_train[: f.train_items]
    return (x_train, y_train, x_train[: f.calibration], x_test[: f.test_items],
            y_test[: f.test_items])
