"""SpikingJelly as a peer ANN-to-SNN simulator (run in its own environment).

Reads the framework-neutral .npz written by benchmarks/peer_simulators.py,
rebuilds the Keras ANN as a torch nn.Sequential (NCHW), converts it with
SpikingJelly's own converter (ann2snn.Converter with a RateCodingRecipe:
ReLU -> IF neurons with soft reset, per-layer thresholds from the 99.9th
percentile of the activations on the calibration images by default)
and measures, on the first --items test images in batches of --batch_size:

- seconds: wall time of simulating the converted SNN for --timesteps steps
  per batch (the same analog image every step, outputs summed over steps,
  functional.reset_net between batches) under torch.no_grad();
- torch_ann_floor_seconds: wall time of --timesteps plain forward passes of
  the torch ANN over the same batches;
- accuracy: top-1 of the summed SNN output after the last step, and
  ann_accuracy: top-1 of the torch ANN (should equal the Keras ANN's).

Conversion is not timed. Each timing is the best of --repeats after one
warm-up run. Progress goes to stderr; the last stdout line is one JSON object.

    /tmp/venv-sj/bin/python benchmarks/peers/spikingjelly_run.py \\
        --exchange /tmp/peers/conv_mnist.npz --timesteps 50 --batch_size 100
"""

import argparse
import copy
import importlib.metadata
import json
import sys
import time

import numpy as np
import torch
from spikingjelly.activation_based import ann2snn, functional
from torch import nn


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def build_torch_ann(data):
    """nn.Sequential (NCHW) equivalent to the Keras layers in the .npz file."""
    shape = tuple(data["x_test"].shape[1:])  # current activation shape, Keras (H, W, C)
    flattened_from = None  # the (H, W, C) shape a Flatten saw, for the next Dense
    layers = []
    for i, name in enumerate(data["layers"]):
        config = json.loads(str(data[f"config_{i:02d}"]))
        weights = []
        while f"weight_{i:02d}_{len(weights)}" in data:
            weights.append(data[f"weight_{i:02d}_{len(weights)}"])
        if name == "Conv2D":
            assert config["padding"] == "same" and tuple(config["strides"]) == (1, 1), config
            kernel = weights[0]
            layer = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2], padding="same",
                              bias=config["use_bias"])
            layer.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
            if config["use_bias"]:
                layer.bias.data = torch.from_numpy(weights[1])
            shape = shape[:2] + (kernel.shape[3],)
        elif name == "BatchNormalization":
            channels = shape[-1]
            layer = (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(
                channels, eps=config["epsilon"])
            rest = list(weights)
            gamma = rest.pop(0) if config["scale"] else np.ones(channels, "float32")
            beta = rest.pop(0) if config["center"] else np.zeros(channels, "float32")
            mean, variance = rest
            for tensor, value in [(layer.weight, gamma), (layer.bias, beta),
                                  (layer.running_mean, mean), (layer.running_var, variance)]:
                tensor.data = torch.from_numpy(np.asarray(value, "float32"))
        elif name == "ReLU":
            layer = nn.ReLU()
        elif name == "AveragePooling2D":
            pool = tuple(config["pool_size"])
            assert config["padding"] == "valid" and tuple(config["strides"]) == pool, config
            layer = nn.AvgPool2d(pool)
            shape = (shape[0] // pool[0], shape[1] // pool[1], shape[2])
        elif name == "Flatten":
            layer = nn.Flatten()
            flattened_from = shape if len(shape) == 3 else None
            shape = (int(np.prod(shape)),)
        elif name == "Dense":
            kernel = weights[0]
            if flattened_from is not None:
                # Rows in Keras (H, W, C) order -> torch (C, H, W) order.
                kernel = kernel.reshape(*flattened_from, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
            flattened_from = None
            layer = nn.Linear(kernel.shape[0], kernel.shape[1], bias=config["use_bias"])
            layer.weight.data = torch.from_numpy(kernel.T.copy())
            if config["use_bias"]:
                layer.bias.data = torch.from_numpy(weights[1])
            shape = (kernel.shape[1],)
        else:
            raise ValueError(f"Unsupported Keras layer {name}")
        layers.append(layer)
    return nn.Sequential(*layers).eval()


def best_time(fn, repeats):
    result = fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchange", required=True, help=".npz from peer_simulators.py")
    parser.add_argument("--timesteps", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--items", type=int, default=None, help="Test items (default: all).")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--normalisation", default="99.9%",
                        help="RateCodingRecipe mode: 'max' or a percentile; the default, "
                        "SpikingJelly's robust normalisation, beat 'max' at T=50 on both models.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = dict(np.load(args.exchange))
    items = args.items or len(data["x_test"])
    x_test = torch.from_numpy(data["x_test"][:items].transpose(0, 3, 1, 2).copy())
    y_test = torch.from_numpy(data["y_test"][:items])
    x_calibration = torch.from_numpy(data["x_calibration"].transpose(0, 3, 1, 2).copy())
    batches = list(torch.split(x_test, args.batch_size))

    ann = build_torch_ann(data)
    with torch.no_grad():
        ann_accuracy = (torch.cat([ann(x) for x in batches]).argmax(1) == y_test).sum().item() / items
    log(f"torch ANN top-1 on {items} test items: {ann_accuracy:.4f}")

    calibration = list(torch.split(x_calibration, args.batch_size))
    recipe = ann2snn.RateCodingRecipe(dataloader=calibration, mode=args.normalisation)
    snn = ann2snn.Converter(recipe=recipe, device="cpu").convert(copy.deepcopy(ann)).eval()
    log(snn)

    @torch.no_grad()
    def simulate():
        outputs = []
        for x in batches:
            functional.reset_net(snn)
            total = snn(x)
            for _ in range(args.timesteps - 1):
                total = total + snn(x)
            outputs.append(total)
        return torch.cat(outputs)

    @torch.no_grad()
    def ann_floor():
        outputs = []
        for x in batches:
            for _ in range(args.timesteps):
                out = ann(x)
            outputs.append(out)
        return torch.cat(outputs)

    seconds, snn_out = best_time(simulate, args.repeats)
    accuracy = (snn_out.argmax(1) == y_test).sum().item() / items
    log(f"SNN: {seconds:.2f} s, top-1 after {args.timesteps} steps {accuracy:.4f}")
    floor_seconds, _ = best_time(ann_floor, args.repeats)
    log(f"torch ANN floor: {floor_seconds:.2f} s")

    print(json.dumps({
        "simulator": f"SpikingJelly {importlib.metadata.version('spikingjelly')} (torch {torch.__version__})",
        "seconds": round(seconds, 3),
        "torch_ann_floor_seconds": round(floor_seconds, 3),
        "accuracy": accuracy,
        "ann_accuracy": ann_accuracy,
        "normalisation": args.normalisation,
        "timesteps": args.timesteps,
        "items": items,
        "batch_size": args.batch_size,
    }))


if __name__ == "__main__":
    main()
