"""``crfcore.fit``: fit a dense CRF's parameters for post-processing to a few labelled images, without a
deep-learning framework.

The loss of the refined segmentation (cross-entropy or soft Dice against the labels) is minimised with scipy's
L-BFGS-B on the exact gradient of :func:`crfcore.meanfield_bwd`: widths in log space (so they stay positive), kernel
weights and the compatibility as they are, plus an L2 penalty that keeps them near where they started.
"""

import numbers
import sys
import time
import warnings
from collections.abc import Mapping

import numpy as np

from ._validation import check_finite
from .inference import meanfield_bwd, meanfield_fwd
from .params import DEFAULTS, check_params

LEARNABLE = ("widths", "weights", "compat")
LOSSES = ("cross_entropy", "dice")
WIDTHS = ("theta_alpha", "theta_beta", "theta_gamma")
#: meanfield's defaults (:data:`crfcore.params.DEFAULTS`), the starting point where ``init`` says nothing.
START = {k: v for k, v in DEFAULTS.items() if k not in ("n_iter", "spatial_dims")}
#: Widths stay within this factor of their starting value (the lattice refuses features that are too large).
WIDTH_RANGE = 50.0


def _as_list(x, name):
    """A batch (leading axis) or a sequence of per-image arrays, as a list of arrays."""
    if isinstance(x, np.ndarray):
        return list(x)
    if isinstance(x, (list, tuple)):
        return [np.asarray(a) for a in x]
    raise TypeError(f"`{name}` must be an array with a batch axis or a list of per-image arrays, got "
                    f"{type(x).__name__}")


def _check_data(logits, images, labels, spatial_dims, ignore_index):
    logits, images, labels = (_as_list(x, n) for x, n in ((logits, "logits"), (images, "images"),
                                                          (labels, "labels")))
    if not logits:
        raise ValueError("`logits` is empty: pass at least one labelled image")
    if not len(logits) == len(images) == len(labels):
        raise ValueError(f"`logits`, `images` and `labels` must hold as many images, got {len(logits)}, "
                         f"{len(images)} and {len(labels)}")
    n_lab = np.shape(logits[0])[-1]
    data = []
    for i, (lg, img, lab) in enumerate(zip(logits, images, labels)):
        lg = np.asarray(lg)
        if lg.ndim != spatial_dims + 1 or lg.shape[-1] != n_lab:
            raise ValueError(f"`logits[{i}]` must have shape (*spatial, {n_lab}) with {spatial_dims} spatial axes, "
                             f"got {lg.shape}")
        if lg.dtype.kind != "f":
            raise TypeError(f"`logits[{i}]` must be a floating-point array, got dtype {lg.dtype}")
        if lab.dtype.kind not in "iu":
            raise TypeError(f"`labels[{i}]` must be an integer label map, got dtype {lab.dtype}")
        if lab.shape != lg.shape[:-1]:
            raise ValueError(f"`labels[{i}]` has shape {lab.shape} but `logits[{i}]` has spatial shape "
                             f"{lg.shape[:-1]}")
        known = lab != ignore_index if ignore_index is not None else np.ones(lab.shape, bool)
        bad = known & ((lab < 0) | (lab >= n_lab))
        if bad.any():
            raise ValueError(f"`labels[{i}]` holds values outside 0..{n_lab - 1} (e.g. {lab[bad][0]}); mark unlabelled "
                             f"pixels with `ignore_index`")
        check_finite(lg, f"logits[{i}]")
        data.append((np.ascontiguousarray(lg, dtype=np.float64), img, np.where(known, lab, 0), known))
    if not any(k.any() for *_, k in data):
        raise ValueError("`labels` has no labelled pixel (all equal `ignore_index`)")
    if ignore_index is not None and 0 <= ignore_index < n_lab:
        warnings.warn(f"`ignore_index`={ignore_index} is also a label (0..{n_lab - 1}): every pixel of class "
                      f"{ignore_index} is left out of the fit; use a value outside the labels (e.g. 255) for "
                      f"unlabelled pixels", UserWarning, stacklevel=3)
    present = np.unique(np.concatenate([lab[k] for _, _, lab, k in data]))
    if present.size == 1:
        warnings.warn(f"every labelled pixel is class {int(present[0])}: the fit can only learn to smooth towards "
                      f"it, and its parameters say little about images with other classes; label some pixels of "
                      f"the other classes", UserWarning, stacklevel=3)
    return data, n_lab


class _Packing:
    """Which parameters are learned and how they map to one vector for L-BFGS (widths as logs)."""

    def __init__(self, start, learn):
        self.start = start
        self.fields = []  # (name, shape, is_log)
        if "widths" in learn:
            self.fields += [(name, np.shape(start[name]), True) for name in WIDTHS]
        if "weights" in learn:
            self.fields += [(name, np.shape(start[name]), False) for name in ("w_spatial", "w_bilateral")]
        if "compat" in learn:
            self.fields.append(("compat", start["compat"].shape, False))

    def vector(self, params):
        parts = [np.log(np.asarray(params[n], float)) if log else np.asarray(params[n], float)
                 for n, _, log in self.fields]
        return np.concatenate([p.ravel() for p in parts]) if parts else np.zeros(0)

    def params(self, x):
        out, k = dict(self.start), 0
        for name, shape, log in self.fields:
            size = int(np.prod(shape))
            v = x[k:k + size].reshape(shape)
            v = np.exp(v) if log else v
            out[name] = float(v) if shape == () else v.copy()
            k += size
        return out

    def gradient(self, params, grads):
        """The gradient w.r.t. the vector from the gradients w.r.t. the parameters (``d/dlog t = t d/dt``)."""
        parts = [np.asarray(grads[n], float) * (np.asarray(params[n], float) if log else 1.0)
                 for n, _, log in self.fields]
        return np.concatenate([p.ravel() for p in parts]) if parts else np.zeros(0)

    def bounds(self):
        out = []
        for name, shape, log in self.fields:
            lo, hi = (np.log(np.asarray(self.start[name], float) / WIDTH_RANGE),
                      np.log(np.asarray(self.start[name], float) * WIDTH_RANGE)) if log else (None, None)
            for i in range(int(np.prod(shape))):
                out.append((None, None) if not log else (float(np.ravel(lo)[i]), float(np.ravel(hi)[i])))
        return out


def _loss_and_grad(out, lab, known, kind):
    """Loss summed over the labelled pixels of one image (cross-entropy on the refined logits) or its soft-Dice
    statistics (on the probabilities), and the gradient w.r.t. ``out``."""
    n_lab = out.shape[-1]
    if kind == "cross_entropy":
        z = out - out.max(-1, keepdims=True)
        logq = z - np.log(np.exp(z).sum(-1, keepdims=True))
        onehot = np.eye(n_lab)[lab]
        mask = known[..., None]
        return -np.sum(logq * onehot * mask), (np.exp(logq) - onehot) * mask
    onehot = np.eye(n_lab)[lab] * known[..., None]
    q = out * known[..., None]
    axes = tuple(range(out.ndim - 1))
    return (np.sum(q * onehot, axis=axes), np.sum(q, axis=axes), np.sum(onehot, axis=axes)), onehot


def _progress(enabled, max_iter):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm belongs to the [tf] extra: plain lines instead
        class _Lines:
            def __init__(self):
                self.n = 0

            def update(self, k=1):
                self.n += k

            def set_postfix_str(self, s):
                print(f"crfcore.fit: iteration {self.n}/{max_iter} {s}", file=sys.stderr, flush=True)

            def close(self):
                pass

        return _Lines()
    return tqdm(total=max_iter, desc="crfcore.fit (L-BFGS)", unit="it", leave=False)


def fit(logits, images, labels, *, n_iter=None, init=None, learn=LEARNABLE, loss="cross_entropy", l2=1e-3,
        max_iter=100, ignore_index=None, spatial_dims=2, progress=True, return_info=False, search_widths=True):
    """``crfcore.fit``: fit a dense CRF's parameters to labelled images, for :func:`crfcore.meanfield` post-processing.

    Parameters
    ----------
    logits : array_like ``(B, *spatial, L)`` or list of ``(*spatial, L)`` arrays
        The segmentation network's (or any scorer's) logits for each image; images may differ in size when given
        as lists.
    images : array_like ``(B, *spatial, C)`` or list of ``(*spatial, C)`` arrays
        The guidance images, in the units ``theta_beta`` is in (0-255 for uint8).
    labels : array_like ``(B, *spatial)`` or list of ``(*spatial)`` integer arrays
        The true label of each pixel, ``0 .. L - 1``; pixels equal to ``ignore_index`` do not count (sparse
        annotations work).
    n_iter : int, optional
        Mean-field iterations, as the fitted parameters will be used: ``init``'s ``n_iter`` if it has one (a
        previous fit's result does), else 5. Both, and different, is a ValueError.
    init : dict, optional
        :func:`crfcore.meanfield` keyword arguments to start from (``theta_alpha``, ``theta_beta``,
        ``theta_gamma``, ``w_spatial``, ``w_bilateral``, ``compat``, ``normalization``, ``n_iter``); meanfield's
        defaults for the rest. Widths may be per dimension, weights ``(L, L)`` matrices: they are learned in that
        form.
    learn : sequence of {"widths", "weights", "compat"}
        What to fit; the rest stays at ``init``. ``"compat"`` learns the full ``(L, L)`` compatibility (from
        Potts when ``init`` has none).
    loss : {"cross_entropy", "dice"}
        Mean cross-entropy of the refined probabilities over the labelled pixels, or ``1 -`` the mean soft Dice
        over the labels (for unbalanced classes).
    l2 : float, default 1e-3
        Weight of the penalty ``l2 * |x - x_init|^2`` on the fitted vector (log widths, weights, compat).
    max_iter : int, default 100
        L-BFGS iterations (each one or a few forward + backward passes over the images).
    ignore_index : int, optional
        Label value of unlabelled pixels.
    spatial_dims : int, default 2
    progress : bool, default True
        Show a progress bar (tqdm when installed, else a line per iteration on stderr).
    return_info : bool, default False
        Also return a dict with ``loss_start`` (the loss at ``init``), ``search`` (the ``(widths, loss)`` of every
        start tried, ``init`` first), ``start`` (the widths the gradient steps started from), ``loss_best_start``
        (their loss on all images), ``loss`` (the returned parameters' loss, without the penalty),
        ``kept_start`` (True when the gradient steps ended worse than their start, which is then returned),
        ``history`` (loss per evaluation), ``evaluations``, ``seconds``, ``converged`` and scipy's ``message``.
    search_widths : bool, default True
        When the widths are learned, first try a coarse grid of widths scaled to the data (18 combinations of
        ``theta_alpha`` at 3, 10 and 30 % of the image size, ``theta_beta`` at 3, 10 and 30 % of the images'
        value range and ``theta_gamma`` 1 or 3 px, on up to four images, forward passes only) beside ``init``,
        and start the gradient steps from the best. False starts from ``init`` alone.

    Returns
    -------
    params : dict
        Keyword arguments for ``crfcore.meanfield(logits, image, **params)``, ``n_iter`` included.

    Notes
    -----
    The returned parameters are never worse on the training loss than the best start tried.

    The loss is not smooth everywhere in the widths. The permutohedral lattice assigns each pixel to a simplex; as a
    width changes, pixels cross simplex boundaries and the filter jumps by a small amount. The analytic gradient
    (:func:`crfcore.meanfield_bwd`) is exact on each smooth piece but does not see the jumps, so a finite difference
    across a boundary can differ from it by orders of magnitude. On the integer pixel grid, round widths (3, 6, 80)
    put whole rows and columns of pixels exactly on boundaries: they are ties, and a finite difference there
    measures the jump. For learning this means: the gradient points the right way on the piece the widths are on;
    steps move across pieces and the loss decreases in the large; L-BFGS may stop on a line search rather than the
    gradient tolerance (``info["message"]`` says so), and the coarse search above does not depend on gradients.

    Examples
    --------
    >>> params = crfcore.fit(logits, images, labels, init=dict(theta_alpha=80.0))  # doctest: +SKIP
    >>> q = crfcore.meanfield(new_logits, new_image, **params)                         # doctest: +SKIP
    """
    if isinstance(learn, str):
        learn = (learn,)
    learn = tuple(learn)
    unknown = [x for x in learn if x not in LEARNABLE]
    if unknown or not learn:
        raise ValueError(f"`learn` must name some of {LEARNABLE}, got {learn!r}")
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}, got {loss!r}")
    if isinstance(max_iter, (bool, np.bool_)) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ValueError(f"`max_iter` must be a positive int, got {max_iter!r}")
    if isinstance(l2, (bool, np.bool_)) or not isinstance(l2, numbers.Real) or not np.isfinite(l2) or l2 < 0:
        raise ValueError(f"`l2` must be a finite number >= 0, got {l2!r}")
    data, n_lab = _check_data(logits, images, labels, spatial_dims, ignore_index)
    if init is not None and not isinstance(init, Mapping):
        raise TypeError(f"`init` must be a dict of crfcore.meanfield keyword arguments (e.g. dict(theta_alpha=80.0) or "
                        f"a previous fit's result), got {type(init).__name__} {init!r:.60}")
    init = dict(init or {})
    bad = [k for k in init if k not in START and k != "n_iter"]
    if bad:
        raise ValueError(f"`init` has unknown keys {bad}; it takes crfcore.meanfield's {sorted(START) + ['n_iter']}")
    if n_iter is not None and "n_iter" in init and init["n_iter"] != n_iter:
        raise ValueError(f"`n_iter`={n_iter!r} but `init` has n_iter={init['n_iter']!r}: give it once (or the same "
                         f"in both)")
    n_iter = init.pop("n_iter", DEFAULTS["n_iter"] if n_iter is None else n_iter)
    start = dict(START, **init)
    n_channels = np.shape(data[0][1])[-1] if np.ndim(data[0][1]) == spatial_dims + 1 else 1
    try:
        checked = check_params(n_lab, n_iter=n_iter, spatial_dims=spatial_dims, n_channels=n_channels, **start)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"in `init`: {exc}") from None
    start = dict(checked._asdict())
    start.pop("spatial_dims")
    n_iter = int(start.pop("n_iter"))
    t0 = time.perf_counter()
    n_known = sum(int(k.sum()) for *_, k in data)
    history = []
    search = []
    if "widths" in learn and search_widths:
        start = _search_start(start, data, n_iter, spatial_dims, loss, n_known, search)
    pack = _Packing(start, learn)
    x0 = pack.vector(start)
    bar = _progress(progress, max_iter)

    def objective(x):
        params = pack.params(x)
        total, grads = 0.0, None
        dice_stats, runs = [], []
        for lg, img, lab, known in data:
            out, res = meanfield_fwd(lg, img, n_iter=n_iter, spatial_dims=spatial_dims,
                                     output="logits" if loss == "cross_entropy" else "probs", **params)
            value, g = _loss_and_grad(out, lab, known, loss)
            if loss == "cross_entropy":
                total += value / n_known
                runs.append((res, g / n_known))
            else:
                dice_stats.append(value)
                runs.append((res, (out, g)))
        if loss == "dice":
            inter, pred, true = (sum(s[j] for s in dice_stats) for j in range(3))
            denom = pred + true + 1e-6
            total = 1.0 - np.mean(2 * inter / denom)
            # d/dq_c of -mean_c 2 I_c / S_c, with I_c = sum q_c y_c and S_c = sum q_c + sum y_c (labelled pixels)
            coef_y, coef_1 = -2.0 / (n_lab * denom), 2.0 * inter / (n_lab * denom**2)
            runs = [(res, (onehot * coef_y + coef_1) * (onehot.sum(-1, keepdims=True) > 0))
                    for res, (out, onehot) in runs]
        for res, g in runs:  # sum the parameters' gradients over the images
            b = meanfield_bwd(res, g, features="widths" in learn)._asdict()
            b = {k: v for k, v in b.items() if k not in ("logits", "image") and v is not None}
            grads = b if grads is None else {k: grads[k] + v for k, v in b.items()}
        history.append(float(total))
        d = x - x0
        return total + l2 * float(d @ d), pack.gradient(params, grads) + 2 * l2 * d

    def step(_):
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"loss {history[-1]:.5f}")

    from scipy.optimize import minimize  # here, not at import: scipy.optimize takes ~0.35 s to import

    try:
        result = minimize(objective, x0, jac=True, method="L-BFGS-B", bounds=pack.bounds(),
                          options=dict(maxiter=int(max_iter)), callback=step)
    finally:
        if bar is not None:
            bar.close()
    evaluations = len(history)
    objective(result.x)  # the loss at the result, without the penalty
    loss_fit, loss_best_start = history[-1], history[0]
    kept_start = loss_fit > loss_best_start  # never worse on the training loss than the best start tried
    best = start if kept_start else pack.params(result.x)
    params = dict(best, n_iter=n_iter)
    if np.ndim(params["compat"]) == 2 and "compat" not in learn and init.get("compat") is None:
        params["compat"] = None  # Potts, as it came
    if not return_info:
        return params
    info = dict(loss_start=search[0][1] if search else loss_best_start, loss_best_start=loss_best_start,
                loss=min(loss_fit, loss_best_start), history=history[:evaluations], evaluations=int(result.nfev),
                iterations=int(result.nit), seconds=time.perf_counter() - t0, converged=bool(result.success),
                message=str(result.message), search=search, start={k: start[k] for k in WIDTHS},
                kept_start=bool(kept_start))
    return params, info


def _image_range(data):
    lo = min(float(np.min(img)) for _, img, _, _ in data)
    hi = max(float(np.max(img)) for _, img, _, _ in data)
    return hi - lo


def _search_start(start, data, n_iter, spatial_dims, loss, n_known, search):
    """The best start for the gradient steps among ``start`` and a coarse grid of widths scaled to the data (the
    images' size and value range): a few dozen forward passes on up to four images, each recorded in ``search``
    as ``(widths, loss)``. Users call fit because they do not know good widths; a poor start (a colour width far
    from the image's units) otherwise leaves L-BFGS where the loss is flat."""
    sample = data[:4]
    n_sample = sum(int(k.sum()) for *_, k in sample)
    size = max(max(np.shape(lg)[:spatial_dims]) for lg, *_ in sample)
    value_range = _image_range(sample)

    def value(widths):
        params = dict(start, **widths)
        values = []
        for lg, img, lab, known in sample:
            try:
                out, _ = meanfield_fwd(lg, img, n_iter=n_iter, spatial_dims=spatial_dims, keep_residuals=False,
                                       output="logits" if loss == "cross_entropy" else "probs", **params)
            except ValueError:  # widths too small for the lattice on these images
                return np.inf
            values.append(_loss_and_grad(out, lab, known, loss)[0])
        if loss == "dice":
            inter, pred, true = (sum(v[j] for v in values) for j in range(3))
            return float(1.0 - np.mean(2 * inter / (pred + true + 1e-6)))
        return float(sum(values) / n_sample)

    def scaled(name, x):  # keep the form (one value or one per axis / channel)
        return x * np.ones(np.shape(start[name])) if np.ndim(start[name]) else float(x)

    candidates = [{k: start[k] for k in WIDTHS}]
    alphas = [size * f for f in (0.03, 0.1, 0.3)]
    betas = [value_range * f for f in (0.03, 0.1, 0.3)] if value_range > 0 else [None]
    gammas = [1.0, 3.0]
    for a in alphas:
        for b in betas:
            for g in gammas:
                candidates.append(dict(theta_alpha=scaled("theta_alpha", a), theta_gamma=scaled("theta_gamma", g),
                                       theta_beta=start["theta_beta"] if b is None else scaled("theta_beta", b)))
    for widths in candidates:
        search.append((widths, value(widths)))
    best = min(range(len(search)), key=lambda i: search[i][1])
    return dict(start, **search[best][0])
