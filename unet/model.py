"""The U-Net (Ronneberger et al. 2015) of the pipeline, built from scratch: no pretrained weights."""

import keras


@keras.saving.register_keras_serializable(package="unet")
class PerImageStandardization(keras.layers.Layer):
    """``(x - mean) / std`` over each image's pixels and channels: robust to exposure and white balance."""

    def call(self, x):
        mean = keras.ops.mean(x, axis=(1, 2, 3), keepdims=True)
        std = keras.ops.std(x, axis=(1, 2, 3), keepdims=True)
        return (x - mean) / (std + 1e-3)


def _conv_block(x, filters, name, separable=False):
    conv = keras.layers.SeparableConv2D if separable else keras.layers.Conv2D
    for i in range(2):
        x = conv(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_unet(size=224, n_classes=2, filters=(8, 24, 48, 96, 192), bottleneck=256, separable_from=1):
    """An encoder-decoder with skip connections that outputs per-pixel **logits** (no softmax).

    The default does more per CPU second than a plain U-Net: five levels (a 7x7 bottleneck at 224 px, so that a
    pixel's label can depend on most of the photo: is this white patch a sheet, the top one of a stack, or the
    desk?), with depthwise-separable convolutions below the first level, which leave room for more channels at low
    resolution. Its training step costs about what the earlier four-level plain U-Net's did (8-64 channels,
    bottleneck 128; ``filters=(8, 16, 32, 64), bottleneck=128, separable_from=4``).

    Parameters
    ----------
    size : int
        Input side; must be divisible by ``2 ** len(filters)``.
    n_classes : int
    filters : tuple of int
        Channels of each encoder level (the decoder mirrors them).
    bottleneck : int
        Channels at the lowest resolution.
    separable_from : int
        The first level whose convolutions are depthwise-separable (the bottleneck's too); ``len(filters) + 1``
        makes them all plain.

    Returns
    -------
    keras.Model
        ``image (B, size, size, 3) in [0, 1] -> logits (B, size, size, n_classes)``.
    """
    if size % (2 ** len(filters)):
        raise ValueError(f"size {size} must be divisible by {2 ** len(filters)} for {len(filters)} levels")
    inputs = keras.Input((size, size, 3), name="image")
    x, skips = PerImageStandardization(name="standardize")(inputs), []
    for level, f in enumerate(filters):
        x = _conv_block(x, f, f"down{level}", level >= separable_from)
        skips.append(x)
        x = keras.layers.MaxPooling2D(name=f"pool{level}")(x)
    x = _conv_block(x, bottleneck, "bottleneck", len(filters) >= separable_from)
    for level, (f, skip) in reversed(list(enumerate(zip(filters, skips)))):
        x = keras.layers.Conv2DTranspose(f, 2, strides=2, padding="same", name=f"up{level}")(x)
        x = keras.layers.Concatenate(name=f"skip{level}")([x, skip])
        x = _conv_block(x, f, f"dec{level}", level >= separable_from)
    logits = keras.layers.Conv2D(n_classes, 1, name="logits")(x)
    return keras.Model(inputs, logits, name="unet")
