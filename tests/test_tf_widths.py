"""CrfRnnLayer(trainable_widths=True): the widths and the image get exact gradients, train, save and load."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import crfcore  # noqa: E402
from crfcore.adapters.tf import CrfRnnLayer, with_backend  # noqa: E402
from test_tf_layer import frozen_feature_model, toy_batch  # noqa: E402

WIDTHS = dict(theta_alpha=5.37, theta_beta=41.3, theta_gamma=1.73)  # off the pixel grid's simplex boundaries


def test_width_and_image_gradients_match_finite_differences(rng):
    logits, image, _ = toy_batch(rng, batch=2, h=6, w=7)
    layer = CrfRnnLayer(num_iterations=3, trainable_widths=True, dtype="float64", **WIDTHS)
    x = tf.constant(logits.astype(np.float64))
    img = tf.constant(image.astype(np.float64))
    g = tf.constant(rng.normal(size=logits.shape))
    with tf.GradientTape() as tape:
        tape.watch(img)
        y = tf.reduce_sum(layer([x, img]) * g)
    names = [w.name for w in layer.trainable_weights]
    assert names[3:] == ["log_theta_alpha", "log_theta_beta", "log_theta_gamma"]
    grads = tape.gradient(y, [img] + layer.trainable_weights)

    def loss(image_value):
        return float(tf.reduce_sum(layer([x, image_value]) * g))

    eps = 1e-6
    v = rng.normal(size=image.shape)
    numeric = (loss(img + eps * v) - loss(img - eps * v)) / (2 * eps)
    np.testing.assert_allclose(np.sum(grads[0].numpy() * v), numeric, rtol=1e-5, atol=1e-9 * abs(loss(img)))
    for var, analytic in zip(layer.trainable_weights[3:], grads[4:]):
        base = var.numpy()
        var.assign(base + eps)
        plus = loss(img)
        var.assign(base - eps)
        minus = loss(img)
        var.assign(base)
        np.testing.assert_allclose(float(analytic), (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-9 * abs(plus),
                                   err_msg=var.name)


def test_layer_width_gradients_equal_the_cores(rng):
    logits, image, _ = toy_batch(rng, batch=3, h=9, w=8)
    layer = CrfRnnLayer(num_iterations=4, trainable_widths=True, normalization="symmetric", **WIDTHS)
    g = rng.normal(size=logits.shape).astype(np.float32)
    img = tf.constant(image)
    with tf.GradientTape() as tape:
        tape.watch(img)
        y = tf.reduce_sum(layer([logits, img]) * g)
    grads = tape.gradient(y, [img] + layer.trainable_weights[3:])
    # the layer's widths are exp(float32 logs), within 1e-7 of WIDTHS; the core gets exactly those (theta_beta's
    # gradient moved by 1.6e-4 between 41.3 and the layer's 41.299995)
    widths = layer.current_widths()
    np.testing.assert_allclose([widths[k] for k in WIDTHS], list(WIDTHS.values()), rtol=2e-7)
    out, res = crfcore.meanfield_fwd(logits, image, n_iter=4, normalization="symmetric", output="logits",
                                     w_spatial=3.0, w_bilateral=10.0, **widths)
    core = crfcore.meanfield_bwd(res, g)
    np.testing.assert_allclose(grads[0].numpy(), core.image, rtol=1e-4, atol=1e-4 * np.abs(core.image).max())
    for name, got in zip(("theta_alpha", "theta_beta", "theta_gamma"), grads[1:]):
        # d/dlog(theta) = theta * d/dtheta; float32 sums
        np.testing.assert_allclose(float(got), widths[name] * getattr(core, name), rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("backend", ["tf", "tf-lite"])
def test_tf_backends_autodiff_agrees_with_the_core(rng, backend):
    logits, image, _ = toy_batch(rng, batch=2, h=12, w=10)
    g = rng.normal(size=logits.shape).astype(np.float32)
    results = {}
    for name in ("numba", backend):
        layer = CrfRnnLayer(num_iterations=3, trainable_widths=True, backend=name, **WIDTHS)
        img = tf.constant(image)
        with tf.GradientTape() as tape:
            tape.watch(img)
            y = tf.reduce_sum(layer([logits, img]) * g)
        results[name] = [t.numpy() for t in tape.gradient(y, [img] + layer.trainable_weights)]
    for ours, theirs, what in zip(results["numba"], results[backend], ["image", "W_s", "W_b", "mu", "log a", "log b",
                                                                       "log g"]):
        # float32 in both, summed in other orders; the widths' gradients are small differences of large terms
        np.testing.assert_allclose(theirs, ours, rtol=2e-2, atol=2e-3 * max(1.0, np.abs(ours).max()), err_msg=what)


def test_fit_moves_the_widths_and_lowers_the_loss(rng):
    _, image, truth = toy_batch(rng, batch=8, noise=0.0)
    image = image + rng.normal(0, 50, size=image.shape).astype(np.float32)
    features = frozen_feature_model(rng)
    crf = CrfRnnLayer(num_iterations=3, trainable_widths=True, name="crfrnn", theta_alpha=30.0, theta_beta=80.0,
                      theta_gamma=3.0)
    model = keras.Model(features.inputs, crf([features.outputs[0], features.inputs[0]]))
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = crf.current_widths()
    history = model.fit(image, truth, batch_size=4, epochs=6, verbose=0, shuffle=False)
    after = crf.current_widths()
    assert history.history["loss"][-1] < 0.9 * history.history["loss"][0]
    for name in before:
        assert abs(np.log(after[name] / before[name])) > 0.02, (name, before, after)
        assert after[name] > 0


def test_keras_file_and_config_round_trip(rng, tmp_path):
    layer = CrfRnnLayer(image_dims=(16, 20), num_classes=2, num_iterations=3, trainable_widths=True, name="crfrnn",
                        **WIDTHS)
    lg_in, im_in = keras.Input((16, 20, 2)), keras.Input((16, 20, 3))
    model = keras.Model([lg_in, im_in], layer([lg_in, im_in]))
    layer.log_theta_alpha.assign(np.log(7.77))
    layer.log_theta_beta.assign(np.log(22.2))
    config = layer.get_config()
    assert config["trainable_widths"] is True
    assert config["theta_alpha"] == pytest.approx(7.77, rel=1e-6) and config["theta_beta"] == pytest.approx(22.2,
                                                                                                              rel=1e-6)
    assert CrfRnnLayer.from_config(config).get_config() == config
    logits, image, _ = toy_batch(rng)
    expected = model.predict([logits, image], verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict([logits, image], verbose=0), expected)
    assert loaded.get_layer("crfrnn").current_widths() == layer.current_widths()
    # the learned widths are what the forward uses
    z, _ = crfcore.meanfield_fwd(logits, image, n_iter=3, normalization="after", output="logits", w_spatial=3.0,
                                 w_bilateral=10.0, **layer.current_widths())
    np.testing.assert_allclose(expected, z, rtol=1e-4, atol=1e-4)
    tf_copy = with_backend(model, "tf")
    np.testing.assert_allclose(tf_copy.predict([logits, image], verbose=0), expected, atol=1e-3)


def test_bad_widths_are_named(rng):
    with pytest.raises(TypeError, match="trainable_widths"):
        CrfRnnLayer(trainable_widths="yes")
    logits, image, _ = toy_batch(rng, batch=1)
    layer = CrfRnnLayer(trainable_widths=True, theta_alpha=5.0)
    layer([logits, image])
    layer.log_theta_alpha.assign(np.nan)
    with pytest.raises(ValueError, match="theta_alpha"):
        layer([logits, image])


def test_some_widths_learned_the_others_held(rng, tmp_path):
    """``trainable_widths=("theta_alpha", "theta_beta")``: those two train (as the pipeline's default does),
    theta_gamma stays the constant it was given, through fit, the config and a .keras round trip."""
    _, image, truth = toy_batch(rng, batch=8, noise=0.0)
    image = image + rng.normal(0, 50, size=image.shape).astype(np.float32)
    features = frozen_feature_model(rng)
    crf = CrfRnnLayer(num_iterations=3, trainable_widths=["theta_beta", "theta_alpha"], name="crfrnn",
                      theta_alpha=30.0, theta_beta=80.0, theta_gamma=3.0)
    model = keras.Model(features.inputs, crf([features.outputs[0], features.inputs[0]]))
    assert [w.name for w in crf.trainable_weights][3:] == ["log_theta_alpha", "log_theta_beta"]
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(image, truth, batch_size=4, epochs=4, verbose=0, shuffle=False)
    after = crf.current_widths()
    assert abs(np.log(after["theta_alpha"] / 30.0)) > 0.02 and abs(np.log(after["theta_beta"] / 80.0)) > 0.02
    assert after["theta_gamma"] == 3.0
    config = crf.get_config()
    assert config["trainable_widths"] == ["theta_alpha", "theta_beta"]
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path).get_layer("crfrnn")
    assert loaded.current_widths() == after and loaded.learned_widths == ("theta_alpha", "theta_beta")
    with pytest.raises(ValueError, match="unknown widths \\['theta_delta'\\]"):
        CrfRnnLayer(trainable_widths=["theta_alpha", "theta_delta"])
