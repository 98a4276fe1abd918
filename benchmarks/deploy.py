"""Deployment latency: one 224x224 photo through the pipeline's U-Net alone and with its CRF-RNN layer (L=2,
5 iterations), in Keras (numba backend), as a SavedModel (tf backend) and in the TensorFlow Lite interpreter
(tf-lite backend, LiteRT's interpreter where installed), against ``crfcore.meanfield`` doing the same CRF, which is
also timed alone as a SavedModel and in TFLite; all timed in turn in one run. The TFLite CRF is also timed with 1
iteration, which splits it into the lattice construction (with the unaries' softmax; with 0 iterations the
converter drops the unused lattice) and the cost of one iteration.

The U-Net has the demo's architecture with seeded random weights and the CRF the pipeline's hand-tuned
parameters: latency depends on shapes and the lattice, not on what the weights learned.
"""

import contextlib
import io
import os
import tempfile

import numpy as np

SIZE, N_LAB, N_ITER = 224, 2, 5


def _models():
    import keras

    from unet.model import build_unet
    from unet.pipeline import attach_crf

    keras.utils.set_random_seed(0)
    unet = build_unet(SIZE, N_LAB)
    return unet, attach_crf(unet, learn_widths=False, start="tuned")


def _keras_call(model, x):
    import tensorflow as tf

    fn = tf.function(lambda t: model(t, training=False))
    t = tf.constant(x[None])
    return lambda: fn(t).numpy()


def run(repeats=15, progress=print):
    """Median ms per image of each way of running the model (see the module's docstring)."""
    import tensorflow as tf

    import crfcore
    from crfcore.adapters.tf import with_backend
    from unet.export import TfliteRunner, _fixed_batch, crf_only, serve, tflite_bytes

    from .timing import timed_interleaved
    from .inputs import photo

    progress("  deployment: building and converting the models...")
    image = (photo("astronaut", SIZE) / 255.0).astype(np.float32)
    unet, model = _models()
    logits = unet.predict(image[None], verbose=0)[0]
    layer = model.get_layer("crfrnn")
    ws, wb, mu = (w.numpy() for w in (layer.spatial_ker_weights, layer.bilateral_ker_weights,
                                      layer.compatibility_matrix))
    core_kw = dict(n_iter=N_ITER, theta_alpha=layer.theta_alpha, theta_beta=layer.theta_beta,
                   theta_gamma=layer.theta_gamma, normalization=layer.normalization, w_spatial=ws,
                   w_bilateral=wb, compat=mu, output="logits")

    def core():
        crfcore.meanfield_fwd(logits, image, **core_kw)

    def lite(keras_model, **kw):
        with contextlib.redirect_stdout(io.StringIO()):  # the converter prints the traced signatures
            return TfliteRunner(tflite_bytes(keras_model), **kw)

    unet_lite = lite(_fixed_batch(unet))
    full_lite = lite(_fixed_batch(with_backend(model, "tf-lite")))
    crf_lite = {n: lite(crf_only(model, "tf-lite", n), input_names=["crf_logits", "crf_image"]) for n in (1, N_ITER)}
    with tempfile.TemporaryDirectory() as tmp:
        tf_model = with_backend(model, "tf")
        tf_model.export(os.path.join(tmp, "sm"), verbose=False)
        loaded = tf.saved_model.load(os.path.join(tmp, "sm"))
        crf_only(model, "tf", N_ITER).export(os.path.join(tmp, "crf_sm"), verbose=False)
        crf_loaded = tf.saved_model.load(os.path.join(tmp, "crf_sm"))
        crf_inputs = [tf.constant(logits[None]), tf.constant(image[None])]
        peers = {
            "unet_keras": _keras_call(unet, image),
            "unet_crf_keras_numba": _keras_call(model, image),
            "unet_crf_savedmodel_tf": lambda: serve(loaded, tf_model, image[None]),
            "unet_tflite": lambda: unet_lite(image),
            "unet_crf_tflite": lambda: full_lite(image),
            "crf_core_numba": core,
            "crf_savedmodel_tf": lambda: crf_loaded.serve(crf_inputs).numpy(),
            "crf_tflite": lambda: crf_lite[N_ITER](logits, image),
            "crf_tflite_1_iteration": lambda: crf_lite[1](logits, image),
        }
        progress(f"  deployment: {len(peers)} ways, {repeats} rounds...")
        times = timed_interleaved(list(peers.values()), repeats)
    row = {f"{name}_ms": 1e3 * med for name, (med, _, _) in zip(peers, times)}
    row.update(size=SIZE, labels=N_LAB, iterations=N_ITER, interpreter=unet_lite.backend,
               interpreter_threads=os.cpu_count())
    row["crf_tflite_over_core"] = row["crf_tflite_ms"] / row["crf_core_numba_ms"]
    row["crf_savedmodel_over_core"] = row["crf_savedmodel_tf_ms"] / row["crf_core_numba_ms"]
    row["crf_tflite_per_iteration_ms"] = (row["crf_tflite_ms"] - row["crf_tflite_1_iteration_ms"]) / (N_ITER - 1)
    row["crf_tflite_build_ms"] = row["crf_tflite_1_iteration_ms"] - row["crf_tflite_per_iteration_ms"]
    return row


def report(r):
    return "\n".join([
        f"deployment {r['size']}x{r['size']} L={r['labels']} {r['iterations']} it, one photo, ms per image "
        f"({r['interpreter']} interpreter, {r['interpreter_threads']} threads):",
        f"  U-Net: Keras {r['unet_keras_ms']:.1f}, TFLite {r['unet_tflite_ms']:.1f}",
        f"  U-Net + CRF: Keras (numba) {r['unet_crf_keras_numba_ms']:.1f}, SavedModel (tf) "
        f"{r['unet_crf_savedmodel_tf_ms']:.1f}, TFLite {r['unet_crf_tflite_ms']:.1f}",
        f"  CRF alone: crfcore {r['crf_core_numba_ms']:.1f}, SavedModel (tf) {r['crf_savedmodel_tf_ms']:.1f} "
        f"(x{r['crf_savedmodel_over_core']:.2f}), TFLite {r['crf_tflite_ms']:.1f} "
        f"(x{r['crf_tflite_over_core']:.2f} crfcore's; lattice build + softmax {r['crf_tflite_build_ms']:.1f}, "
        f"one iteration {r['crf_tflite_per_iteration_ms']:.1f})",
    ])


if __name__ == "__main__":
    print(report(run()))
