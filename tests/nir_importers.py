"""Run NIR files in other people's simulators (the NIR interop check's far side).

Not a test module: tests/test_nir_interop.py runs it as a script, in this
interpreter or in another one (sinabs pins an older nir than the other
importers, so it lives in its own environment):

    python tests/nir_importers.py IMPORTER JOB.json

JOB.json lists {"nir": path, "inputs": .npy path (batch, *channels-first
shape), "timesteps": T, "out": .npz path}. For each entry the importer loads
the file, drives it with the same analog input on every step for T steps and
writes to "out": `output` (batch, T, classes), the graph output per step, and
`spikes/<node>` (batch, T), the spikes each neuron node emitted per step; or
`error`, the importer's exception when it cannot load or run the graph. Spikes
are read with forward hooks on the modules the importer built for the NIR
neuron nodes (keras_snn names them `<layer>_neuron`).

The file imports only numpy, torch, nir and the importer (never keras_snn or
TensorFlow), so it runs wherever the importer is installed.
"""

import json
import sys
import traceback

import numpy as np


def _first_tensor(value):
    while isinstance(value, (tuple, list)):
        value = value[0]
    return value


def _neuron_modules(module):
    return {
        name.split(".")[-1]: sub
        for name, sub in module.named_modules()
        if name.split(".")[-1].endswith("_neuron")
    }


class _SpikeRecorder:
    """Forward hooks that sum each neuron module's output spikes per sample."""

    def __init__(self, module):
        self.counts = {}
        self.handles = []
        for name, sub in _neuron_modules(module).items():
            self.counts[name] = []
            self.handles.append(sub.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def record(module, inputs, output):
            spikes = _first_tensor(output).detach()
            self.counts[name].append(spikes.reshape(spikes.shape[0], -1).sum(1).numpy())

        return record

    def per_step(self, batch, timesteps):
        """(batch, T) counts; a call on (batch*T, ...) frames (sinabs) is split."""
        result = {}
        for name, calls in self.counts.items():
            if len(calls) == timesteps:
                result[name] = np.stack(calls, axis=1)
            elif len(calls) == 1 and calls[0].shape[0] == batch * timesteps:
                result[name] = calls[0].reshape(batch, timesteps)
            else:
                raise RuntimeError(f"{name}: {len(calls)} calls for {timesteps} steps")
        return result


def _step_stateful(module, x, timesteps):
    """nirtorch graphs: `out, state = module(x, state)` once per step."""
    import torch

    outputs, state = [], None
    with torch.no_grad():
        for _ in range(timesteps):
            result = module(x) if state is None else module(x, state)
            out, state = result if isinstance(result, tuple) else (result, None)
            outputs.append(_first_tensor(out).reshape(x.shape[0], -1).numpy())
    return np.stack(outputs, axis=1)


def run_snntorch(graph, x, timesteps):
    import snntorch.utils
    from snntorch.import_nir import import_from_nir

    module = import_from_nir(graph)
    snntorch.utils.reset(module)
    return module, lambda: _step_stateful(module, x, timesteps)


def run_norse(graph, x, timesteps):
    import norse.torch

    module = norse.torch.from_nir(graph, dt=float(graph.metadata.get("dt", 1.0)))
    return module, lambda: _step_stateful(module, x, timesteps)


def run_spikingjelly(graph, x, timesteps):
    from spikingjelly.activation_based.nir_exchange import from_nir

    module = from_nir.import_from_nir(graph, dt=float(graph.metadata.get("dt", 1.0)))
    return module, lambda: _step_stateful(module, x, timesteps)


def run_sinabs(graph, x, timesteps):
    import sinabs
    import torch

    batch = x.shape[0]
    module = sinabs.from_nir(graph, batch_size=batch)

    def run():
        # sinabs's Squeeze layers take all steps at once, as (batch*T, ...) batch-major.
        frames = x[:, None].expand(batch, timesteps, *x.shape[1:]).reshape(
            batch * timesteps, *x.shape[1:]
        )
        with torch.no_grad():
            out = _first_tensor(module(frames))
        return out.reshape(batch, timesteps, -1).numpy()

    return module, run


def run_sinabs_single_spike(graph, x, timesteps):
    """sinabs with the documented workaround: one spike per step, as keras_snn's IF."""
    from sinabs.activation import SingleSpike

    module, run = run_sinabs(graph, x, timesteps)
    for neuron in _neuron_modules(module).values():
        neuron.spike_fn = SingleSpike
    return module, run


RUNNERS = {
    "snntorch": run_snntorch,
    "norse": run_norse,
    "spikingjelly": run_spikingjelly,
    "sinabs": run_sinabs,
    "sinabs_single_spike": run_sinabs_single_spike,
}


def run_file(importer, path, inputs, timesteps):
    import nir
    import torch

    graph = nir.read(path)
    x = torch.as_tensor(inputs, dtype=torch.float32)
    module, run = RUNNERS[importer](graph, x, timesteps)
    recorder = _SpikeRecorder(module)
    output = run()
    return output, recorder.per_step(x.shape[0], timesteps)


def versions(importer):
    from importlib import metadata

    package = importer.split("_")[0]
    return {name: metadata.version(name) for name in ("nir", "nirtorch", "torch", package)}


def main(importer, job_path):
    with open(job_path) as f:
        job = json.load(f)
    for entry in job:
        try:
            inputs = np.load(entry["inputs"])
            output, spikes = run_file(importer, entry["nir"], inputs, entry["timesteps"])
            arrays = {"output": output, **{f"spikes/{k}": v for k, v in spikes.items()}}
        except Exception as error:  # the importer's failure is the result to report
            detail = "".join(traceback.format_exception_only(type(error), error)).strip()
            arrays = {"error": np.array(detail)}
        np.savez(entry["out"], **arrays)
    print(json.dumps(versions(importer)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
