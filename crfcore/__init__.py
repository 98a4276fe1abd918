"""crfcore: dense CRFs on a Numba permutohedral lattice, with exact gradients.

Public entry points
-------------------
meanfield
    Mean-field inference (post-processing of any segmentation).
meanfield_fwd, meanfield_bwd
    The forward pass with residuals and the exact backward of the unrolled iterations (CRF as RNN).
crf, crf_fwd, crf_bwd, PairwiseTerm
    The same with any list of pairwise terms (any features, weights, compatibilities, normalisations).
fit
    Fit the CRF's parameters (widths, weights, compatibility) to a few labelled images for post-processing.
refine_files
    Refine a whole data set of images and scores into label maps (``python -m crfcore refine``), tiled for
    images of any size, optionally on a Dask cluster.
warmup
    How a fresh install's first inference calls run (NumPy while the kernels compile in the background).
Lattice
    The permutohedral lattice: Gaussian filtering in feature space, its exact transpose and its features gradient.
"""

from . import _threads, warmup
from .lattice import Lattice
from .inference import MeanfieldGrads, MeanfieldResiduals, meanfield, meanfield_bwd, meanfield_fwd, potts
from .fitting import fit
from .terms import CrfModel, PairwiseTerm, crf, crf_bwd, crf_fwd
from .refine import refine_files

__all__ = ["Lattice", "meanfield", "meanfield_fwd", "meanfield_bwd", "MeanfieldGrads", "MeanfieldResiduals", "potts",
           "fit", "PairwiseTerm", "CrfModel", "crf", "crf_fwd", "crf_bwd", "refine_files"]
__version__ = "0.1.0"

_threads.configure()  # TBB as Numba's threading layer where installed: fork-safe, no spinning across processes
