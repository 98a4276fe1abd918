"""Deployment: a trained U-Net + CRF-RNN model as a SavedModel and a TensorFlow Lite file, checked against Keras.

The numba backend of ``CrfRnnLayer`` runs Python (``tf.numpy_function``) and cannot be exported, so the model is
cloned onto the pure-TensorFlow lattice first (same weights): ``backend="tf"`` for the SavedModel and
``backend="tf-lite"`` (float32 lattice embedding) for TensorFlow Lite's built-in ops.
"""

import os
import time

import keras
import numpy as np
import tensorflow as tf

from crfcore.adapters.tf import CrfRnnLayer, with_backend

from . import metrics


def _fixed_batch(model, batch=1):
    """The same model with a fixed batch size (TFLite wants static shapes at the input)."""
    inputs = [keras.Input(t.shape[1:], batch_size=batch, name=t.name.split(":")[0]) for t in model.inputs]
    return keras.Model(inputs, model(inputs if len(inputs) > 1 else inputs[0]))


def serve(loaded, model, x):
    """Call an exported model's ``serve`` endpoint on ``x`` as ``model`` takes it (a tensor or a 1-list)."""
    x = tf.constant(x, tf.float32)
    return loaded.serve([x] if isinstance(model.input, (list, tuple)) else x).numpy()


def tflite_bytes(model):
    """Convert a ``tf`` / ``tf-lite`` backend model to TensorFlow Lite with built-in ops only."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert()


def interpreter_class():
    """``(class, name)``: LiteRT's interpreter (``ai-edge-litert``, the successor of the deprecated
    ``tf.lite.Interpreter``) where it is installed, else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        return tf.lite.Interpreter, "tf.lite"
    return Interpreter, "ai_edge_litert"


class TfliteRunner:
    """Runs a TensorFlow Lite model one image at a time, in LiteRT's interpreter where installed.

    ``input_names`` orders the interpreter's inputs (whose own order is not the Keras model's) by matching each
    name against the interpreter's input names; with one input it is not needed. ``num_threads``: the
    interpreter's threads (default: this machine's cores). ``backend`` says which interpreter runs.
    """

    def __init__(self, content, input_names=None, num_threads=None):
        cls, self.backend = interpreter_class()
        self.interpreter = cls(model_content=content, num_threads=num_threads or os.cpu_count() or 1)
        self.interpreter.allocate_tensors()
        details = self.interpreter.get_input_details()
        if input_names is not None:
            details = [next(d for d in details if name in d["name"]) for name in input_names]
        self.inputs = details
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, *arrays):
        for detail, a in zip(self.inputs, arrays):
            self.interpreter.set_tensor(detail["index"], np.asarray(a, np.float32)[None])
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])[0]


def crf_only(model, backend, n_iter=None):
    """A model of the CRF layer alone (logits and image in, batch 1), for timing the CRF part; ``n_iter``
    overrides the layer's number of iterations."""
    layer = model.get_layer("crfrnn")
    h, w = model.inputs[0].shape[1:3]
    n_lab = layer.num_classes
    logits = keras.Input((h, w, n_lab), batch_size=1, name="crf_logits")
    image = keras.Input(model.inputs[0].shape[1:], batch_size=1, name="crf_image")
    config = dict(layer.get_config(), backend=backend)
    if n_iter is not None:
        config["num_iterations"] = n_iter
    crf = CrfRnnLayer.from_config(config)
    out = crf([logits, image])
    crf.set_weights(layer.get_weights())
    return keras.Model([logits, image], out)


def export(model, out_dir, images, *, progress=print):
    """Write ``out_dir/saved_model`` and ``out_dir/model.tflite`` and check both against the Keras model.

    Parameters
    ----------
    model : keras.Model
        A model from ``add-crf`` (image in [0, 1] -> refined logits), any backend.
    out_dir : str
    images : ndarray, (n, H, W, 3)
        Images to check the exported models on.

    Returns
    -------
    dict
        Sizes, agreement and per-image latencies. ``saved_model_max_abs_dlogits``: SavedModel against the given
        model. ``tflite_max_abs_dlogits``: the interpreter against Keras running the same function (the
        ``tf-lite`` backend); ``tflite_vs_numba_max_abs_dlogits``: against the given model, where the float32
        lattice embedding may round a boundary point the other way; ``tflite_dice_vs_keras``: Dice of the
        interpreter's masks against the given model's.
    """
    os.makedirs(out_dir, exist_ok=True)
    reference = model.predict(images, verbose=0, batch_size=4)
    ref_masks = reference.argmax(-1)
    report = {"n_images": len(images)}

    # SavedModel (pure TensorFlow lattice, float64 embedding: the same lattice as the numba core)
    tf_model = with_backend(model, "tf")
    saved = os.path.join(out_dir, "saved_model")
    tf_model.export(saved, verbose=False)
    loaded = tf.saved_model.load(saved)  # keep a reference: its variables live as long as it does
    got = np.concatenate([serve(loaded, tf_model, images[i:i + 1]) for i in range(len(images))])
    report["saved_model_max_abs_dlogits"] = float(np.abs(got - reference).max())
    progress(f"SavedModel: {saved} (max |Δ logits| vs Keras {report['saved_model_max_abs_dlogits']:.2e})")

    # TensorFlow Lite, built-in ops only
    lite_model = _fixed_batch(with_backend(model, "tf-lite"))
    content = tflite_bytes(lite_model)
    path = os.path.join(out_dir, "model.tflite")
    with open(path, "wb") as f:
        f.write(content)
    run = TfliteRunner(content)
    run(images[0])
    t0 = time.perf_counter()
    lite = np.stack([run(im) for im in images])
    report["tflite_ms_per_image"] = 1e3 * (time.perf_counter() - t0) / len(images)
    report["tflite_bytes"] = len(content)
    report["tflite_interpreter"] = run.backend
    same_function = np.concatenate([lite_model.predict(images[i:i + 1], verbose=0) for i in range(len(images))])
    report["tflite_max_abs_dlogits"] = float(np.abs(lite - same_function).max())
    report["tflite_vs_numba_max_abs_dlogits"] = float(np.abs(lite - reference).max())
    dice_lite = np.mean([metrics.dice(m, r) for m, r in zip(lite.argmax(-1), ref_masks)])
    report["tflite_dice_vs_keras"] = float(dice_lite)
    report["tflite_label_agreement"] = float(np.mean(lite.argmax(-1) == ref_masks))

    # the CRF part alone in the interpreter
    crf_content = tflite_bytes(crf_only(model, "tf-lite"))
    crf_run = TfliteRunner(crf_content, input_names=["crf_logits", "crf_image"])
    unet_logits = keras.Model(model.inputs, model.get_layer("crfrnn").input[0]).predict(images, verbose=0)
    crf_run(unet_logits[0], images[0])
    t0 = time.perf_counter()
    for lg, im in zip(unet_logits, images):
        crf_run(lg, im)
    report["tflite_crf_ms_per_image"] = 1e3 * (time.perf_counter() - t0) / len(images)
    report["tflite_crf_bytes"] = len(crf_content)
    progress(f"TFLite: {path} ({len(content) / 1e6:.2f} MB, built-in ops only, {run.backend} interpreter), max |Δ logits| vs Keras "
             f"{report['tflite_max_abs_dlogits']:.2e} (vs the numba-backend model "
             f"{report['tflite_vs_numba_max_abs_dlogits']:.2e}), Dice of its masks against Keras's {dice_lite:.5f}, "
             f"{report['tflite_ms_per_image']:.1f} ms/image (CRF part alone {report['tflite_crf_ms_per_image']:.1f}"
             f" ms/image)")
    return report


def check(report, *, max_dlogits=1e-3, max_dice_gap=1e-3):
    """Raise ``RuntimeError`` if an exported model disagrees with Keras beyond the tolerances."""
    problems = []
    if report["saved_model_max_abs_dlogits"] > max_dlogits:
        problems.append(f"SavedModel logits differ by {report['saved_model_max_abs_dlogits']:.2e}")
    if report["tflite_max_abs_dlogits"] > max_dlogits:
        problems.append(f"TFLite logits differ by {report['tflite_max_abs_dlogits']:.2e}")
    if 1.0 - report["tflite_dice_vs_keras"] > max_dice_gap:
        problems.append(f"TFLite masks have Dice {report['tflite_dice_vs_keras']:.5f} against Keras's")
    if problems:
        raise RuntimeError("export check failed: " + "; ".join(problems))
