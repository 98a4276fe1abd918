"""The pipeline's training helpers: augmentation, fine-tuning from a model, keeping the best dev epoch, the CRF
stage on augmented copies."""

import numpy as np
import pytest

from unet.augment import augment

#: colour and noise off: geometry alone
GEOMETRY = dict(brightness=0.0, contrast=(1.0, 1.0), saturation=(1.0, 1.0), channel_gain=0.0, noise=0.0)
#: geometry off but the flips (which are always drawn)
NO_GEOMETRY = dict(rotation=0.0, scale=(1.0, 1.0))


def _squares(n=6, size=40, seed=0):
    """Bright rectangles on a dark ground; the mask is the rectangle."""
    rng = np.random.default_rng(seed)
    images = np.full((n, size, size, 3), 0.1, np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y0, x0 = rng.integers(4, size // 2, 2)
        y1, x1 = y0 + rng.integers(8, size // 2), x0 + rng.integers(8, size // 2)
        masks[i, y0:y1, x0:x1] = 1
        images[i, y0:y1, x0:x1] = 0.9
    return images, masks


def _flipped_to(aug_mask, mask):
    """``mask`` flipped the way that makes it ``aug_mask``, or None."""
    for m in (mask, mask[:, ::-1], mask[::-1], mask[::-1, ::-1]):
        if np.array_equal(m, aug_mask):
            return m
    return None


def test_geometry_moves_image_and_mask_together():
    images, masks = _squares()
    x, y = augment(images, masks, seed=3, strength=dict(GEOMETRY, rotation=15.0, scale=(0.8, 1.2)))
    assert x.shape == images.shape and x.dtype == np.float32 and y.shape == masks.shape and y.dtype == np.uint8
    assert set(np.unique(y)) <= {0, 1}
    moved = 0
    for xi, yi, mi in zip(x, y, masks):
        moved += _flipped_to(yi, mi) is None
        # the image's bright part is the mask, but for the bilinear image's edge pixels
        assert np.mean((xi[..., 0] > 0.5) == (yi == 1)) > 0.97
    assert moved >= len(masks) // 2  # rotations and scales changed most masks


def test_colour_and_noise_change_the_image_alone():
    images, masks = _squares()
    x, y = augment(images, masks, seed=1, strength=NO_GEOMETRY)
    for xi, yi, mi in zip(x, y, masks):
        assert _flipped_to(yi, mi) is not None  # only flips moved the mask
        assert 0.0 <= xi.min() and xi.max() <= 1.0
    assert not np.allclose(x, augment(images, masks, seed=1, strength=dict(NO_GEOMETRY, **GEOMETRY))[0])
    # noise: the default strengths add none; with `noise`, pixels of one flat region differ
    quiet, _ = augment(images, masks, seed=2, strength=dict(NO_GEOMETRY, **GEOMETRY))
    noisy, _ = augment(images, masks, seed=2, strength=dict(NO_GEOMETRY, **dict(GEOMETRY, noise=0.1)))
    spread = []
    for q, z in zip(quiet, noisy):
        ground = q[..., 0] < 0.5  # the flat dark ground (the same flips: the same seed)
        assert q[ground].std() < 1e-6
        spread.append(z[ground].std())
        assert 0.0 <= z.min() and z.max() <= 1.0
    assert min(spread) > 0.0 and np.mean(spread) > 0.01  # each image draws its own deviation up to 0.1


def test_augmentation_is_seeded_per_sample():
    images, masks = _squares()
    a = augment(images, masks, seed=[5, 0])
    b = augment(images, masks, seed=[5, 0], workers=1)
    head = augment(images[:3], masks[:3], seed=[5, 0])
    other = augment(images, masks, seed=[5, 1])
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0][:3], head[0])  # sample i depends on (seed, i) only
    assert not np.array_equal(a[0], other[0])
    np.testing.assert_array_equal(images, _squares()[0])  # the inputs are untouched


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("tensorflow")
    from unet import data

    return data.synthetic_splits(8, 4, 0, seed=0, size=64)


@pytest.fixture(scope="module")
def tiny_unet(tiny):
    """A U-Net trained one epoch on ``tiny`` (shared: each new U-Net costs seconds of tracing)."""
    from unet.pipeline import train_unet

    return train_unet(tiny["train"], tiny["dev"], epochs=1, batch_size=4, verbose=0, augmentation=False,
                      jit_compile=False)[0]


def _dev_loss(model, ds):
    from unet.pipeline import _dev_loss

    return _dev_loss(model, ds, 4)


def _trained(model):
    """The weights that training moves, frozen or not (batch norm's moving statistics move whatever the learning
    rate)."""
    out = [w.numpy() for w in model.weights if "moving" not in w.path]
    assert len(out) > 10
    return out


def test_fine_tuning_starts_from_the_init_model(tiny, tiny_unet):
    import keras

    from unet.model import build_unet
    from unet.pipeline import attach_crf, train_unet

    first = tiny_unet
    # a vanishing learning rate: what comes back is where training started
    tuned, h_tuned = train_unet(tiny["train"], tiny["dev"], epochs=1, batch_size=4, verbose=0, augmentation=False,
                                init=first, learning_rate=1e-12, keep_best=False)
    assert h_tuned["best_epoch"] == 1  # keep_best=False: the last epoch
    keras.utils.set_random_seed(1)
    scratch = build_unet(size=64)  # where training from scratch starts
    reference = _trained(first)
    for a, b in zip(reference, _trained(tuned)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert max(np.abs(a - b).max() for a, b in zip(reference, _trained(scratch))) > 1e-2
    # the U-Net inside a U-Net + CRF model is taken too
    from_crf, _ = train_unet(tiny["train"], tiny["dev"], epochs=1, batch_size=4, verbose=0, augmentation=False,
                             init=attach_crf(first, learn_widths=False), learning_rate=1e-12, keep_best=False)
    for a, b in zip(reference, _trained(from_crf)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="takes \\(64, 64\\) images but the data is 32x32"):
        from unet import data

        small = data.synthetic_splits(2, 1, 0, seed=0, size=32)
        train_unet(small["train"], small["dev"], epochs=1, verbose=0, init=first)


def test_the_best_dev_epoch_is_kept(tiny):
    from unet.pipeline import train_unet

    # a learning rate high enough that the dev loss does not fall every epoch
    model, history = train_unet(tiny["train"], tiny["dev"], epochs=6, batch_size=4, verbose=0, augmentation=False,
                                learning_rate=0.05)
    val = history["val_loss"]
    assert history["val_epochs"] == [4, 5, 6]  # from the middle epoch on
    assert len(val) == 3 and history["best_epoch"] == history["val_epochs"][int(np.argmin(val))]
    assert _dev_loss(model, tiny["dev"]) == pytest.approx(min(val), rel=1e-3, abs=1e-4)


def test_averaging_the_last_epochs(tiny, tiny_unet):
    """``average_last``: the returned weights are the mean of the last epochs' (here one: the last epoch's)."""
    from unet.pipeline import _average_weights, train_unet

    a = [np.array([1.0, 2.0], np.float32), np.array(3, np.int64)]
    b = [np.array([3.0, 6.0], np.float32), np.array(5, np.int64)]
    avg = _average_weights([a, b])
    np.testing.assert_array_equal(avg[0], [2.0, 4.0])
    assert avg[0].dtype == np.float32 and avg[1] == 5  # counters keep the last value
    model, history = train_unet(tiny["train"], tiny["dev"], epochs=1, batch_size=4, verbose=0, average_last=1,
                                augmentation=False, jit_compile=False)
    # tiny_unet: the same training, its one epoch kept as the best
    assert history["averaged_epochs"] == [1] and history["best_epoch"] is None
    for x, y in zip(model.get_weights(), tiny_unet.get_weights()):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_crf_stage_trains_on_augmented_copies(tiny, tiny_unet):
    from unet.pipeline import attach_crf, train_crf

    unet = tiny_unet
    runs = {}
    for aug in (None, dict(noise=0.05)):
        model = attach_crf(unet)
        _, history = train_crf(model, tiny["train"], tiny["dev"], epochs=1, batch_size=4, verbose=0,
                               keep_best=False, augmentation=aug)
        runs[str(aug)] = history
        assert np.isfinite(history["loss"][0])
    # the same seed and batch order: only the images differ
    assert runs["None"]["loss"][0] != runs[str(dict(noise=0.05))]["loss"][0]
    assert runs["None"]["widths"][0] != runs[str(dict(noise=0.05))]["widths"][0]


@pytest.mark.parametrize("island_cost", [0.0, 0.5])
def test_crf_stage_keeps_the_epoch_with_the_best_dev_dice_and_islands(tiny, tiny_unet, island_cost):
    from unet import metrics
    from unet.pipeline import attach_crf, train_crf

    unet = tiny_unet
    # large steps, so that the epochs differ on dev
    model, history = train_crf(attach_crf(unet), tiny["train"], tiny["dev"], epochs=3, batch_size=4, verbose=0,
                               learning_rate=0.05, widths_learning_rate=0.3, island_cost=island_cost)
    dice, islands = np.array(history["val_dice"]), np.array(history["val_islands"])
    assert len(dice) == len(islands) == len(history["val_loss"]) == 3
    start = attach_crf(unet).predict(tiny["dev"].images, verbose=0).argmax(-1).astype(np.uint8)
    s0 = metrics.summarise(start, tiny["dev"].masks)
    scores = np.concatenate([[s0["dice"] - island_cost * s0["islands_per_image"]], dice - island_cost * islands])
    assert history["best_epoch"] == int(np.argmax(scores))  # 0: the untrained start
    kept = metrics.summarise(model.predict(tiny["dev"].images, verbose=0).argmax(-1).astype(np.uint8),
                             tiny["dev"].masks)
    assert kept["dice"] - island_cost * kept["islands_per_image"] == pytest.approx(scores.max(), abs=1e-6)


def test_recomputed_batchnorm_predicts_as_the_batch_statistics(tiny):
    """After ``recompute_batchnorm(model, x)`` the model in inference mode gives on ``x`` what training mode (batch
    statistics) gives: the moving averages it replaced did not."""
    import keras

    from unet.model import build_unet
    from unet.pipeline import recompute_batchnorm

    keras.utils.set_random_seed(0)
    model = build_unet(size=64)
    x = tiny["train"].images
    model(x, training=True)  # moving averages one step from their start: far from the batch's
    batch = np.asarray(model(x, training=True))
    assert np.abs(np.asarray(model(x, training=False)) - batch).max() > 1e-2
    recompute_batchnorm(model, x)
    np.testing.assert_allclose(np.asarray(model(x, training=False)), batch, rtol=1e-3, atol=1e-3)
    assert all(layer.momentum == 0.99 for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))


def test_the_default_unet_is_separable_below_its_first_level():
    import keras

    from unet.model import build_unet

    model = build_unet(size=64)
    kinds = {layer.name: type(layer) for layer in model.layers}
    assert kinds["down0_conv0"] is keras.layers.Conv2D and kinds["dec0_conv1"] is keras.layers.Conv2D
    separable = keras.layers.SeparableConv2D
    assert kinds["down1_conv0"] is separable and kinds["bottleneck_conv1"] is separable
    assert model.get_layer("down4_conv0").output.shape[1:3] == (4, 4)  # five levels
    plain = build_unet(size=64, filters=(8, 16, 32, 64), bottleneck=128, separable_from=5)
    assert not any(isinstance(layer, keras.layers.SeparableConv2D) for layer in plain.layers)
    with pytest.raises(ValueError, match="divisible by 32"):
        build_unet(size=48)
