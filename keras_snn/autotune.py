"""The fastest way to run a model's time loop, chosen by timing it (like cuDNN's autotune).

The loop can run three ways that compute the same maths (to float rounding,
as XLA may fuse a multiply-add): each layer's neuron update compiled into one
XLA kernel inside a TensorFlow loop ("fused"), every elementwise operation a
separate TensorFlow kernel ("unfused"), or the whole loop compiled with XLA
("xla"). Which is fastest depends on the CPU (oneDNN's convolutions against
XLA's differ between AVX-512 and AVX2 machines), the network, the batch
size and what else the machine is running (benchmarks/RESULTS.md, "Simulator
speed"), so no fixed default is best everywhere.

A `SpikingModel` whose `xla` or `fused_neurons` is left at None ("auto")
gets a `LoopTuner`. The drivers that run many batches (`simulate`, and
`predict` on arrays, whose units are chunks of steps) ask it which variant
runs each unit: the first units go round the candidates once to compile them
(not timed), then `TIMED_ROUNDS` more times, timed and interleaved so that
a change in the machine's load hits every candidate alike; every later unit
runs on the candidate with the smallest time. The choice is kept per input
signature (batch size, steps, input shape and dtype) with the model, so later
calls start with it; `SpikingModel.loop_choices` shows it with its timings.
Tuning starts only once a signature has run at least `MIN_UNITS_PER_CANDIDATE`
full units per candidate (this run's and earlier untuned runs' together), so
that the slower candidates' few units and their compilation cost little;
until then the runs, and always `snn(x)` and Keras's
`fit`/`evaluate`/`predict` loops run the model's own loop ("fused" by default). Under a
`tf.distribute` strategy nothing is tuned (the replicas would time each
other's work).

Variants are `SpikingModel.with_options` copies sharing the network, so
weights stay shared; `synapse_dtype` is never tuned, because bfloat16 changes
the numbers.
"""

import time

VARIANTS = {
    "fused": {"xla": False, "fused_neurons": True},
    "unfused": {"xla": False, "fused_neurons": False},
    "xla": {"xla": True, "fused_neurons": True},
}
TIMED_ROUNDS = 2
MIN_UNITS_PER_CANDIDATE = 8

_clock = time.perf_counter  # tests replace it with a fake clock


def candidates(xla, fused_neurons):
    """The variant names compatible with the options the user fixed (None: free).

    >>> candidates(None, None)
    ['fused', 'unfused', 'xla']
    >>> candidates(False, None)
    ['fused', 'unfused']
    >>> candidates(None, False)  # XLA compiles the whole loop, fused or not
    ['unfused', 'xla']
    >>> candidates(True, None)
    ['xla']
    """
    names = []
    for name, options in VARIANTS.items():
        if xla is not None and options["xla"] != bool(xla):
            continue
        if fused_neurons is not None and not options["xla"] and (
            options["fused_neurons"] != bool(fused_neurons)
        ):
            continue
        names.append(name)
    return names


class _Signature:
    """Tuning state of one input signature: the schedule, the times, the choice."""

    def __init__(self, names):
        self.names = list(names)
        # One untimed round (compilation), then TIMED_ROUNDS timed ones.
        self.schedule = self.names * (1 + TIMED_ROUNDS)
        self.position = 0
        self.seconds = {name: [] for name in self.names}
        self.units = {name: 0 for name in self.names}
        self.chosen = None

    def next_name(self):
        if self.chosen is not None:
            return self.chosen
        return self.schedule[self.position]

    def record(self, name, seconds):
        self.units[name] += 1
        if self.chosen is not None:
            return
        if self.position >= len(self.names):  # past the compiling round
            self.seconds[name].append(seconds)
        self.position += 1
        if self.position == len(self.schedule):
            self.chosen = min(self.names, key=lambda n: min(self.seconds[n]))


class LoopTuner:
    """Times a model's loop variants and keeps the fastest per input signature.

    Args:
        model: the `SpikingModel` whose loop is tuned (its own loop is the
            "fused" variant when that is a candidate).
        names: the candidate variant names (see `candidates`).
    """

    def __init__(self, model, names):
        self._model = model
        self._names = list(names)
        self._variants = {}
        self._signatures = {}
        self._untuned_units = {}

    def variant(self, name):
        """The SpikingModel that runs variant `name` (sharing the network)."""
        if name not in self._variants:
            model = self._model
            same = model.loop_variant == name
            self._variants[name] = model if same else model.with_options(**VARIANTS[name])
        return self._variants[name]

    def tunes(self, signature, units):
        """Whether a run of `units` full units with this signature goes through the tuner.

        Yes once the signature is tuned or being tuned, or when this run's
        units and those of earlier untuned runs of the signature together
        are enough to pay for tuning it (repeated short runs get tuned too).
        """
        if len(self._names) < 2:
            return False
        if signature in self._signatures:
            return True
        seen = self._untuned_units.get(signature, 0) + (units or 0)
        if seen >= MIN_UNITS_PER_CANDIDATE * len(self._names):
            return True
        self._untuned_units[signature] = seen  # counted towards a later run's tuning
        return False

    def run(self, signature, call, timed=True):
        """`call(variant_model)` on the variant due for this signature; returns its result.

        `call` must return only once the work is done (e.g. after `.numpy()`),
        so that its time is the unit's. `timed=False` (a partial batch) runs
        the current choice without recording a time.
        """
        state = self._signatures.get(signature)
        if state is None:
            state = self._signatures[signature] = _Signature(self._names)
        if not timed:
            return call(self.variant(state.chosen or self._model.loop_variant))
        name = state.next_name()
        start = _clock()
        result = call(self.variant(name))
        state.record(name, _clock() - start)
        return result

    def choices(self):
        """Dict signature text -> {"chosen", "seconds" (best timed), "units" run}."""
        report = {}
        for signature, state in self._signatures.items():
            report[_signature_text(signature)] = {
                "chosen": state.chosen,
                "seconds": {n: min(s) for n, s in state.seconds.items() if s},
                "units": dict(state.units),
            }
        return report


class _Untuned:
    """Runs every unit on the model's own loop (a run that is not tuned)."""

    def __init__(self, model):
        self._model = model

    def run(self, signature, call, timed=True):
        del signature, timed  # nothing is timed
        return call(self._model)


def tuner_for(model, signature, units):
    """What a driver runs its units through: `run(signature, call, timed)`.

    The model's `LoopTuner` when this run of `units` full units is tuned
    (see `LoopTuner.tunes`), else an object running every unit on the model
    itself.
    """
    tuner = model._tuner
    if tuner is not None and tuner.tunes(signature, units):
        return tuner
    return _Untuned(model)


def signature(kind, batch_size, steps, inputs):
    """The key a choice is kept under: what is run, batch size, steps, input shape, dtype."""
    dtype = getattr(inputs.dtype, "name", None) or str(inputs.dtype)  # tf.DType or NumPy
    return (kind, int(batch_size), int(steps), tuple(inputs.shape[1:]), dtype)


def _signature_text(signature):
    kind, batch_size, steps, shape, dtype = signature
    return f"{kind}: batch {batch_size}, {steps} steps, input {shape} {dtype}"
