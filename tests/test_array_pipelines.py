"""unet.array_pipelines: Keras's pipelines for NumPy arrays built without tf.data's autotuning, same training."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from unet.array_pipelines import active, without_autotune  # noqa: E402


def _autotuned():
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter

    x = np.zeros((10, 3), np.float32)
    dataset = ArrayDataAdapter(x, np.zeros(10), batch_size=4, shuffle=True).get_tf_dataset()
    return dataset.options().autotune.enabled is not False


def test_pipelines_built_inside_a_block_are_not_autotuned():
    assert _autotuned() and not active()
    with without_autotune():
        assert not _autotuned()
        with without_autotune():  # blocks nest
            assert not _autotuned()
        assert active() and not _autotuned()
    assert _autotuned() and not active()


def _trained_weights():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 2, 40)
    for _ in range(2):  # one fit per epoch, as train_unet
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    return model.get_weights(), model.predict(x, batch_size=8, verbose=0)


def test_training_inside_a_block_gives_the_same_weights_and_predictions():
    weights, preds = _trained_weights()
    with without_autotune():
        weights_b, preds_b = _trained_weights()
    for a, b in zip(weights + [preds], weights_b + [preds_b]):
        np.testing.assert_array_equal(a, b)
