"""TensorFlow / Keras 3 adapter: ``CrfRnnLayer``, a CRF-as-RNN layer (Zheng et al. 2015) backed by crfcore.

The forward and the exact backward of the unrolled mean field run in crfcore's Numba kernels; TensorFlow sees one
op whose gradient comes from :func:`crfcore.meanfield_bwd` through ``tf.custom_gradient``. Eagerly the core is
called directly; in graphs (``tf.function``, ``model.fit``) through ``tf.numpy_function``, with the forward's
residuals (lattices and iterates) kept in a bounded store until the backward takes them.

What the default (numba) backend cannot do: ``tf.numpy_function`` runs Python, so the op cannot be compiled by XLA
(``jit_compile=True`` raises; the layer sets ``supports_jit = False`` so Keras's ``jit_compile="auto"`` leaves it
out), is not serialised into a SavedModel graph (``model.export``), and has no TensorFlow Lite kernel. SavedModel,
TensorFlow Lite and GPUs are served by the pure-TensorFlow lattice (``backend="tf"`` / ``"tf-lite"``, module
:mod:`crfcore.adapters.tf_lattice`; the README's "Deployment" section).
"""

import functools
from functools import partial

try:
    import keras
    import tensorflow as tf
except ImportError as exc:  # the framework is an extra: say which
    raise ImportError(f"{__name__} needs TensorFlow and Keras 3: pip install 'crfcore[tf]' ({exc})") from exc
import numpy as np

from crfcore import meanfield_bwd, meanfield_fwd
from crfcore._shared import deprecated, positive_scalar
from crfcore.params import DEFAULTS, check_n_iter, check_normalization

from . import tf_lattice
from ._residuals import ResidualStore

__all__ = ["CrfRnnLayer", "crf_refine", "PottsInitializer", "with_backend"]

#: ``"numba"``: crfcore's kernels through ``tf.numpy_function`` (fast on CPU, exact custom gradient);
#: ``"tf"``: the same function in TensorFlow ops (SavedModel, TFLite, GPU; TensorFlow's autodiff).
#: ``"tf-lite"``: the TensorFlow ops with a float32 lattice embedding, for TensorFlow Lite's built-in ops.
BACKENDS = ("numba", "tf", "tf-lite")


_STORE = ResidualStore()


def _tape_active():
    """Whether a gradient tape could record the op being built (else no backward will ask for residuals)."""
    try:
        from tensorflow.python.eager import record
    except ImportError:  # private module moved: keep residuals, the store's bounds still apply
        return True
    return record.could_possibly_record()


def _core_kwargs(params, ws, wb, mu, widths):
    ta, tb, tg = (float(np.asarray(t)) for t in widths)
    return dict(
        n_iter=params["n_iter"], theta_alpha=ta, theta_beta=tb, theta_gamma=tg, normalization=params["normalization"],
        w_spatial=ws, w_bilateral=wb, compat=mu, spatial_dims=params["spatial_dims"], output="logits",
    )


def _grads(res, dy, features):
    """The op's gradients from the core: logits, the three matrices and, with ``features``, the image and the
    three widths (zeros otherwise: nothing asked for them)."""
    g = meanfield_bwd(res, dy, features=features)
    dt = g.logits.dtype
    out = [g.logits, np.asarray(g.w_spatial, dt), np.asarray(g.w_bilateral, dt), g.compat.astype(dt)]
    if features:
        out += [g.image.astype(dt)] + [np.asarray(t, dt) for t in (g.theta_alpha, g.theta_beta, g.theta_gamma)]
    return out


def _label_matrix(value, name, n_lab, dtype):
    """A weight or compatibility as an ``(L, L)`` tensor of ``dtype``: numbers and scalar tensors times ``I``."""
    t = tf.convert_to_tensor(value)
    if not t.dtype.is_floating and not t.dtype.is_integer:
        raise TypeError(f"`{name}` must be a number or an ({n_lab}, {n_lab}) matrix, got dtype {t.dtype.name}")
    t = tf.cast(t, dtype)
    if t.shape.rank == 0:
        return t * tf.eye(n_lab, dtype=dtype)
    if tuple(t.shape) != (n_lab, n_lab):
        raise ValueError(f"`{name}` must be a number or an ({n_lab}, {n_lab}) matrix, got shape {tuple(t.shape)}")
    return t


def _old_positional_form(fn):
    """0.1's ``crf_refine(logits, image, spatial_ker_weights, bilateral_ker_weights, compatibility_matrix, *,
    n_iter, theta_alpha, theta_beta, theta_gamma, normalization="after", ...)`` for one more release."""

    @functools.wraps(fn)
    def wrapper(logits, image, *matrices, **kwargs):
        if not matrices:
            return fn(logits, image, **kwargs)
        if len(matrices) != 3:
            raise TypeError(f"crf_refine takes 2 positional arguments (logits, image), got {2 + len(matrices)}")
        deprecated("crf_refine(logits, image, spatial_ker_weights, bilateral_ker_weights, "
                           "compatibility_matrix, ...)", "crf_refine(logits, image, w_spatial=..., w_bilateral=..., "
                           "compat=..., normalization='after', ...) (crfcore.meanfield's keywords)")
        kwargs.setdefault("normalization", "after")
        kwargs.setdefault("features_grad", False)
        return fn(logits, image, w_spatial=matrices[0], w_bilateral=matrices[1], compat=matrices[2], **kwargs)

    return wrapper


@_old_positional_form
def crf_refine(logits, image, *, n_iter=DEFAULTS["n_iter"], theta_alpha=DEFAULTS["theta_alpha"],
               theta_beta=DEFAULTS["theta_beta"], theta_gamma=DEFAULTS["theta_gamma"],
               w_bilateral=DEFAULTS["w_bilateral"], w_spatial=DEFAULTS["w_spatial"], compat=DEFAULTS["compat"],
               normalization=DEFAULTS["normalization"], spatial_dims=DEFAULTS["spatial_dims"], features_grad=None,
               keep_residuals=True):
    """Refined logits ``Z_T`` of a batch (``crfcore.meanfield_fwd(..., output="logits")`` as a TensorFlow op),
    differentiable with crfcore's exact backward.

    Keywords, their order and defaults are :func:`crfcore.meanfield`'s (the same in
    :func:`crfcore.adapters.torch.crf_refine` and :func:`crfcore.adapters.jax.crf_refine`); channels last as the
    core: ``logits (..., *spatial, L)``, ``image (..., *spatial, C)``. Eager tensors run the core directly, graphs
    (``tf.function``, ``model.fit``) through ``tf.numpy_function``.

    Parameters
    ----------
    logits : tf.Tensor, float32 or float64
    image : tf.Tensor
        Guides the bilateral kernel, in its own units (``theta_beta`` is in them); taken in the logits' dtype.
    n_iter, normalization, spatial_dims
        As in :func:`crfcore.meanfield` (Python values).
    theta_alpha, theta_beta, theta_gamma : float or scalar tf.Tensor
        The kernel widths, positive (a non-positive or non-finite width raises a ValueError naming it).
    w_bilateral, w_spatial : float, scalar or (L, L) tf.Tensor
    compat : (L, L) tf.Tensor or None (Potts ``1 - I``)
    features_grad : bool or None
        Also differentiate w.r.t. ``image`` and the three widths (the lattice's features gradient, about as costly
        again as the rest of the backward). None (default): when any width is a tensor. False: they get no
        gradient.
    keep_residuals : bool
        Keep the forward's lattices and iterates for the backward (graph mode) when a gradient tape is recording.
        False stores nothing; a backward then recomputes the forward.

    Returns
    -------
    tf.Tensor
        ``Z_T``, shape and dtype of ``logits``.
    """
    logits = tf.convert_to_tensor(logits)
    if logits.dtype not in (tf.float32, tf.float64):
        raise TypeError(f"`logits` must be float32 or float64, got {logits.dtype.name}")
    if logits.shape.rank is None or logits.shape.rank < spatial_dims + 1 or logits.shape[-1] is None:
        raise ValueError(f"`logits` must have shape (..., *spatial, L) with {spatial_dims} spatial axes and a known L, "
                         f"got {logits.shape}")
    check_normalization(normalization)
    n_lab = int(logits.shape[-1])
    dt = logits.dtype
    image = tf.cast(tf.convert_to_tensor(image), dt)
    ws = _label_matrix(w_spatial, "w_spatial", n_lab, dt)
    wb = _label_matrix(w_bilateral, "w_bilateral", n_lab, dt)
    mu = 1.0 - tf.eye(n_lab, dtype=dt) if compat is None else tf.cast(tf.convert_to_tensor(compat), dt)
    if tuple(mu.shape) != (n_lab, n_lab):
        raise ValueError(f"`compat` must be None or an ({n_lab}, {n_lab}) matrix, got shape {tuple(mu.shape)}")
    widths = (theta_alpha, theta_beta, theta_gamma)
    if features_grad is None:
        features_grad = any(isinstance(t, (tf.Tensor, tf.Variable)) for t in widths)
    return _meanfield_op(logits, image, ws, wb, mu, n_iter=n_iter, theta_alpha=theta_alpha, theta_beta=theta_beta,
                         theta_gamma=theta_gamma, normalization=normalization, spatial_dims=spatial_dims,
                         keep_residuals=keep_residuals, features_grad=features_grad)


def _meanfield_op(logits, image, spatial_ker_weights, bilateral_ker_weights, compatibility_matrix, *, n_iter,
                  theta_alpha, theta_beta, theta_gamma, normalization, spatial_dims=2, keep_residuals=True,
                  features_grad=False):
    """The op on ``(L, L)`` matrices (what :class:`CrfRnnLayer` calls): gradients for ``logits`` and the three
    matrices, and with ``features_grad`` for the image and the three widths."""
    if tf_lattice._in_xla():
        raise NotImplementedError(
            "CrfRnnLayer(backend='numba') runs Python through tf.numpy_function, which XLA "
            "(tf.function(jit_compile=True)) cannot compile; call it without jit_compile"
        )
    params = dict(n_iter=check_n_iter(n_iter), normalization=normalization, spatial_dims=int(spatial_dims))
    features = bool(features_grad)
    widths = [tf.cast(t, logits.dtype) for t in (theta_alpha, theta_beta, theta_gamma)]
    n_grads = 8 if features else 4

    def graph_forward(keep, lg, img, ws, wb, mu, *widths):
        out, res = meanfield_fwd(lg, img, keep_residuals=keep, **_core_kwargs(params, ws, wb, mu, widths))
        handle = _STORE.put(res) if keep else 0
        return out, np.int64(handle)

    def graph_backward(handle, dy, lg, img, ws, wb, mu, *widths):
        res = _STORE.pop(handle) if handle > 0 else None
        if res is None:  # evicted, or forward ran without residuals: recompute it
            _, res = meanfield_fwd(lg, img, **_core_kwargs(params, ws, wb, mu, widths))
        return _grads(res, dy, features)

    def arrange(grads):
        """The op's inputs are (logits, image, ws, wb, mu, theta_alpha, theta_beta, theta_gamma)."""
        if features:
            return [grads[0], grads[4], grads[1], grads[2], grads[3]] + list(grads[5:])
        return [grads[0], None] + list(grads[1:]) + [None] * 3

    @tf.custom_gradient
    def op(lg, img, ws, wb, mu, ta, tb, tg):
        if tf.executing_eagerly():
            out, res = meanfield_fwd(lg.numpy(), img.numpy(), **_core_kwargs(
                params, ws.numpy(), wb.numpy(), mu.numpy(), (ta.numpy(), tb.numpy(), tg.numpy())))

            def grad(dy):
                return arrange([tf.constant(g) for g in _grads(res, dy.numpy(), features)])

            return tf.constant(out), grad

        keep = bool(keep_residuals and _tape_active())
        out, handle = tf.numpy_function(partial(graph_forward, keep), [lg, img, ws, wb, mu, ta, tb, tg],
                                        [lg.dtype, tf.int64], stateful=True, name="crfcore_meanfield")
        out.set_shape(lg.shape)

        def grad(dy):
            grads = tf.numpy_function(graph_backward, [handle, dy, lg, img, ws, wb, mu, ta, tb, tg],
                                      [lg.dtype] * n_grads, stateful=True, name="crfcore_meanfield_grad")
            grads[0].set_shape(lg.shape)
            for g in grads[1:4]:
                g.set_shape(ws.shape)
            if features:
                grads[4].set_shape(img.shape)
                for g in grads[5:]:
                    g.set_shape([])
            return arrange(grads)

        return out, grad

    return op(logits, image, spatial_ker_weights, bilateral_ker_weights, compatibility_matrix, *widths)


@keras.saving.register_keras_serializable(package="crfcore")
class PottsInitializer(keras.initializers.Initializer):
    """Initialises an ``(L, L)`` compatibility to the Potts model ``mu = 1 - I``."""

    def __call__(self, shape, dtype=None):
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ValueError(f"PottsInitializer needs a square shape, got {shape}")
        return keras.ops.cast(1.0 - keras.ops.eye(shape[0]), dtype or "float32")

    def get_config(self):
        return {}


def _learned_widths(trainable_widths, names):
    """The widths ``trainable_widths`` (True, False or some of ``names``) makes trainable, in ``names``' order."""
    if isinstance(trainable_widths, (bool, np.bool_)):
        return tuple(names) if trainable_widths else ()
    if isinstance(trainable_widths, str) or not hasattr(trainable_widths, "__iter__"):
        raise TypeError(f"`trainable_widths` must be True, False or a list of width names from {names}, got "
                        f"{trainable_widths!r}")
    given = list(trainable_widths)
    unknown = [w for w in given if w not in names]
    if unknown:
        raise ValueError(f"`trainable_widths` names unknown widths {unknown}; they are {names}")
    return tuple(w for w in names if w in given)


@keras.saving.register_keras_serializable(package="crfcore")
class CrfRnnLayer(keras.layers.Layer):
    """CRF as RNN (Zheng et al. 2015): mean-field refinement of a segmentation network's logits.

    A drop-in for ``crfasrnn_keras``'s ``CrfRnnLayer``: same constructor, called on ``[logits, image]``,
    returns refined logits ``(B, H, W, L)`` (put softmax or a from-logits loss after it). Any batch size,
    including a dynamic one; each image is refined with its own lattice.

    The update is crfasrnn's: ``Z = U - mu (W_s K_s Q + W_b K_b Q)`` per pixel, with ``U`` the input logits,
    ``Q = softmax`` of the previous iterate, ``K_s`` / ``K_b`` the Gaussian spatial and bilateral filters and
    the three trainable ``(L, L)`` matrices ``spatial_ker_weights`` (``W_s``), ``bilateral_ker_weights``
    (``W_b``) and ``compatibility_matrix`` (``mu``).

    Initialisation: ``W_s = spatial_weight * I`` (3), ``W_b = bilateral_weight * I`` (10) and ``mu = 1 - I``
    (Potts), which is densecrf's default CRF, so the layer already improves a good network's output before any
    training. (crfasrnn initialised ``W = I`` and ``mu = -I``; that gives the same probabilities with weights 1.)

    Gradients are exact (the unrolled iterations' backward from crfcore) w.r.t. the logits and the three
    matrices. With ``trainable_widths=True`` the kernel widths ``theta_alpha``, ``theta_beta`` and
    ``theta_gamma`` are trainable too (stored as their logarithms, so they stay positive) and the gradient also
    reaches the image input, so a network in front of it can learn the guidance features; otherwise the image
    gets no gradient from the numba backend. The layer computes in float32 (float64 under a float64 policy) and
    returns its dtype policy's compute dtype (mixed precision works).

    Round starting widths (densecrf's 80, 13, 3) are ties of the lattice (see :func:`crfcore.meanfield_bwd`), and
    the first width gradients there depend on which side of the tie a step lands. It does not matter for
    training: on SmartDoc photos with noisy logits (``docs/scripts/width_starts.py``), 40 Adam steps from the
    defaults and from four starts within 1 % of them ended at test losses of 0.141-0.167, the defaults at 0.153,
    so the defaults are kept as the start.

    Not supported by the default numba backend: XLA (``jit_compile=True``), SavedModel export of the op and
    TensorFlow Lite, because the core runs through ``tf.numpy_function``; ``backend="tf"`` exports to SavedModel
    and runs on GPUs, ``backend="tf-lite"`` converts to TensorFlow Lite (README, "Deployment"). No backend runs
    under XLA.

    Parameters
    ----------
    image_dims : tuple of int, optional
        ``(H, W)``; checked against the inputs when given, taken from them otherwise.
    num_classes : int, optional
        L; checked against the logits when given, taken from them otherwise.
    theta_alpha, theta_beta, theta_gamma : float
        Kernel widths: bilateral in pixels and in image units, spatial in pixels (crfasrnn's names). With
        ``trainable_widths`` these are the initial values, and :meth:`get_config` reports the current ones.
    num_iterations : int
        Mean-field iterations.
    normalization : {"after", "symmetric", "before", "none"}
        Kernel normalisation; crfasrnn's ``"after"`` by default.
    backend : {"numba", "tf", "tf-lite"}
        ``"numba"`` (default) runs crfcore's kernels, the fast choice for CPU training; ``"tf"`` runs the same
        function in TensorFlow ops only (:mod:`crfcore.adapters.tf_lattice`), which exports to SavedModel and runs on a
        GPU; ``"tf-lite"`` is ``"tf"`` with a float32 lattice embedding, convertible to TensorFlow Lite's
        built-in ops. Weights and config are the same: :func:`with_backend` switches a model.
    spatial_weight, bilateral_weight : float
        Initial diagonal of ``spatial_ker_weights`` and ``bilateral_ker_weights``.
    trainable_widths : bool or sequence of str, default False
        Learn the three widths with the matrices (weights ``log_theta_alpha``, ``log_theta_beta``,
        ``log_theta_gamma``), or only those named (e.g. ``("theta_alpha", "theta_beta")``: the bilateral
        kernel's, with ``theta_gamma`` held fixed as densecrf does). The numba backend's backward then also
        differentiates through the lattice's features (crfcore's exact features gradient, about as costly again as
        the rest of the backward); the
        ``"tf"``/``"tf-lite"`` backends use TensorFlow's autodiff, which agrees with it.
    """

    WIDTHS = ("theta_alpha", "theta_beta", "theta_gamma")

    def __init__(self, image_dims=None, num_classes=None, theta_alpha=160.0, theta_beta=3.0, theta_gamma=3.0,
                 num_iterations=5, normalization="after", spatial_weight=3.0, bilateral_weight=10.0,
                 backend="numba", trainable_widths=False, **kwargs):
        super().__init__(**kwargs)
        if backend not in BACKENDS:
            raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        if image_dims is not None:
            try:
                dims = tuple(image_dims)
            except TypeError:
                raise TypeError(f"`image_dims` must be a pair (H, W), got {image_dims!r}") from None
            if len(dims) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
                                         for s in dims):
                raise ValueError(f"`image_dims` must be (H, W) with positive integer sizes, got {image_dims!r}")
            image_dims = tuple(int(s) for s in dims)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer))
                                        or num_classes < 2):
            raise ValueError(f"`num_classes` must be an integer >= 2 or None, got {num_classes!r}")
        check_n_iter(num_iterations, "num_iterations")
        check_normalization(normalization)
        self.image_dims = image_dims
        self.num_classes = None if num_classes is None else int(num_classes)
        self.theta_alpha = positive_scalar(theta_alpha, "theta_alpha")
        self.theta_beta = positive_scalar(theta_beta, "theta_beta")
        self.theta_gamma = positive_scalar(theta_gamma, "theta_gamma")
        self.num_iterations = int(num_iterations)
        self.normalization = normalization
        self.spatial_weight = float(spatial_weight)
        self.bilateral_weight = float(bilateral_weight)
        self.learned_widths = _learned_widths(trainable_widths, self.WIDTHS)
        # True (all three), False (none) or the list of those learned: what get_config reports
        self.trainable_widths = (len(self.learned_widths) == len(self.WIDTHS) if len(self.learned_widths) in (0, 3)
                                 else list(self.learned_widths))
        self.supports_jit = False  # numpy_function (numba) and tf.unique (tf) cannot be compiled by XLA

    def _split_shapes(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or len(input_shape) != 2 or not all(
            isinstance(s, (list, tuple)) or hasattr(s, "as_list") for s in input_shape
        ):
            raise ValueError(f"CrfRnnLayer is called on [logits, image], got input shape {input_shape}")
        return [tuple(s.as_list() if hasattr(s, "as_list") else s) for s in input_shape]

    def build(self, input_shape):
        logits_shape, image_shape = self._split_shapes(input_shape)
        if len(logits_shape) != 4 or len(image_shape) != 4:
            raise ValueError(
                f"CrfRnnLayer needs logits (B, H, W, L) and image (B, H, W, C), got ranks {len(logits_shape)} "
                f"and {len(image_shape)} (shapes {logits_shape} and {image_shape})"
            )
        for axis, name in ((0, "batch"), (1, "height"), (2, "width")):
            a, b = logits_shape[axis], image_shape[axis]
            if a is not None and b is not None and a != b:
                raise ValueError(f"logits and image differ in {name}: {logits_shape} vs {image_shape}")
        n_lab = logits_shape[-1]
        if n_lab is None:
            raise ValueError("the number of classes (last axis of logits) must be known when the layer is built")
        if n_lab < 2:
            raise ValueError(f"logits have {n_lab} class(es); a CRF needs at least 2")
        if self.num_classes is not None and self.num_classes != n_lab:
            raise ValueError(f"num_classes={self.num_classes} but logits have {n_lab} classes")
        if self.image_dims is not None and None not in logits_shape[1:3] and tuple(logits_shape[1:3]) != \
                self.image_dims:
            raise ValueError(f"image_dims={self.image_dims} but the inputs are {tuple(logits_shape[1:3])}")
        self.num_classes = n_lab
        self.spatial_ker_weights = self.add_weight(
            name="spatial_ker_weights", shape=(n_lab, n_lab),
            initializer=keras.initializers.Identity(gain=self.spatial_weight))
        self.bilateral_ker_weights = self.add_weight(
            name="bilateral_ker_weights", shape=(n_lab, n_lab),
            initializer=keras.initializers.Identity(gain=self.bilateral_weight))
        self.compatibility_matrix = self.add_weight(
            name="compatibility_matrix", shape=(n_lab, n_lab), initializer=PottsInitializer())
        for name in self.learned_widths:
            setattr(self, f"log_{name}", self.add_weight(
                name=f"log_{name}", shape=(), initializer=keras.initializers.Constant(np.log(getattr(self, name)))))

    def _widths(self):
        """The widths the call uses: the constructor's floats, and ``exp`` of the trainable logs for those learned
        (in the variables' dtype: float64 under a float64 policy, so that finite differences see the
        perturbation)."""
        return tuple(tf.exp(getattr(self, f"log_{name}").value) if name in self.learned_widths else
                     getattr(self, name) for name in self.WIDTHS)

    def current_widths(self):
        """``{"theta_alpha": ..., "theta_beta": ..., "theta_gamma": ...}`` as floats: the learned values for the
        trainable widths (once the layer is built; exactly the widths a call uses), the constructor's otherwise."""
        widths = self._widths() if self.built else [getattr(self, name) for name in self.WIDTHS]
        return {name: float(w) for name, w in zip(self.WIDTHS, widths)}

    def _checked(self, logits, image):
        """Run-time checks of what the build could not see (dynamic shapes, values), naming the input.

        The numba backend's core checks values itself. The "tf" backend adds TensorFlow assertions; "tf-lite" adds
        none, because TensorFlow Lite's built-in ops cannot raise: there a NaN in the inputs gives NaN outputs, so
        validate inputs before the interpreter (``python -m unet export`` checks its outputs against Keras).
        """
        a, b = list(logits.shape)[:-1], list(image.shape)[:-1]
        if len(a) != len(b) or any(x is not None and y is not None and x != y for x, y in zip(a, b)):
            raise ValueError(f"CrfRnnLayer: `logits` {tuple(logits.shape)} and `image` {tuple(image.shape)} differ in "
                             f"batch or spatial size (all axes but the last must match)")
        if self.image_dims is not None and None not in a[1:3] and tuple(a[1:3]) != self.image_dims:
            raise ValueError(f"CrfRnnLayer: the inputs are {tuple(a[1:3])} but image_dims={self.image_dims}")
        if self.backend == "tf-lite":
            return logits, image
        checks = [tf.debugging.assert_equal(
            tf.shape(logits)[:-1], tf.shape(image)[:-1],
            message="CrfRnnLayer: `logits` and `image` differ in batch or spatial size (all axes but the last must "
                    "match)")]
        if self.image_dims is not None:
            checks.append(tf.debugging.assert_equal(
                tf.shape(logits)[1:3], tf.constant(self.image_dims, tf.int32),
                message=f"CrfRnnLayer: the inputs' spatial size differs from image_dims={self.image_dims}"))
        with tf.control_dependencies(checks):
            logits, image = tf.identity(logits), tf.identity(image)
        if self.backend == "tf":
            # -inf marks an impossible label (a masked class), as in the core; NaN, +inf and a pixel with no label
            # left are errors
            possible = tf.where(tf.equal(logits, -np.inf), tf.zeros_like(logits), logits)
            checks = [tf.debugging.assert_all_finite(possible, "CrfRnnLayer: `logits` contains NaN or +inf values"),
                      tf.debugging.assert_equal(
                          tf.reduce_any(tf.reduce_all(tf.equal(logits, -np.inf), axis=-1)), False,
                          message="CrfRnnLayer: `logits` is -inf for every label at some pixel")]
            with tf.control_dependencies(checks):
                logits = tf.identity(logits)
            image = tf.debugging.assert_all_finite(tf.cast(image, tf.float32),
                                                   "CrfRnnLayer: `image` contains NaN or infinite values")
        return logits, image

    def call(self, inputs, training=None):
        logits, image = self._checked(*inputs)
        theta_alpha, theta_beta, theta_gamma = self._widths()
        if self.backend == "tf" and self.learned_widths:
            theta_alpha, theta_beta, theta_gamma = (
                tf.debugging.assert_all_finite(t, f"CrfRnnLayer: the width `{name}` is not finite")
                for t, name in zip((theta_alpha, theta_beta, theta_gamma), self.WIDTHS))
        if self.backend in ("tf", "tf-lite"):
            weights = [tf.cast(w.value, tf.float32) for w in (self.spatial_ker_weights, self.bilateral_ker_weights,
                                                              self.compatibility_matrix)]
            if self.backend == "tf":
                weights = [tf.debugging.assert_all_finite(w, f"CrfRnnLayer: the weight `{v.name}` is NaN or infinite")
                           for w, v in zip(weights, (self.spatial_ker_weights, self.bilateral_ker_weights,
                                                    self.compatibility_matrix))]
            out = tf_lattice.meanfield(
                logits, image, *weights,
                n_iter=self.num_iterations, theta_alpha=theta_alpha, theta_beta=theta_beta,
                theta_gamma=theta_gamma, normalization=self.normalization,
                embed_dtype=tf.float32 if self.backend == "tf-lite" else tf.float64)
            return tf.cast(out, self.compute_dtype)
        dt = tf.float64 if self.compute_dtype == "float64" else tf.float32
        out = _meanfield_op(
            tf.cast(logits, dt), tf.cast(image, dt),
            tf.cast(self.spatial_ker_weights.value, dt),
            tf.cast(self.bilateral_ker_weights.value, dt),
            tf.cast(self.compatibility_matrix.value, dt),
            n_iter=self.num_iterations, theta_alpha=theta_alpha, theta_beta=theta_beta,
            theta_gamma=theta_gamma, normalization=self.normalization,
            keep_residuals=training is not False, features_grad=bool(self.learned_widths),
        )
        return tf.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        logits_shape, _ = self._split_shapes(input_shape)
        return tuple(logits_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            image_dims=None if self.image_dims is None else list(self.image_dims),
            num_classes=self.num_classes,
            **self.current_widths(),
            num_iterations=self.num_iterations,
            normalization=self.normalization,
            spatial_weight=self.spatial_weight,
            bilateral_weight=self.bilateral_weight,
            backend=self.backend,
            trainable_widths=self.trainable_widths,
        )
        return config


def with_backend(model, backend):
    """A copy of ``model`` whose ``CrfRnnLayer`` layers use ``backend`` (same weights, same config otherwise)."""
    if backend not in BACKENDS:
        raise ValueError(f"`backend` must be one of {BACKENDS}, got {backend!r}")

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, CrfRnnLayer):
            config["backend"] = backend
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
