"""The Keras/TensorFlow adapter: CrfRnnLayer and crf_refine on the core (backend="numba"), the pure-TensorFlow
lattice (backend="tf", TensorFlow Lite) against the core, and trainable widths."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import crfcore  # noqa: E402
from crfcore import Lattice  # noqa: E402
from crfcore.adapters import tf as adapter  # noqa: E402
from crfcore.adapters import tf_lattice  # noqa: E402
from crfcore.adapters.tf import CrfRnnLayer, with_backend  # noqa: E402

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


# The pure-TensorFlow lattice (backend="tf") against the Numba core, and its deployment paths

def real_photo(size):
    skimage = pytest.importorskip("skimage")
    from skimage import data, transform

    assert skimage
    img = transform.resize(data.astronaut(), (size, size), anti_aliasing=True, preserve_range=True)
    return img.astype(np.float32)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("d", [1, 2, 3, 5, 8, 10])  # 10: every point its own simplex row (the hash would overflow)
def test_lattice_filter_matches_numba(rng, d, ties):
    f = rng.normal(scale=2.0, size=(400, d))
    if ties:  # integer features (pixel grids): residuals tie, and the rank's tie rule decides the simplex
        f = np.round(f)
    v = rng.normal(size=(400, 3))
    for transpose in (False, True):
        ours = Lattice(f).filter(v, transpose=transpose)
        theirs = tf_lattice.lattice_filter(f, v, transpose=transpose).numpy()
        np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5 * np.abs(ours).max())


@pytest.mark.parametrize("slots", [4, 0])  # 0: a table of 7 slots, collisions everywhere
@pytest.mark.parametrize("embed_dtype", ["float64", "float32"])
@pytest.mark.parametrize("d", [2, 5, 9])
def test_simplex_table_gives_every_point_its_own_vertices(rng, monkeypatch, d, embed_dtype, slots):
    # the lattice finds the points that share a simplex with a hash table (4 N + 7 slots): a point whose slot is
    # owned by another simplex keeps a row of its own. Whatever the collisions, table[simplex[p]] must be point p's
    # d + 1 vertices, the vertices numbered exactly (distinct keys, distinct numbers)
    monkeypatch.setattr(tf_lattice, "SIMPLEX_SLOTS", slots)
    dtype = getattr(tf, embed_dtype)
    n = 3000
    f = rng.normal(scale=3.0, size=(n, d)) if d < 9 else rng.normal(scale=1.0, size=(n, d))
    f[n // 2:] = f[:n - n // 2] + rng.normal(scale=0.05, size=(n - n // 2, d))  # many points share simplices
    weights, key0, climbers, powers = tf_lattice.embed(tf.constant(f, dtype), dtype)
    own = tf_lattice.vertex_keys(key0, climbers, powers).numpy().T  # (N, d + 1): each point's vertex keys
    number = tf_lattice._number if embed_dtype == "float32" else (lambda k: tf.unique(k, out_idx=tf.int32))
    uniq, table, simplex = (t.numpy() for t in tf_lattice._simplices(key0, climbers, powers, number))
    np.testing.assert_array_equal(uniq[table[simplex]], own)
    assert len(np.unique(uniq)) == len(uniq) == len(np.unique(own))
    named = len({(k, tuple(r)) for k, r in zip(key0.numpy(), np.stack([c.numpy() for c in climbers], 1))})
    assert named <= len(table) < n  # simplices shared
    assert slots or named < len(table)  # collided slots repeat rows
    assert np.allclose(weights.numpy().sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("lite", [True, False])  # the slots' counts by segment sum (TFLite) or bincount (TF)
@pytest.mark.parametrize("crowd", [0, 1, 40])
def test_vertex_lookup_is_exact_whatever_the_collisions(rng, crowd, lite):
    # the blur's neighbour lookup hashes keys into slots `key mod P` (P = 8 M + 7): `crowd` keys share slot 0, and
    # queries for them, for absent keys of that slot and for other keys, present and absent, must all be answered
    m = 200
    p = 8 * m + 7
    others = rng.integers(1, 10**12, size=m - crowd)  # spread over the slots (distinct: checked below)
    uniq = np.unique(np.concatenate([np.arange(crowd) * p * 1000, others]))[:m]
    rng.shuffle(uniq)
    m = len(uniq)
    assert (8 * m + 7) == p
    queries = np.concatenate([uniq, uniq + p, uniq + 1, np.arange(60) * p * 1000 + p, uniq[:5]])
    rng.shuffle(queries)
    found = tf_lattice._lookup(tf.constant(uniq, tf.int64), tf.constant(queries, tf.int64), lite).numpy()
    where = {k: i for i, k in enumerate(uniq)}
    np.testing.assert_array_equal(found, [where.get(q, m) for q in queries])


@pytest.mark.parametrize("channels", [None, 3])
def test_bincount_splat_is_the_segment_sum_with_its_gradient(rng, channels):
    # TensorFlow's (not Lite's) splat is a weighted bincount, which has no gradient of its own: the sum and the
    # gathering gradient must be unsorted_segment_sum's, 1-D and per channel, with empty rows and repeated ids
    q, n = 500, 60
    ids = tf.constant(rng.integers(0, n - 5, size=q), tf.int32)  # the last rows stay empty
    shape = (q,) if channels is None else (q, channels)
    values = tf.Variable(rng.normal(size=shape).astype(np.float32))
    upstream = tf.constant(rng.normal(size=(n,) + shape[1:]).astype(np.float32))
    outs, grads = [], []
    for fn in (tf.math.unsorted_segment_sum, tf_lattice._bincount_sum):
        with tf.GradientTape() as tape:
            out = fn(values, ids, n)
            loss = tf.reduce_sum(out * upstream)
        outs.append(out.numpy())
        grads.append(tape.gradient(loss, values).numpy())
    assert outs[1].shape == outs[0].shape == (n,) + shape[1:]
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grads[1], grads[0], rtol=0, atol=0)


@pytest.mark.parametrize("n", range(1, 11))
def test_sorting_network_sorts_every_input(n):
    # the embedding orders residuals and coordinates with it: by the 0-1 principle, a comparator network that
    # sorts every 0/1 sequence sorts every sequence
    import itertools

    net = tf_lattice.sorting_network(n)
    assert all(0 <= i < j < n for i, j in net)
    bits = np.array(list(itertools.product((0, 1), repeat=n)), dtype=np.int8).T  # (n, 2^n)
    rows = tf_lattice._sorted([tf.constant(b) for b in bits])
    np.testing.assert_array_equal(np.stack([r.numpy() for r in rows]), np.sort(bits, axis=0))


def test_neighbour_tables_agree_between_tensorflow_and_lite_ops(rng):
    # blur_neighbours builds its minus table by scatter (TFLite) or bincount (TF): the same tables
    f = tf.constant(rng.normal(scale=2.0, size=(2000, 5)))
    _, key0, climbers, powers = tf_lattice.embed(f)
    uniq, _, _ = tf_lattice._simplices(key0, climbers, powers, lambda k: tf.unique(k, out_idx=tf.int32))
    lite, full = (tf_lattice.blur_neighbours(uniq, powers, flag).numpy() for flag in (True, False))
    np.testing.assert_array_equal(full, lite)
    assert (lite < len(uniq)).mean() > 0.3  # neighbours were found, not only the zero row


@pytest.mark.parametrize("crowd", [0, 1, 30])
def test_vertex_numbering_is_exact_whatever_the_collisions(rng, crowd):
    # the lattice numbers its (point, vertex) keys by hashing them into slots `key mod P` (P = Q + 7 for Q keys):
    # `crowd` distinct keys share slot 0, each repeated, among repeated keys spread over the other slots
    q = 600
    p = q + 7
    others = rng.integers(1, 10**12, size=120)
    crowded = np.arange(1, crowd + 1) * p * 1000
    pool = np.concatenate([others, crowded])
    keys = np.concatenate([pool, rng.choice(pool, size=q - len(pool))])  # every key at least once, most repeated
    rng.shuffle(keys)
    assert len(keys) == q
    for fn in (tf_lattice._number, tf.function(tf_lattice._number)):
        uniq, idx = (t.numpy() for t in fn(tf.constant(keys, tf.int64)))
        assert len(uniq) == len(np.unique(keys)) and sorted(uniq) == sorted(np.unique(keys))
        np.testing.assert_array_equal(uniq[idx], keys)
        assert idx.dtype == np.int32


def test_spatial_lattice_is_built_once_as_constants_for_fixed_sizes_and_widths():
    # what an exported model (fixed image size, fixed theta_gamma) needs: the spatial lattice as constants of the
    # graph, not rebuilt per image; a trained (tensor) width keeps it in the graph, where gradients reach it
    seen = {}

    @tf.function
    def trace(theta_gamma):
        fixed = tf_lattice.spatial_lattice(20, 30, 3.0, "symmetric", tf.float32)
        learned = tf_lattice.spatial_lattice(20, 30, theta_gamma, "symmetric", tf.float32)
        for name, lattice in (("fixed", fixed), ("learned", learned)):
            _, slice_w = lattice.normalised("symmetric")
            ones = lattice.normalised_ones("symmetric")
            seen[name] = {t.op.type for t in (lattice.offsets, lattice.weights, lattice.neighbours, slice_w, ones)}
        return [fixed.offsets, fixed.weights, fixed.normalised_ones("symmetric")], [
            learned.offsets, learned.weights, learned.normalised_ones("symmetric")]

    fixed, learned = trace(tf.constant(3.0))
    assert seen["fixed"] == {"Const"}
    assert "Const" not in seen["learned"]
    # the same lattice; its weights to float32 rounding (TensorFlow's graph optimiser multiplies a width that is a
    # tensor in another order than the fixed width's constant)
    np.testing.assert_array_equal(fixed[0].numpy(), learned[0].numpy())
    np.testing.assert_allclose(fixed[1].numpy(), learned[1].numpy(), rtol=1e-5, atol=1e-6)
    # the same filter, but eager and graph (grappler) may round a sum differently
    np.testing.assert_allclose(fixed[2].numpy(), learned[2].numpy(), rtol=1e-6)


def pair(n_lab, norm="after", n_iter=4, **kw):
    args = dict(dict(theta_alpha=6.0, theta_beta=30.0, theta_gamma=2.0), num_iterations=n_iter, normalization=norm)
    args.update(kw)
    return CrfRnnLayer(backend="numba", **args), CrfRnnLayer(backend="tf", **args)


def set_same_random_weights(rng, a, b, shapes):
    a.build(shapes)
    b.build(shapes)
    for wa, wb in zip(a.trainable_weights, b.trainable_weights):
        w = wa.numpy() + rng.normal(scale=0.3, size=wa.shape)
        wa.assign(w)
        wb.assign(w)


@pytest.mark.parametrize("n_lab, shape, batch, norm",
                         [(2, (8, 9), 1, "after"), (3, (20, 30), 2, "symmetric"), (5, (16, 12), 3, "before"),
                          (2, (24, 24), 2, "none"), (2, (13, 17), 2, "symmetric")])
def test_forward_matches_numba_on_random_inputs(rng, n_lab, shape, batch, norm):
    logits = rng.normal(scale=2, size=(batch, *shape, n_lab)).astype(np.float32)
    image = rng.uniform(0, 255, size=(batch, *shape, 3)).astype(np.float32)
    a, b = pair(n_lab, norm)
    set_same_random_weights(rng, a, b, [logits.shape, image.shape])
    np.testing.assert_allclose(b([logits, image]).numpy(), a([logits, image]).numpy(), atol=1e-4, rtol=1e-5)


def test_forward_and_gradients_match_numba_on_a_real_photo(rng):
    image = real_photo(48)[None]
    grey = image[..., 0] / 255.0
    logits = np.stack([2 * (0.5 - grey), 2 * (grey - 0.5)], -1) + rng.normal(0, 1, size=grey.shape + (2,))
    logits = logits.astype(np.float32)
    a, b = pair(2, "symmetric", theta_beta=13.0)
    set_same_random_weights(rng, a, b, [logits.shape, image.shape])
    g = rng.normal(size=logits.shape).astype(np.float32)
    grads = []
    for layer in (a, b):
        x = tf.constant(logits)
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer([x, image])
            loss = tf.reduce_sum(out * g)
        grads.append([out.numpy()] + [t.numpy() for t in tape.gradient(loss, [x] + layer.trainable_weights)])
    (out_a, *ga), (out_b, *gb) = grads
    # float32 sums in another order: logits (|Z| up to ~20 here) agree to 1e-5 relative, probabilities to 1e-4
    np.testing.assert_allclose(out_b, out_a, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(tf.nn.softmax(out_b).numpy(), tf.nn.softmax(out_a).numpy(), atol=1e-4)
    for x, y in zip(ga, gb):  # TensorFlow's autodiff through the TF lattice == crfcore's backward
        np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-4 * max(1.0, np.abs(x).max()))


def test_with_backend_keeps_weights_and_config(rng):
    keras.utils.set_random_seed(0)  # the convolution's initial weights: not the previous tests' draws
    img_in = keras.Input((16, 16, 3))
    logits = keras.layers.Conv2D(2, 3, padding="same")(img_in)
    model = keras.Model(img_in, CrfRnnLayer(theta_alpha=5.0, theta_beta=0.2, name="crfrnn")([logits, img_in]))
    x = rng.uniform(size=(3, 16, 16, 3)).astype(np.float32)
    copy = with_backend(model, "tf")
    assert copy.get_layer("crfrnn").backend == "tf"
    config = dict(copy.get_layer("crfrnn").get_config(), backend="numba", name="crfrnn")
    assert config == model.get_layer("crfrnn").get_config()
    for wa, wb in zip(model.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    # float32 sums in another order, over 5 iterations: relative 2.6e-5 seen on logits of ~8
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)
    back = with_backend(copy, "numba")
    np.testing.assert_allclose(back.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(ValueError, match="backend"):
        with_backend(model, "jax")


def test_dynamic_batch_with_tf_backend(rng):
    lg_in, im_in = keras.Input((10, 12, 2)), keras.Input((10, 12, 3))
    model = keras.Model([lg_in, im_in], CrfRnnLayer(backend="tf", theta_alpha=4.0)([lg_in, im_in]))
    for batch in (1, 3):
        out = model.predict([rng.normal(size=(batch, 10, 12, 2)), rng.uniform(size=(batch, 10, 12, 3))], verbose=0)
        assert out.shape == (batch, 10, 12, 2)


def test_dynamic_image_size_with_tf_backend(rng):
    # images of any size through one traced function: the spatial lattice is then built in the graph, per batch
    spec = [tf.TensorSpec([None, None, None, 2]), tf.TensorSpec([None, None, None, 3])]
    a, b = pair(2, "symmetric", n_iter=3)
    set_same_random_weights(rng, a, b, [(1, 8, 8, 2), (1, 8, 8, 3)])
    ours, theirs = (tf.function(lambda x, y, layer=layer: layer([x, y]), input_signature=spec) for layer in (a, b))
    for h, w in ((12, 10), (7, 9)):
        logits = rng.normal(scale=2, size=(2, h, w, 2)).astype(np.float32)
        image = rng.uniform(0, 255, size=(2, h, w, 3)).astype(np.float32)
        np.testing.assert_allclose(theirs(logits, image).numpy(), ours(logits, image).numpy(), atol=1e-4, rtol=1e-5)


def tiny_model(rng, n_lab=2):
    img_in = keras.Input((24, 24, 3))
    logits = keras.layers.Conv2D(n_lab, 3, padding="same", name="logits")(img_in)
    model = keras.Model(img_in, CrfRnnLayer(theta_alpha=6.0, theta_beta=0.15, theta_gamma=2.0, num_iterations=3,
                                            name="crfrnn")([logits, img_in]))
    for w in model.get_layer("crfrnn").trainable_weights:
        w.assign(w.numpy() + rng.normal(scale=0.2, size=w.shape))
    return model


def test_saved_model_round_trip(rng, tmp_path):
    model = tiny_model(rng)
    x = rng.uniform(size=(2, 24, 24, 3)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    exported = with_backend(model, "tf")
    exported.export(str(tmp_path / "sm"), verbose=False)
    from unet.export import serve

    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    got = serve(loaded, exported, x)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("n_lab", [2, 3])  # 3: the general iterations (two labels filter one channel)
def test_tflite_round_trip_builtin_ops_only(rng, n_lab):
    from unet.export import TfliteRunner, _fixed_batch, tflite_bytes

    model = tiny_model(rng, n_lab)
    x = rng.uniform(size=(3, 24, 24, 3)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    lite_keras = _fixed_batch(with_backend(model, "tf-lite"))
    content = tflite_bytes(lite_keras)  # TFLITE_BUILTINS only: raises if any op needed SELECT_TF_OPS
    run = TfliteRunner(content)
    try:
        import ai_edge_litert  # noqa: F401
        assert run.backend == "ai_edge_litert"  # LiteRT's interpreter where it is installed
    except ImportError:
        assert run.backend == "tf.lite"
    got = np.stack([run(im) for im in x])
    same_function = np.concatenate([lite_keras.predict(x[i:i + 1], verbose=0) for i in range(3)])
    np.testing.assert_allclose(got, same_function, atol=1e-4)  # the interpreter computes what Keras computes
    np.testing.assert_allclose(got, expected, atol=5e-2)  # float32 lattice embedding vs float64 (ties)
    assert np.mean(got.argmax(-1) == expected.argmax(-1)) > 0.999


def test_xla_is_refused_not_silently_wrong(rng):
    # XLA on CPU compiles tf.unique but pads its outputs, and the lattice comes out wrong; the layer refuses.
    layer = CrfRnnLayer(backend="tf", theta_alpha=4.0, theta_beta=0.2, num_iterations=3)
    assert layer.supports_jit is False  # Keras's jit_compile="auto" leaves the model un-compiled
    a = tf.constant(rng.normal(size=(2, 12, 10, 2)), tf.float32)
    b = tf.constant(rng.uniform(size=(2, 12, 10, 3)), tf.float32)
    eager = layer([a, b]).numpy()
    xla = tf.function(lambda x, y: layer([x, y]), jit_compile=True)
    with pytest.raises(NotImplementedError, match="XLA"):
        xla(a, b)
    plain = tf.function(lambda x, y: layer([x, y]))  # same function; graph rewrites may round differently
    np.testing.assert_allclose(plain(a, b).numpy(), eager, rtol=1e-5, atol=1e-5)


def test_xla_is_refused_for_the_numba_backend(rng):
    layer = CrfRnnLayer(theta_alpha=4.0)
    a = tf.constant(rng.normal(size=(1, 6, 6, 2)), tf.float32)
    b = tf.constant(rng.uniform(size=(1, 6, 6, 3)), tf.float32)
    layer([a, b])
    with pytest.raises(NotImplementedError, match="numpy_function"):
        tf.function(lambda x, y: layer([x, y]), jit_compile=True)(a, b)


@pytest.mark.parametrize("backend", ["numba", "tf"])
def test_bad_values_are_reported_not_propagated(rng, backend):
    layer = CrfRnnLayer(backend=backend, theta_alpha=4.0, theta_beta=0.2, num_iterations=2)
    logits = rng.normal(size=(2, 8, 9, 2)).astype(np.float32)
    image = rng.uniform(size=(2, 8, 9, 3)).astype(np.float32)
    layer([logits, image])
    bad = logits.copy()
    bad[1, 3, 4, 0] = np.nan
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="`logits` contain"):
        layer([bad, image])
    bad_image = image.copy()
    bad_image[0, 0, 0, 1] = np.inf
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="`image` contain"):
        layer([logits, bad_image])
    fn = tf.function(lambda a, b: layer([a, b]))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="(differ in batch or spatial|`image`)"):
        fn(tf.constant(logits), tf.constant(image[:, :, :8]))
    layer.compatibility_matrix.assign(np.full((2, 2), np.nan))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="(compatibility_matrix|compat)"):
        layer([logits, image])


def test_image_dims_checked_on_dynamic_inputs(rng):
    lg_in, im_in = keras.Input((None, None, 2)), keras.Input((None, None, 3))
    model = keras.Model([lg_in, im_in], CrfRnnLayer(image_dims=(8, 9), theta_alpha=4.0)([lg_in, im_in]))
    model.predict([np.zeros((1, 8, 9, 2)), np.zeros((1, 8, 9, 3))], verbose=0)
    with pytest.raises(Exception, match=r"image_dims=\(8, 9\)"):
        model.predict([np.zeros((1, 8, 10, 2)), np.zeros((1, 8, 10, 3))], verbose=0)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(image_dims=64), TypeError, "`image_dims` must be a pair"),
    (dict(image_dims=(64, "a")), ValueError, "`image_dims` must be"),
    (dict(num_iterations=None), ValueError, "`num_iterations`"),
    (dict(num_classes=2.5), ValueError, "`num_classes`"),
    (dict(backend="onnx"), ValueError, "`backend`"),
])
def test_constructor_arguments_are_named(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CrfRnnLayer(**kwargs)


# CrfRnnLayer(trainable_widths=True): the widths and the image get exact gradients, train, save and load

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
