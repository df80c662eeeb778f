"""Peer runner: SNN Toolbox (INI time-stepped simulator) on an exchange .npz.

Runs in its own Python environment (not keras_snn's): SNN Toolbox 0.6.0 is
written against Keras 2 / tf.keras, so it needs TensorFlow <= 2.15. An
environment that works on Python 3.11:

    python3 -m venv /tmp/venv-snntb
    /tmp/venv-snntb/bin/pip install tensorflow-cpu==2.15.1 numpy==1.23.5
    /tmp/venv-snntb/bin/pip install --no-deps snntoolbox==0.6.0

(`--no-deps` because the wheel asks for the `tensorflow` distribution and
`tensorflow-cpu` is what is installed; numpy 1.23.5 because the toolbox still
uses the `np.bool` alias removed in numpy 1.24.) No plotting package is
needed: without matplotlib the toolbox turns plotting off.

Given a file written by `benchmarks/peer_simulators.py:write_exchange_file`,
the runner
1. rebuilds the ANN layer by layer with tf.keras (Keras 2), loads the
   weights, checks its top-1 on the test items and saves it as the .h5 the
   toolbox loads (the last Dense gets a softmax, which the toolbox expects
   on a classifier's output layer; the argmax is unchanged);
2. writes the data as the toolbox's x_test/y_test/x_norm .npz files and a
   config file (INI simulator, temporal mean-rate code, duration = T steps of
   dt = 1, the given batch size, every item tested, normalisation on the
   calibration images at the toolbox's default percentile, no plots, no
   logged variables), and runs the toolbox's own pipeline
   (`update_setup` + `run_pipeline`) for parsing, normalisation and
   conversion;
3. simulates with the converted network's own `run()` (what `run_pipeline`
   calls in its simulate step): one batch untimed first, so tf.function
   tracing is not timed, then all items timed. The reported time is the sum
   of the per-batch `simulate()` calls, the toolbox's loop of T steps per
   batch; `run()` additionally evaluates the ANN on every batch and writes a
   small log file, which is not simulation (its total is given in the notes);
4. times the floor in the same process: T calls of one tf.function forward
   pass of the rebuilt ANN per batch over the same batches (best of
   `--floor_repeats` after a warm-up), as benchmarks/simulator_speed.py does.

The last line on stdout is one JSON object; everything else goes to stderr.

    /tmp/venv-snntb/bin/python benchmarks/peers/snntoolbox_run.py \\
        --exchange /tmp/peers/conv_mnist.npz --timesteps 50 --batch_size 100 \\
        --workdir /tmp/snntb_work
"""

import argparse
import configparser
import json
import os
import shutil
import sys
import time
import warnings

# Everything printed below (TensorFlow, the toolbox, this script) goes to
# stderr; the final JSON line is written to the original stdout.
_RESULT_STREAM = os.fdopen(os.dup(1), "w")
sys.stdout.flush()
os.dup2(2, 1)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# The toolbox allocates arrays with `np.bool` (an alias numpy 1.24-1.26 lack).
# With numpy 1.23.5 as set up above nothing happens here; with 1.24-1.26 the
# alias is restored so the toolbox's simulation loop can run.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    if not hasattr(np, "bool"):
        np.bool = bool

import tensorflow as tf  # noqa: E402
from tensorflow import keras  # noqa: E402


def keras_version():
    """Version of the Keras behind tf.keras (keras 2.x, or tf_keras with TF >= 2.16)."""
    from importlib.metadata import PackageNotFoundError, version
    module = keras.__name__.split(".")[0]
    for dist in (("tf-keras",) if module == "tf_keras" else ("keras", "tf-keras")):
        try:
            return version(dist)
        except PackageNotFoundError:
            pass
    return "unknown"


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--exchange", required=True,
                        help="Exchange .npz written by peer_simulators.py.")
    parser.add_argument("--timesteps", type=int, default=50,
                        help="Simulation steps (the toolbox's duration, with dt = 1).")
    parser.add_argument("--batch_size", type=int, default=100,
                        help="Items simulated in parallel.")
    parser.add_argument("--workdir", required=True,
                        help="Where the model, data and config files go.")
    parser.add_argument("--items", type=int, default=0, help="Test items (0: all in the file).")
    parser.add_argument("--percentile", type=float, default=None,
                        help="Normalisation percentile (default: the toolbox's own default).")
    parser.add_argument("--output_activation", choices=["softmax", "linear"], default="softmax",
                        help="Activation of the last Dense (the toolbox's usual setup: softmax).")
    parser.add_argument("--floor_repeats", type=int, default=2,
                        help="Timed repeats of the ANN floor.")
    parser.add_argument("--seed", type=int, default=0,
                        help="Random seed (a softmax output layer spikes at random).")
    return parser.parse_args()


# ---------------------------------------------------------------- the ANN ---

def load_exchange(path):
    data = np.load(path, allow_pickle=False)
    names = [str(n) for n in data["layers"]]
    layers = []
    for i, name in enumerate(names):
        config = json.loads(str(data[f"config_{i:02d}"]))
        weights = []
        while f"weight_{i:02d}_{len(weights)}" in data.files:
            weights.append(data[f"weight_{i:02d}_{len(weights)}"])
        layers.append((name, config, weights))
    return layers, data


def _pair(value):
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def make_layer(class_name, cfg, activation=None):
    """A tf.keras (Keras 2) layer equivalent to a Keras 3 layer config."""
    name = cfg.get("name")
    if class_name == "Conv2D":
        return keras.layers.Conv2D(
            cfg["filters"], _pair(cfg["kernel_size"]), strides=_pair(cfg.get("strides", 1)),
            padding=cfg.get("padding", "valid"), dilation_rate=_pair(cfg.get("dilation_rate", 1)),
            activation=activation or cfg.get("activation", "linear"),
            use_bias=cfg.get("use_bias", True), data_format="channels_last", name=name)
    if class_name == "Dense":
        return keras.layers.Dense(
            cfg["units"], activation=activation or cfg.get("activation", "linear"),
            use_bias=cfg.get("use_bias", True), name=name)
    if class_name == "BatchNormalization":
        axis = cfg.get("axis", -1)
        if isinstance(axis, (list, tuple)):
            axis = axis[0]
        return keras.layers.BatchNormalization(
            axis=axis, momentum=cfg.get("momentum", 0.99), epsilon=cfg.get("epsilon", 1e-3),
            center=cfg.get("center", True), scale=cfg.get("scale", True), name=name)
    if class_name == "ReLU":
        max_value = cfg.get("max_value")
        slope, threshold = cfg.get("negative_slope", 0.0), cfg.get("threshold", 0.0)
        if max_value is not None or slope or threshold:
            log("WARNING: SNN Toolbox treats every ReLU as a plain ReLU; "
                f"max_value/negative_slope/threshold of {name} are ignored by it.")
        return keras.layers.ReLU(max_value=max_value, negative_slope=slope, threshold=threshold,
                                 name=name)
    if class_name in ("AveragePooling2D", "MaxPooling2D"):
        pool = _pair(cfg.get("pool_size", 2))
        strides = cfg.get("strides") or pool
        return getattr(keras.layers, class_name)(
            pool, strides=_pair(strides), padding=cfg.get("padding", "valid"),
            data_format="channels_last", name=name)
    if class_name == "Flatten":
        return keras.layers.Flatten(data_format="channels_last", name=name)
    if class_name == "Activation":
        return keras.layers.Activation(cfg["activation"], name=name)
    raise ValueError(f"Layer type {class_name} is not handled by this runner.")


def build_ann(layers, input_shape, output_activation):
    """Rebuild the network; returns (model with the chosen output activation, logits model)."""
    last_dense = max(i for i, (n, _, _) in enumerate(layers) if n == "Dense")
    if last_dense != len(layers) - 1:
        raise ValueError("Expected the network to end with a Dense layer (logits).")
    inputs = keras.Input(shape=input_shape, name="input")
    x = inputs
    for i, (class_name, cfg, weights) in enumerate(layers):
        activation = output_activation if i == last_dense else None
        layer = make_layer(class_name, cfg, activation)
        y = layer(x)
        if weights:
            layer.set_weights(weights)
        if i == last_dense:
            # Same weights without the softmax: the logits, for the check.
            pre_activation = keras.layers.Dense(cfg["units"], use_bias=cfg.get("use_bias", True),
                                                name="logits_check")
            logits = pre_activation(x)
            pre_activation.set_weights(weights)
        x = y
    model = keras.Model(inputs, x, name="ann")
    logits_model = keras.Model(inputs, logits, name="ann_logits")
    return model, logits_model


def top1(model, x, y, batch_size):
    pred = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(pred, axis=-1) == y))


# ------------------------------------------------------------- the toolbox ---

def write_toolbox_files(run_dir, model, x_test, y_test, x_norm, num_classes, args, items):
    data_dir = os.path.join(run_dir, "dataset")
    os.makedirs(data_dir)
    # The toolbox reads the first array of each file; labels one-hot.
    np.savez_compressed(os.path.join(data_dir, "x_test.npz"), x_test.astype("float32"))
    np.savez_compressed(os.path.join(data_dir, "y_test.npz"),
                        np.eye(num_classes, dtype="float32")[y_test])
    np.savez_compressed(os.path.join(data_dir, "x_norm.npz"), x_norm.astype("float32"))

    model_name = "ann"
    # Compiled so the toolbox can recompile it with the stored optimizer/loss.
    model.compile("sgd", "categorical_crossentropy", ["accuracy"])
    model.save(os.path.join(run_dir, model_name + ".h5"), save_format="h5")

    cfg = configparser.ConfigParser()
    cfg.optionxform = str
    cfg["paths"] = {
        "path_wd": run_dir,
        "dataset_path": data_dir,
        "filename_ann": model_name,
        "runlabel": "bench",
        "log_dir_of_current_run": os.path.join(run_dir, "log"),
    }
    cfg["input"] = {"model_lib": "keras", "dataset_format": "npz", "poisson_input": "False"}
    cfg["tools"] = {
        "evaluate_ann": "True",
        "parse": "True",
        "normalize": "True",
        "convert": "True",
        # The simulation is started below with the converted network's own
        # run(), so that a warm-up batch can precede the timed run.
        "simulate": "False",
    }
    cfg["conversion"] = {"spike_code": "temporal_mean_rate"}
    cfg["simulation"] = {
        "simulator": "INI",
        "keras_backend": "tensorflow",
        "duration": str(args.timesteps),
        "dt": "1",
        "batch_size": str(args.batch_size),
        "num_to_test": str(items),
        "top_k": "1",
    }
    if args.percentile is not None:
        cfg["normalization"] = {"percentile": repr(args.percentile)}
    cfg["output"] = {"plot_vars": "{}", "log_vars": "{}", "verbose": "0", "overwrite": "True"}
    config_path = os.path.join(run_dir, "config.ini")
    with open(config_path, "w") as f:
        cfg.write(f)
    return config_path


def convert_with_toolbox(config_path):
    """update_setup + run_pipeline (parse, normalise, convert).

    Returns the config, the converted network, run_pipeline's result (the
    toolbox's top-1 of the parsed, normalised ANN) and the pipeline's seconds.
    """
    from snntoolbox.bin import utils as sntb
    config = sntb.update_setup(config_path)
    snn_class = sntb.import_target_sim(config).SNN
    built = []
    original_build = snn_class.build

    def recording_build(self, *a, **kw):  # keeps a handle on the converted network
        built.append(self)
        return original_build(self, *a, **kw)

    snn_class.build = recording_build
    try:
        start = time.perf_counter()
        results = sntb.run_pipeline(config)
        seconds = time.perf_counter() - start
    finally:
        snn_class.build = original_build
    if not built:
        raise RuntimeError("run_pipeline did not build a spiking network.")
    return config, built[-1], results, seconds


class SimulateTimer:
    """Times each call of the network's simulate() (one batch, T steps)."""

    def __init__(self, snn):
        self.snn = snn
        self.seconds = []
        self._original = snn.simulate
        snn.simulate = self

    def __call__(self, **kwargs):
        start = time.perf_counter()
        out = self._original(**kwargs)
        self.seconds.append(time.perf_counter() - start)
        return out


def simulate(snn, config, x_test, y_onehot, items, batch_size):
    timer = SimulateTimer(snn)
    # Warm-up on one batch: traces the tf.functions; its result is not used.
    config.set("simulation", "num_to_test", str(batch_size))
    snn.run(x_test=x_test[:batch_size], y_test=y_onehot[:batch_size])
    warmup = sum(timer.seconds)
    timer.seconds.clear()
    config.set("simulation", "num_to_test", str(items))
    start = time.perf_counter()
    accuracy = snn.run(x_test=x_test, y_test=y_onehot)
    run_seconds = time.perf_counter() - start
    return float(accuracy), sum(timer.seconds), len(timer.seconds), run_seconds, warmup


def ann_floor(model, x_test, timesteps, batch_size, repeats):
    forward = tf.function(lambda batch: model(batch, training=False))
    batches = [tf.constant(x_test[i:i + batch_size]) for i in range(0, len(x_test), batch_size)]

    def passes():
        for batch in batches:
            for _ in range(timesteps):
                out = forward(batch)
            out.numpy()

    passes()  # warm-up: tracing is not timed
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        passes()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    args = parse_args()
    np.random.seed(args.seed)
    tf.random.set_seed(args.seed)
    from importlib.metadata import version
    sntb_version = version("snntoolbox")
    log(f"SNN Toolbox {sntb_version}, TensorFlow {tf.__version__}, Keras {keras_version()}, "
        f"numpy {np.__version__}")

    layers, data = load_exchange(args.exchange)
    x_all, y_all = data["x_test"], data["y_test"].astype("int64")
    x_norm = data["x_calibration"]
    items = args.items or len(x_all)
    if items % args.batch_size:
        items -= items % args.batch_size
        log(f"WARNING: the toolbox simulates whole batches only; using {items} items.")
    if items <= 0:
        raise ValueError("Fewer items than one batch.")
    x_test, y_test = x_all[:items], y_all[:items]
    num_classes = int(layers[-1][1]["units"])

    model, logits_model = build_ann(layers, x_test.shape[1:], args.output_activation)
    model.summary(print_fn=log)
    ann_accuracy = top1(logits_model, x_test, y_test, args.batch_size)
    ann_accuracy_out = top1(model, x_test, y_test, args.batch_size)
    log(f"Keras-2 ANN top-1 on {items} items: {ann_accuracy:.4f} (logits), "
        f"{ann_accuracy_out:.4f} (with {args.output_activation} output)")

    stem = os.path.splitext(os.path.basename(args.exchange))[0]
    run_dir = os.path.join(os.path.abspath(args.workdir), f"snntoolbox_{stem}")
    if os.path.isdir(run_dir):
        # The toolbox reuses scale factors cached in its log directory; start clean.
        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    config_path = write_toolbox_files(
        run_dir, model, x_test, y_test, x_norm, num_classes, args, items)

    config, snn, pipeline_results, convert_seconds = convert_with_toolbox(config_path)
    parsed_accuracy = float(pipeline_results[-1]) if pipeline_results else float("nan")
    log(f"Toolbox pipeline (load, evaluate, parse, normalise, convert): {convert_seconds:.1f} s; "
        f"parsed+normalised ANN top-1 reported by the toolbox: {parsed_accuracy:.4f}")

    y_onehot = np.eye(num_classes, dtype="float32")[y_test]
    accuracy, seconds, batches, run_seconds, warmup = simulate(
        snn, config, x_test, y_onehot, items, args.batch_size)
    log(f"SNN: top-1 {accuracy:.4f} after {args.timesteps} steps; simulate() {seconds:.2f} s over "
        f"{batches} batches; run() {run_seconds:.2f} s; warm-up batch {warmup:.2f} s")

    floor = ann_floor(logits_model, x_test, args.timesteps, args.batch_size, args.floor_repeats)
    log(f"ANN floor ({args.timesteps} forward passes per batch): {floor:.2f} s")

    softmax_note = (" (the INI output layer then spikes at random with probability softmax(V),"
                    " without reset)") if args.output_activation == "softmax" else ""
    notes = (
        f"Keras-2 rebuild (tf.keras {keras_version()}, numpy {np.__version__}); last Dense given "
        f"a {args.output_activation} activation{softmax_note}; "
        f"{config.get('conversion', 'spike_code')} code, {config.get('cell', 'reset').lower()}, "
        f"dt {config.get('simulation', 'dt')}, constant-current input, normalisation on "
        f"{len(x_norm)} calibration images at percentile "
        f"{config.get('normalization', 'percentile')}; toolbox-reported parsed ANN top-1 "
        f"{parsed_accuracy:.4f}. seconds = sum of the {batches} per-batch simulate() calls of "
        f"the converted network's run() after a one-batch warm-up (tracing untimed); run() took "
        f"{run_seconds:.2f} s in all (it also evaluates the ANN on each batch and writes a log "
        f"file); conversion pipeline {convert_seconds:.1f} s, not counted. Floor: "
        f"{args.timesteps} calls of one tf.function forward pass per batch, best of "
        f"{max(1, args.floor_repeats)} after a warm-up."
    )
    result = {
        "simulator": f"SNN Toolbox {sntb_version} INI (TensorFlow {tf.__version__})",
        "seconds": round(seconds, 3),
        "ann_floor_seconds": round(floor, 3),
        "accuracy": round(accuracy, 4),
        "ann_accuracy": round(ann_accuracy, 4),
        "timesteps": args.timesteps,
        "items": items,
        "batch_size": args.batch_size,
        "notes": notes,
    }
    _RESULT_STREAM.write(json.dumps(result) + "\n")
    _RESULT_STREAM.flush()


if __name__ == "__main__":
    main()
