"""crfcore: dense CRFs on a Numba permutohedral lattice, with exact gradients.

Public entry points
-------------------
meanfield
    Mean-field inference (post-processing of any segmentation).
meanfield_fwd, meanfield_bwd, MeanfieldResiduals, MeanfieldGrads
    The forward pass with residuals and the exact backward of the unrolled iterations (CRF as RNN).
crf, crf_fwd, crf_bwd, PairwiseTerm, CrfModel, CrfResiduals, CrfGrads, TermGrads
    The same with any list of pairwise terms (any features, weights, compatibilities, normalisations).
positions, potts
    Pixel positions as features (for :class:`PairwiseTerm`) and the Potts compatibility ``1 - I``.
fit
    Fit the CRF's parameters (widths, weights, compatibility) to a few labelled images for post-processing.
refine_files
    Refine a whole data set of images and scores into label maps (the ``crfcore refine`` command), tiled for
    images of any size, optionally on a Dask cluster.
Lattice
    The permutohedral lattice: Gaussian filtering in feature space, its exact transpose and its features gradient.

Subpackages: :mod:`crfcore.adapters` (Keras, PyTorch and JAX layers; each needs its framework's extra),
:mod:`crfcore.pydensecrf` (pydensecrf's API), :mod:`crfcore.refine` (data sets) and :mod:`crfcore.warmup` (how a
fresh install's first calls run).
"""

from . import warmup
from ._runtime import threads as _threads
from ._version import __version__
from .features import positions
from .fitting import fit
from .inference import MeanfieldGrads, MeanfieldResiduals, meanfield, meanfield_bwd, meanfield_fwd
from .lattice import Lattice
from .params import potts
from .refine import refine_files
from .terms import CrfGrads, CrfModel, CrfResiduals, PairwiseTerm, TermGrads, crf, crf_bwd, crf_fwd

__all__ = [
    "__version__",
    # mean field on images (post-processing, CRF as RNN)
    "meanfield", "meanfield_fwd", "meanfield_bwd", "MeanfieldResiduals", "MeanfieldGrads",
    # any pairwise terms
    "crf", "crf_fwd", "crf_bwd", "PairwiseTerm", "CrfModel", "CrfResiduals", "CrfGrads", "TermGrads",
    "positions", "potts",
    # fitting, data sets, the lattice
    "fit", "refine_files", "Lattice",
]

# Numba picks its threading layer when the first parallel kernel runs; loading the TBB runtime now (no thread is
# started, no variable set, no file written) lets it find TBB, which is fork-safe and does not spin on the cores of
# other processes (crfcore._runtime.threads). A layer already running, or NUMBA_THREADING_LAYER, is left alone.
_threads.configure()
