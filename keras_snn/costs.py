"""What a spiking network's work costs: fan-out maps, operations, MACs, neurons.

Synaptic operations (Dutson, Li and Gupta, "Spike-Based Anytime
Perception", eq. A of its supplement): every spike event costs one accumulate per nonzero outgoing synapse. Each
synaptic layer's fan-out map (an input-shaped tensor that accounts for
stride, padding, dilation and zero weights) is computed once per call,
outside the time loop, and `ops(t) = sum (s(t) != 0) * fanout`. Negative and
multi-bit spikes count as one event each. Layers fed by analog input do
multiply-accumulates, not synaptic events: their work is `input_macs` per
step. These functions read a `keras_snn.plan.Plan`.
"""

import tensorflow as tf

from keras_snn.plan import Carries


def fanout_maps(plan):
    """Dict key -> the synaptic layer's fan-out maps, one per input."""
    return {node.key: node.layer.fanout_maps() for node in plan.nodes if node.synaptic}


def event_mask(x, binary, unit=False):
    """1 where a spike event happened.

    Binary spikes (0/1) are their own mask and unit spikes (-1/0/1) their
    absolute value: one pass fewer than comparing and casting.
    """
    if binary:
        return x
    if unit:
        return tf.abs(x)
    return tf.cast(tf.not_equal(x, 0), x.dtype)


def synaptic_ops(node, inputs, fanouts, scaled=False):
    """A layer's operations per sample: its input events times their fan-out.

    One matrix-vector product per spike input, `(batch, N) @ (N,)`; analog
    inputs and currents cost no synaptic operations. `scaled`: the spikes
    were scaled (training-time dropout), so their values are not 0/1 or
    -1/0/1 and every event is found by comparison.
    """
    inputs = inputs if isinstance(inputs, list) else [inputs]
    total = 0.0
    for x, fanout, kind, binary, unit in zip(
        inputs, fanouts, node.input_kinds, node.input_binary, node.input_unit
    ):
        if kind is Carries.SPIKES:
            mask = event_mask(x, binary and not scaled, unit and not scaled)
            events = tf.reshape(mask, [tf.shape(x)[0], -1])
            total += tf.linalg.matvec(events, tf.reshape(fanout, [-1]))
    return total


def input_macs(plan, fanouts):
    """MACs per sample and step of the synaptic layers fed by analog input.

    Analog input is multiplied, not accumulated as events: each input value
    meets every nonzero outgoing weight once per step.
    """
    total = tf.constant(0.0)
    for node in plan.nodes:
        for fanout, kind in zip(fanouts.get(node.key, ()), node.input_kinds):
            if kind is Carries.ANALOG:
                total += tf.reduce_sum(fanout)
    return total


def ann_macs(plan):
    """Dict key -> MACs of one ANN forward pass (nonzero weights only)."""
    return {
        key: float(sum(tf.reduce_sum(fanout) for fanout in maps))
        for key, maps in fanout_maps(plan).items()
    }


def neuron_counts(plan):
    """Dict key -> number of neurons, for the layers whose spikes are recorded."""
    return {node.key: plan.neurons(node.key) for node in plan.spiking_nodes}
