"""The papers' reference architectures as Keras models, ready to train and convert.

Tables B-D are those of the supplementary material of "Spike-Based Anytime
Perception" (Dutson, Li, Gupta); VGG6 is from "DIET-SNN: A Low-Latency Spiking
Neural Network with Direct Input Encoding & Leakage and Threshold Optimization".

- `dense_mnist`: Table B (128-128-classes).
- `conv_mnist`: Table C (two 32-filter convs, pool, two 64-filter
  convs, pool, 128, classes).
- `conv_cifar`: Table D (3x64, pool, 3x128, pool, 3x256, pool, 512).
- `resnet_small`: a post-activation ResNet (conv stem, two stages of two basic
  blocks with BN and identity or 1x1-projection shortcuts, global pooling).
- `vgg6`: DIET-SNN's VGG6 ({64, A, 128, 128, A}, Linear) with dropout.

Every weighted layer except the last is followed by BatchNormalization (with
gamma fixed to 1, as in Spike-Based Anytime Perception) and an activation; the last layer
outputs logits (no softmax: train with `from_logits=True`). Pooling is average
pooling, which has an exact spiking form.
"""

import keras


def _activation(activation):
    """A fresh activation layer: "relu" or a callable returning a layer (e.g. QReLU)."""
    if activation == "relu":
        return keras.layers.ReLU()
    if callable(activation):
        return activation()
    raise ValueError(f"`activation` must be 'relu' or a callable making a layer; got {activation!r}.")


def _norm(batch_norm):
    # momentum 0.9: Keras's default 0.99 leaves the moving variance near its
    # initial 1 for hundreds of steps, which conversion then folds in.
    return [keras.layers.BatchNormalization(momentum=0.9, scale=False)] if batch_norm else []


def _block(layer, activation, batch_norm):
    return [layer, *_norm(batch_norm), _activation(activation)]


def dense_mnist(input_shape=(28, 28, 1), classes=10, activation="relu", batch_norm=True):
    """Spike-Based Anytime Perception, Table B: fully connected 128-128-classes."""
    layers = [keras.Input(input_shape), keras.layers.Flatten()]
    for units in (128, 128):
        layers += _block(keras.layers.Dense(units), activation, batch_norm)
    layers.append(keras.layers.Dense(classes))
    return keras.Sequential(layers, name="dense_mnist")


def conv_mnist(input_shape=(28, 28, 1), classes=10, activation="relu", batch_norm=True):
    """Spike-Based Anytime Perception, Table C: 32-32-pool-64-64-pool-128-classes.

    Convolutions are 3x3 with 'same' padding.
    """
    layers = [keras.Input(input_shape)]
    for filters in (32, 32):
        layers += _block(keras.layers.Conv2D(filters, 3, padding="same"), activation, batch_norm)
    layers.append(keras.layers.AveragePooling2D(2))
    for filters in (64, 64):
        layers += _block(keras.layers.Conv2D(filters, 3, padding="same"), activation, batch_norm)
    layers += [keras.layers.AveragePooling2D(2), keras.layers.Flatten()]
    layers += _block(keras.layers.Dense(128), activation, batch_norm)
    layers.append(keras.layers.Dense(classes))
    return keras.Sequential(layers, name="conv_mnist")


def conv_cifar(input_shape=(32, 32, 3), classes=10, activation="relu", batch_norm=True):
    """Spike-Based Anytime Perception, Table D: 3x64-pool-3x128-pool-3x256-pool-512-classes."""
    layers = [keras.Input(input_shape)]
    for filters in (64, 128, 256):
        for _ in range(3):
            layers += _block(
                keras.layers.Conv2D(filters, 3, padding="same"), activation, batch_norm
            )
        layers.append(keras.layers.AveragePooling2D(2))
    layers.append(keras.layers.Flatten())
    layers += _block(keras.layers.Dense(512), activation, batch_norm)
    layers.append(keras.layers.Dense(classes))
    return keras.Sequential(layers, name="conv_cifar")


def vgg6(input_shape=(28, 28, 1), classes=10, activation="relu", dropout=0.2, batch_norm=False):
    """DIET-SNN VGG6 scaled to small images: {64, A, 128, 128, A}, Linear."""
    layers = [keras.Input(input_shape)]
    layers += _block(keras.layers.Conv2D(64, 3, padding="same"), activation, batch_norm)
    layers.append(keras.layers.AveragePooling2D(2))
    for _ in range(2):
        layers += _block(keras.layers.Conv2D(128, 3, padding="same"), activation, batch_norm)
    layers += [keras.layers.AveragePooling2D(2), keras.layers.Flatten()]
    layers += _block(keras.layers.Dense(512), activation, batch_norm)
    layers += [keras.layers.Dropout(dropout), keras.layers.Dense(classes)]
    return keras.Sequential(layers, name="vgg6")


def resnet_small(input_shape=(28, 28, 1), classes=10, activation="relu", width=16):
    """A post-activation ResNet: stem, 2 stages x 2 basic blocks, global pooling.

    Blocks compute `act(BN(conv(act(BN(conv(x))))) + shortcut(x))`, the form
    convert_model turns into a weighted spiking add (section C of "A High
    Performance and Low Latency Deep Spiking Neural Networks Conversion
    Framework").
    """
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in _block(keras.layers.Conv2D(width, 3, padding="same"), activation, True):
        x = layer(x)
    for stage, filters in enumerate((width, 2 * width)):
        for block in range(2):
            strides = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            if strides != 1 or x.shape[-1] != filters:
                shortcut = keras.layers.Conv2D(filters, 1, strides=strides)(x)
                shortcut = _norm(True)[0](shortcut)
            y = keras.layers.Conv2D(filters, 3, strides=strides, padding="same")(x)
            y = _norm(True)[0](y)
            y = _activation(activation)(y)
            y = keras.layers.Conv2D(filters, 3, padding="same")(y)
            y = _norm(True)[0](y)
            x = _activation(activation)(keras.layers.Add()([y, shortcut]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes)(x)
    return keras.Model(inputs, outputs, name="resnet_small")
