"""The compiled time loop that runs a spiking network for T steps.

One `tf.while_loop` (inside the `SpikingModel`'s `tf.function`, optionally
XLA-compiled): every layer's state (membranes, buffers, the readout sum) is a
loop variable, no Python runs per step, and what is computed once per call
(static inputs, time-invariant currents, fan-out maps) stays outside the loop.
The loop keeps only what the caller asks for (`record`), so memory grows with
T by the kept readout alone, or not at all for `simulate`'s batch sums.
"""

import tensorflow as tf

from keras_snn import costs
from keras_snn.layers.base import SpikingLayer
from keras_snn.plan import Carries

# Steps the loop may run at once unless `parallel_steps` fixes it: enough for
# one step's operation counting to overlap the next steps' layers.
OVERLAPPED_STEPS = 10


class TimeLoop:
    """Runs a `keras_snn.plan.Plan` for T steps; see `run`.

    Args:
        plan: the network's `Plan`.
        dtype: the compute dtype of the values and records.
        synapse_dtype: None, or the narrow float type of the weight products
            on spikes (see `SpikingModel`).
        parallel_steps: `tf.while_loop`'s `parallel_iterations`, or None:
            1 for a readout written in place (`predict` on arrays, which
            counts no operations for steps to overlap with), else
            `OVERLAPPED_STEPS`.
        head: None, or the Keras model applied to the readout before
            predictions are compared with labels (`record="totals"`).
        fused_neurons: run each layer's neuron update (add, compare, reset,
            and for buffered neurons the negative spikes) as one
            XLA-compiled kernel instead of one TensorFlow kernel per
            elementwise operation; see `SpikingModel`.
    """

    def __init__(self, plan, dtype, synapse_dtype=None, parallel_steps=None, head=None,
                 fused_neurons=True):
        self.plan = plan
        self.dtype = dtype
        self.synapse_dtype = synapse_dtype
        self.parallel_steps = parallel_steps
        self.head = head
        # Without XLA every elementwise operation of a neuron update is its
        # own kernel and a full pass over the layer's neurons; compiled, the
        # update is one pass. The convolutions and matrix products stay
        # outside (oneDNN's kernels), so only the memory-bound part changes.
        self._fire = {
            node.key: (
                tf.function(node.layer.fire, jit_compile=True, autograph=False)
                if fused_neurons and getattr(node.layer, "neuron", None) is not None
                else node.layer.fire
            )
            for node in plan.nodes if node.synaptic
        }

    def initial_states(self, batch_size):
        """Every dynamic layer's state at rest, for a batch."""
        return tuple(
            node.layer.initial_state(batch_size) if isinstance(node.layer, SpikingLayer) else ()
            for node in self.plan.dynamic
        )

    def dropout_masks(self, batch_size, rate):
        """One inverted-dropout mask per synaptic layer with spike-event output
        (graded events of an average pooling without neuron included) and
        sample, for every step."""
        keep = 1.0 - rate
        masks = {}
        for node in self.plan.nodes:
            if node.synaptic and node.kind is Carries.SPIKES:
                shape = tf.concat([[batch_size], self.plan.output_shapes[node.key][1:]], 0)
                draw = tf.random.uniform(shape, dtype=self.dtype)
                masks[node.key] = tf.cast(draw < keep, self.dtype) / keep
        return masks

    def run(self, inputs, timesteps, record, states, first_step, masks, labels=None,
            readout_every=1, readout_into=None):
        """Simulate `timesteps` steps from `states`. Returns a dict of tensors.

        `record` says what the loop keeps besides the final states:
        - None: the readout of steps `readout_every`, `2 readout_every`, ...
          `(batch, T / readout_every, classes)`, nothing else;
        - "samples": also every sample's operations per layer, spike events
          and spike counts at every step, O(batch x T x layers) (`run`);
        - "totals": no readout; per step the operations per layer summed over
          the batch and, given `labels`, the number of correct predictions,
          and the spike counts per layer summed over batch and steps: O(T x
          layers), whatever the batch (`simulate`).
        `first_step` is the step count before this call (streaming input);
        `masks` maps layer keys to dropout masks (training only).

        `readout_into` (with `record` None): a `(variable, first_row)` pair.
        The kept readouts, through the head, are then written in place into
        rows `first_row ...` of the variable, `(N, T / readout_every,
        classes)`, as the loop runs, and the result holds no readout: no
        per-step tensors are collected, stacked and transposed (three copies
        of the readout at the end of a long run; `keras_snn.prediction`).
        """
        plan = self.plan
        batch_size = tf.shape(inputs)[0]
        fanouts = costs.fanout_maps(plan) if record else {}

        # Everything that does not change over time is computed once, here.
        values, currents = {}, {}
        if not plan.sequence_input:
            values[plan.input_key] = inputs
        for node in plan.nodes:
            if node.static:
                values[node.key], _ = self._run_layer(node, node.gather(values), (), 0)
            elif node.static_current:
                currents[node.key] = node.layer.compute_current(node.gather(values))
        static_values = dict(values)

        op_fanouts = [fanouts[node.key] for node in plan.op_nodes] if record else []
        if readout_into is not None:
            buffer, first_row = readout_into
            buffer_rows = tf.range(batch_size) + first_row

        def one_step(step, states):
            """Advance every layer one step: (values, new states, op nodes' inputs)."""
            timestep = first_step + step
            values = dict(static_values)
            if plan.sequence_input:
                values[plan.input_key] = inputs[:, step]
            new_states, op_inputs = [], []
            for node, state in zip(plan.dynamic, states):
                if node.key in currents:  # time-invariant current: only the neuron runs
                    node_inputs = None
                    output, state = self._fire[node.key](currents[node.key], state)
                else:
                    node_inputs = node.gather(values)
                    output, state = self._run_layer(node, node_inputs, state, timestep)
                if node.key in masks:
                    output = output * masks[node.key]
                values[node.key] = output
                new_states.append(tuple(state))
                if record and node.counts_ops:  # all op nodes are dynamic, in plan order
                    op_inputs.append(node_inputs)
            return values, tuple(new_states), op_inputs

        def spikes_of(values):
            return [values[node.key] for node in plan.spiking_nodes]

        if record == "totals":
            def count_totals(values, op_inputs):
                return self._count_step(
                    spikes_of(values), op_inputs, op_fanouts, True, bool(masks)
                )

            return self._run_totals(one_step, count_totals, timesteps, states, labels)

        def body(step, states, readout_ta, ops_ta, events_ta, counts_ta):
            values, new_states, op_inputs = one_step(step, states)
            if record:
                ops, events, counts = self._count_step(
                    spikes_of(values), op_inputs, op_fanouts, False, bool(masks)
                )
                ops_ta = ops_ta.write(step, _stack(ops, batch_size))
                events_ta = events_ta.write(step, _stack(events, batch_size))
                counts_ta = counts_ta.write(step, _stack(counts, batch_size))
            readout = values[plan.output_key]

            def keep(position):
                if readout_into is None:
                    return readout_ta.write(position, readout)
                kept = readout if self.head is None else self.head(readout)
                # A scatter, not a slice assignment: XLA needs a slice's
                # bounds at compile time, and the rows and step are not.
                where = tf.stack([buffer_rows, tf.fill([batch_size], position)], axis=1)
                buffer.scatter_nd_update(where, tf.cast(kept, buffer.dtype))
                return readout_ta

            if isinstance(readout_every, int) and readout_every == 1:
                readout_ta = keep(step)
            else:  # only every k-th step's readout is kept
                readout_ta = tf.cond(
                    (step + 1) % readout_every == 0,
                    lambda: keep((step + 1) // readout_every - 1),
                    lambda: readout_ta,
                )
            return step + 1, new_states, readout_ta, ops_ta, events_ta, counts_ta

        def array(size):
            return tf.TensorArray(self.dtype, size=size)

        kept = timesteps if record else 0
        readouts = timesteps // readout_every if readout_into is None else 0
        _, final_states, readout_ta, ops_ta, events_ta, counts_ta = tf.while_loop(
            lambda step, *_: step < timesteps,
            body,
            (tf.constant(0), states, array(readouts), array(kept), array(kept), array(kept)),
            maximum_iterations=timesteps,
            parallel_iterations=self._parallel_iterations(in_place=readout_into is not None),
        )
        result = {"states": final_states}
        if readout_into is None:
            result["readout"] = _batch_major(readout_ta.stack())
        if record:
            result.update(
                layer_ops=_batch_major(ops_ta.stack()),
                spike_events=_batch_major(events_ta.stack()),
                spike_counts=_batch_major(counts_ta.stack()),
                input_macs=costs.input_macs(plan, fanouts),
            )
        return result

    def _run_totals(self, one_step, count_totals, timesteps, states, labels):
        """`run`'s loop for record="totals": batch sums only, O(T x layers)."""
        plan = self.plan

        def body(step, states, ops_ta, correct_ta, spikes):
            values, new_states, op_inputs = one_step(step, states)
            ops, spike_counts = count_totals(values, op_inputs)
            ops_ta = ops_ta.write(step, ops)
            spikes = spikes + spike_counts
            if labels is not None:
                readout = values[plan.output_key]
                if self.head is not None:
                    readout = self.head(readout)
                predictions = tf.argmax(readout, axis=-1, output_type=tf.int32)
                correct_ta = correct_ta.write(
                    step, tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float64))
                )
            return step + 1, new_states, ops_ta, correct_ta, spikes

        _, final_states, ops_ta, correct_ta, spikes = tf.while_loop(
            lambda step, *_: step < timesteps,
            body,
            (tf.constant(0), states, tf.TensorArray(tf.float64, size=timesteps),
             tf.TensorArray(tf.float64, size=timesteps if labels is not None else 0),
             tf.zeros([len(plan.spiking_nodes)], tf.float64)),
            maximum_iterations=timesteps,
            parallel_iterations=self._parallel_iterations(in_place=False),
        )
        result = {
            "states": final_states,
            "layer_ops": ops_ta.stack(),  # (T, op layers)
            "spike_counts": spikes,  # (spiking layers,)
        }
        if labels is not None:
            result["correct"] = correct_ta.stack()  # (T,)
        return result

    def _parallel_iterations(self, in_place):
        """`parallel_steps`, or for None ("auto"): 1 writing a readout in place, else 10."""
        if self.parallel_steps is not None:
            return self.parallel_steps
        return 1 if in_place else OVERLAPPED_STEPS

    def _run_layer(self, node, inputs, states, timestep):
        if node.synaptic:
            if self.synapse_dtype is not None and node.spike_products:
                current = node.layer.reduced_precision_current(inputs, self.synapse_dtype)
            else:
                current = node.layer.compute_current(inputs)
            return self._fire[node.key](current, tuple(states))
        if isinstance(node.layer, SpikingLayer):
            return node.layer.step(inputs, states, timestep)
        return node.layer(inputs), ()

    def _count_step(self, spikes, op_inputs, op_fanouts, totals, scaled=False):
        """One step's records from the spiking layers' outputs and the op nodes' inputs.

        Per sample (`totals` False): (operations per op node, spike events
        and spike magnitudes `sum |s|` per spiking node), three lists of
        `(batch,)` tensors. Summed over the batch (`totals` True): (ops
        `(op nodes,)`, magnitudes `(spiking nodes,)`), in float64: a batch's
        operations per step pass 2**24 (float32's last exact integer) for
        networks of a few million synapses. `scaled`: dropout scaled the
        spikes (training), so no spike value is known to be 0/1 or -1/0/1.
        """
        plan = self.plan
        ops = [
            costs.synaptic_ops(node, inputs, fanouts, scaled)
            for node, inputs, fanouts in zip(plan.op_nodes, op_inputs, op_fanouts)
        ]
        events, counts = [], []
        for node, values in zip(plan.spiking_nodes, spikes):
            if node.binary and not scaled:  # a binary spike is its own event
                counts.append(_per_sample_sum(values))
                events.append(counts[-1])
            elif node.unit and not scaled:  # -1, 0 or 1: the magnitude counts the events
                counts.append(_per_sample_sum(tf.abs(values)))
                events.append(counts[-1])
            else:
                counts.append(_per_sample_sum(tf.abs(values)))
                if not totals:
                    events.append(_per_sample_sum(costs.event_mask(values, False)))
        if totals:
            return _batch_sum(ops), _batch_sum(counts)
        return ops, events, counts


def _batch_sum(per_sample):
    """A list of `(batch,)` tensors -> their sums over the batch, float64 `(len,)`."""
    if not per_sample:
        return tf.zeros([0], tf.float64)
    return tf.reduce_sum(tf.cast(tf.stack(per_sample, axis=-1), tf.float64), axis=0)


def _per_sample_sum(x):
    return tf.reduce_sum(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


def _stack(per_layer, batch_size):
    if not per_layer:
        return tf.zeros([batch_size, 0])
    return tf.stack(per_layer, axis=-1)


def _batch_major(stacked):
    """(T, batch, ...) -> (batch, T, ...)."""
    rank = stacked.shape.rank
    return tf.transpose(stacked, [1, 0] + list(range(2, rank)))
