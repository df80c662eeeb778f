"""Export a SpikingModel as a TensorFlow SavedModel for serving.

The SavedModel holds the whole compiled time loop and the weights. It loads
with `tf.saved_model.load` in a process that imports only TensorFlow (no
keras_snn, no Keras code needed), and serves through TF Serving: the
`serving_default` signature (also named `serve`) takes `inputs`, a batch of
any size, and returns `readout` `(batch, T, classes)` and `synaptic_ops`
`(batch, T)`.
"""

import keras
import tensorflow as tf


def export_saved_model(snn, filepath, timesteps=None, verbose=False):
    """Write `snn` as a SavedModel with a serving signature.

    Args:
        snn: a non-stateful `keras_snn.SpikingModel`.
        filepath: directory to write.
        timesteps: steps the served model runs (default: the model's; for
            event input, the number of frames given).
        verbose: print the exported variables.

    Returns:
        `filepath`.

    Raises:
        ValueError: for a stateful model (its state lives outside the graph).

    Example (in a fresh process, without keras_snn):

        served = tf.saved_model.load(filepath)
        out = served.signatures["serving_default"](inputs=tf.constant(x))
        out["readout"], out["synaptic_ops"]
    """
    if snn.stateful:
        raise ValueError(
            "A stateful SpikingModel keeps its state outside the graph and cannot be "
            "served; export a stateful=False copy: SpikingModel(snn.network, ...)."
        )
    per_call_steps = None if timesteps is None else int(timesteps)
    shape = snn.network.inputs[0].shape[1:]
    if snn.expects_sequence:
        shape = (None,) + tuple(shape)  # (batch, T, *frame)

    def serve(inputs):
        record = snn.run(inputs, timesteps=per_call_steps)
        return {"readout": record["readout"], "synaptic_ops": record["synaptic_ops"]}

    archive = keras.export.ExportArchive()
    archive.track(snn)
    archive.add_endpoint(
        "serve",
        serve,
        input_signature=[tf.TensorSpec((None, *shape), snn.compute_dtype, name="inputs")],
    )
    archive.write_out(filepath, verbose=verbose)
    return filepath
