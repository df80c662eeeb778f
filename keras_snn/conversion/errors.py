"""The error convert_model raises for anything it cannot convert."""


class ConversionError(ValueError):
    """A model (or a layer of it) that keras_snn cannot convert.

    Raised before anything is built; the message names the layer, its class
    and what is supported instead. A `ValueError` subclass, so existing
    `except ValueError` handlers keep working.
    """
