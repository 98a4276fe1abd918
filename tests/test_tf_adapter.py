import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import crfcore  # noqa: E402
from crfcore.adapters import tf as adapter  # noqa: E402
from crfcore.adapters.tf import CrfRnnLayer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_batch(rng, batch=4, h=16, w=20, noise=1.2):
    """Images with a bright rectangle (the 'document') and noisy logits that roughly find it."""
    truth = np.zeros((batch, h, w), dtype=np.int64)
    for b in range(batch):
        y0, x0 = rng.integers(1, max(2, h // 3)), rng.integers(1, max(2, w // 3))
        truth[b, y0:y0 + h // 2, x0:x0 + w // 2] = 1
    image = np.where(truth[..., None] == 1, [220.0, 210.0, 200.0], [60.0, 80.0, 40.0])
    image = (image + rng.normal(0, 8, size=image.shape)).astype(np.float32)
    logits = np.stack([-(truth - 0.5) * 2, (truth - 0.5) * 2], -1) + rng.normal(0, noise, size=truth.shape + (2,))
    return logits.astype(np.float32), image, truth


def small_layer(**kw):
    args = dict(theta_alpha=8.0, theta_beta=40.0, theta_gamma=2.0, num_iterations=3)
    args.update(kw)
    return CrfRnnLayer(**args)


def test_output_matches_core_and_improves_noisy_logits(rng):
    logits, image, truth = toy_batch(rng)
    layer = small_layer()
    out = layer([logits, image]).numpy()
    assert out.shape == logits.shape and out.dtype == np.float32
    z, _ = crfcore.meanfield_fwd(logits, image, n_iter=3, theta_alpha=8.0, theta_beta=40.0, theta_gamma=2.0,
                                 w_spatial=3.0, w_bilateral=10.0, normalization="after", output="logits")
    np.testing.assert_allclose(out, z, rtol=1e-5, atol=1e-5)
    # untrained, the layer already cleans up a decent network's output (densecrf's defaults)
    assert np.mean(out.argmax(-1) == truth) > np.mean(logits.argmax(-1) == truth) + 0.03


def test_gradients_match_finite_differences(rng):
    # float64 policy: the core runs in float64, so central differences are accurate to ~1e-9.
    logits, image, _ = toy_batch(rng, batch=2, h=6, w=7)
    layer = small_layer(dtype="float64")
    x = tf.constant(logits.astype(np.float64))
    img = tf.constant(image.astype(np.float64))
    layer([x, img])
    for v in layer.trainable_weights:  # move away from the symmetric initial point
        v.assign(v.numpy() + rng.normal(scale=0.3, size=v.shape))
    g = tf.constant(rng.normal(size=logits.shape))

    def loss():
        return float(tf.reduce_sum(layer([x, img]) * g))

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(layer([x, img]) * g)
    grads = tape.gradient(y, [x] + layer.trainable_weights)
    eps = 1e-6
    probes = [(x, grads[0])] + list(zip(layer.trainable_weights, grads[1:]))
    for target, analytic in probes:
        for _ in range(2):
            v = rng.normal(size=target.shape)
            if isinstance(target, tf.Tensor):
                plus = loss_at(layer, x + eps * v, img, g)
                minus = loss_at(layer, x - eps * v, img, g)
            else:
                base = target.numpy()
                target.assign(base + eps * v)
                plus = loss()
                target.assign(base - eps * v)
                minus = loss()
                target.assign(base)
            numeric = (plus - minus) / (2 * eps)
            np.testing.assert_allclose(np.sum(analytic.numpy() * v), numeric, rtol=1e-6, atol=1e-7 * abs(loss()))


def loss_at(layer, x, img, g):
    return float(tf.reduce_sum(layer([x, img]) * g))


def test_tf_test_compute_gradient_logits(rng):
    logits, image, _ = toy_batch(rng, batch=1, h=5, w=6)
    layer = small_layer(dtype="float64")
    img = tf.constant(image.astype(np.float64))
    theoretical, numerical = tf.test.compute_gradient(lambda x: layer([x, img]), [logits.astype(np.float64)])
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-5, atol=1e-6)


def test_batch_of_four_equals_four_single_calls_and_graph_mode(rng):
    logits, image, _ = toy_batch(rng)
    layer = small_layer()
    batch = layer([logits, image]).numpy()
    single = np.concatenate([layer([logits[i:i + 1], image[i:i + 1]]).numpy() for i in range(4)])
    np.testing.assert_array_equal(batch, single)
    graph = tf.function(lambda a, b: layer([a, b]))(tf.constant(logits), tf.constant(image)).numpy()
    np.testing.assert_array_equal(graph, batch)


def test_dynamic_batch_and_spatial_size(rng):
    lg_in = keras.Input((None, None, 2))
    im_in = keras.Input((None, None, 3))
    model = keras.Model([lg_in, im_in], small_layer()([lg_in, im_in]))
    for batch, h, w in [(3, 16, 20), (5, 12, 9), (1, 7, 30)]:
        logits, image, _ = toy_batch(rng, batch, h, w)
        out = model.predict([logits, image], verbose=0, batch_size=batch)
        assert out.shape == (batch, h, w, 2)
    with pytest.raises(Exception, match="all axes but the last must match"):
        model([np.zeros((2, 8, 8, 2), np.float32), np.zeros((2, 8, 9, 3), np.float32)])


def frozen_feature_model(rng):
    """A 'trained' feature extractor: a 1x1 conv on the image that roughly separates bright from dark."""
    img_in = keras.Input((16, 20, 3))
    conv = keras.layers.Conv2D(2, 1, name="features")
    logits = conv(img_in)
    conv.set_weights([np.array([[[[-1.0, 1.0]] * 3]]).reshape(1, 1, 3, 2) / 150.0, np.array([0.8, -0.8])])
    model = keras.Model(img_in, logits)
    model.trainable = False
    return model


def test_training_step_updates_crf_weights_and_lowers_loss(rng):
    _, image, truth = toy_batch(rng, batch=8, noise=0.0)
    image = image + rng.normal(0, 50, size=image.shape).astype(np.float32)  # features alone are noisy
    features = frozen_feature_model(rng)
    crf = small_layer(name="crfrnn")
    model = keras.Model(features.inputs, crf([features.outputs[0], features.inputs[0]]))
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.numpy().copy() for w in crf.trainable_weights]
    frozen_before = [w.numpy().copy() for w in features.weights]
    history = model.fit(image, truth, batch_size=4, epochs=6, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert losses[-1] < losses[0] * 0.9
    for b, w in zip(before, crf.trainable_weights):
        assert np.abs(w.numpy() - b).max() > 1e-3
    for b, w in zip(frozen_before, features.weights):
        np.testing.assert_array_equal(w.numpy(), b)
    assert len(adapter._STORE) == 0  # every forward's residuals were consumed by its backward
    model.evaluate(image, truth, batch_size=4, verbose=0)
    assert len(adapter._STORE) == 0  # inference keeps nothing


def test_evicted_residuals_are_recomputed(rng):
    logits, image, _ = toy_batch(rng, batch=2)
    layer = small_layer()
    x = tf.constant(logits)

    @tf.function
    def grad_fn(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(layer([x, image]) ** 2)
        return tape.gradient(y, [x] + layer.trainable_weights)

    normal = [g.numpy() for g in grad_fn(x)]
    old = adapter._STORE.max_items
    adapter._STORE.max_items = 0  # evict everything but the newest entry... and pop it too
    try:
        original_pop = adapter._STORE.pop
        adapter._STORE.pop = lambda handle: (original_pop(handle), None)[1]
        evicted = [g.numpy() for g in grad_fn(x)]
    finally:
        adapter._STORE.pop = original_pop
        adapter._STORE.max_items = old
    for a, b in zip(normal, evicted):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_mixed_precision_policy(rng):
    logits, image, _ = toy_batch(rng, batch=2)
    layer = small_layer(dtype="mixed_float16")
    out = layer([logits, image])
    assert out.dtype == tf.float16
    assert layer.spatial_ker_weights.dtype == "float32"
    ref = small_layer()([logits, image]).numpy()
    np.testing.assert_allclose(out.numpy().astype(np.float32), ref, rtol=2e-2, atol=2e-2)


def test_config_round_trip_and_keras_file(rng, tmp_path):
    layer = CrfRnnLayer(image_dims=(16, 20), num_classes=2, theta_alpha=9.0, theta_beta=33.0, theta_gamma=2.5,
                        num_iterations=4, name="crfrnn")
    config = layer.get_config()
    again = CrfRnnLayer.from_config(config)
    assert again.get_config() == config
    lg_in, im_in = keras.Input((16, 20, 2)), keras.Input((16, 20, 3))
    model = keras.Model([lg_in, im_in], layer([lg_in, im_in]))
    for w in layer.trainable_weights:
        w.assign(w.numpy() + rng.normal(scale=0.2, size=w.shape))
    logits, image, _ = toy_batch(rng)
    expected = model.predict([logits, image], verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    np.testing.assert_array_equal(loaded.predict([logits, image], verbose=0), expected)
    assert loaded.get_layer("crfrnn").get_config() == config


def test_compute_output_shape():
    layer = CrfRnnLayer()
    assert layer.compute_output_shape([(None, 32, 48, 5), (None, 32, 48, 3)]) == (None, 32, 48, 5)


@pytest.mark.parametrize(
    "shapes, kwargs, match",
    [
        ([(2, 8, 8, 2), (3, 8, 8, 3)], {}, "batch"),
        ([(2, 8, 8, 2), (2, 8, 9, 3)], {}, "width"),
        ([(2, 8, 8, 1), (2, 8, 8, 3)], {}, "at least 2"),
        ([(8, 8, 2), (8, 8, 3)], {}, "ranks"),
        ([(2, 8, 8, 3), (2, 8, 8, 3)], {"num_classes": 2}, "num_classes=2"),
        ([(2, 8, 8, 2), (2, 8, 8, 3)], {"image_dims": (9, 8)}, "image_dims"),
    ],
)
def test_build_errors(shapes, kwargs, match):
    with pytest.raises(ValueError, match=match):
        CrfRnnLayer(**kwargs).build(shapes)


def test_constructor_errors():
    with pytest.raises(ValueError, match="theta_alpha"):
        CrfRnnLayer(theta_alpha=0)
    with pytest.raises(ValueError, match="num_iterations"):
        CrfRnnLayer(num_iterations=-1)
    with pytest.raises(ValueError, match="normalization"):
        CrfRnnLayer(normalization="sym")
    with pytest.raises(ValueError, match="num_classes"):
        CrfRnnLayer(num_classes=1)
    with pytest.raises(ValueError, match="logits, image"):
        CrfRnnLayer().build((2, 8, 8, 2))


BLOG_SNIPPET = '''
from crfcore.adapters.tf import CrfRnnLayer

def add_crf_layer(original_model):
    original_model.trainable = False

    crf_layer = CrfRnnLayer(image_dims=(224, 224),
                            name='crfrnn')([original_model.outputs[0], original_model.inputs[0]])

    new_crf_model = tf.keras.Model(inputs = original_model.input, outputs = crf_layer)
'''


def test_blog_snippet_runs_with_only_the_import_changed(rng):
    img_in = keras.Input((224, 224, 3))
    original = keras.Model(img_in, keras.layers.Conv2D(2, 3, padding="same")(img_in))
    namespace = {"tf": tf}
    exec(BLOG_SNIPPET, namespace)
    namespace["add_crf_layer"](original)  # the blog's function, verbatim (it returns nothing)
    exec(BLOG_SNIPPET + "    return new_crf_model\n", namespace)
    model = namespace["add_crf_layer"](original)
    assert not original.trainable
    crf = model.get_layer("crfrnn")
    assert [w.name for w in model.trainable_weights] == [w.name for w in crf.trainable_weights]
    out = model.predict(rng.uniform(size=(2, 224, 224, 3)).astype(np.float32), verbose=0)
    assert out.shape == (2, 224, 224, 2) and np.isfinite(out).all()


def test_mirrored_strategy_on_two_cpu_devices():
    script = textwrap.dedent('''
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from crfcore.adapters.tf import CrfRnnLayer
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        rng = np.random.default_rng(0)
        truth = (rng.uniform(size=(8, 12, 12)) > 0.5).astype(np.int64)
        logits = np.stack([-truth, truth], -1).astype(np.float32) + rng.normal(size=(8, 12, 12, 2)).astype(np.float32)
        image = truth[..., None].repeat(3, -1).astype(np.float32) * 200
        with strategy.scope():
            a, b = keras.Input((12, 12, 2)), keras.Input((12, 12, 3))
            layer = CrfRnnLayer(theta_alpha=5.0, theta_beta=30.0, theta_gamma=2.0, num_iterations=2)
            model = keras.Model([a, b], layer([a, b]))
            model.compile(optimizer=keras.optimizers.SGD(0.1),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        before = layer.compatibility_matrix.numpy().copy()
        model.fit([logits, image], truth, batch_size=4, epochs=1, verbose=0)
        assert strategy.num_replicas_in_sync == 2
        assert np.abs(layer.compatibility_matrix.numpy() - before).max() > 0
        print("OK", strategy.num_replicas_in_sync)
    ''')
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK 2" in proc.stdout
