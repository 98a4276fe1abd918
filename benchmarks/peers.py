"""The peers every benchmark runs on the same input: crfcore and the C++ densecrf (pydensecrf2), with one model."""

import numpy as np

import crfcore

KERNELS = dict(theta_gamma=3.0, w_spatial=3.0, theta_alpha=80.0, theta_beta=13.0, w_bilateral=10.0)

try:
    from pydensecrf import densecrf as dcrf
except ImportError:  # optional peer
    dcrf = None

INSTALL_HINT = "pydensecrf2 is not installed: `pip install pydensecrf2` (builds the C++ densecrf, ~30 s)"


def densecrf(logits, image, n_iter):
    """pydensecrf2's mean field with crfcore's default kernels (the same model, see the README's table)."""
    h, w, n_lab = logits.shape
    return _pydensecrf_script(dcrf, logits, image, n_iter).T.reshape(h, w, n_lab)


def ours(logits, image, n_iter):
    return crfcore.meanfield(logits, image, n_iter=n_iter, **KERNELS)


def _pydensecrf_setup(module, logits, image):
    """The usual pydensecrf set-up: DenseCRF2D, a unary, the Gaussian and bilateral terms."""
    h, w, n_lab = logits.shape
    d = module.DenseCRF2D(w, h, n_lab)
    d.setUnaryEnergy(np.ascontiguousarray(-logits.reshape(-1, n_lab).T))
    d.addPairwiseGaussian(sxy=KERNELS["theta_gamma"], compat=KERNELS["w_spatial"])
    d.addPairwiseBilateral(sxy=KERNELS["theta_alpha"], srgb=KERNELS["theta_beta"], rgbim=image,
                           compat=KERNELS["w_bilateral"])
    return d


def _pydensecrf_script(module, logits, image, n_iter):
    """The usual pydensecrf script: :func:`_pydensecrf_setup`, then inference."""
    return np.array(_pydensecrf_setup(module, logits, image).inference(n_iter))
