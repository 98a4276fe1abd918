"""Refine whole data sets of images and scores into label maps: :func:`refine_files` and ``crfcore refine``.

Modules: :mod:`~crfcore.refine.files` (the run over a data set), :mod:`~crfcore.refine.job` (one file),
:mod:`~crfcore.refine.tiling` (images of any size on overlapping tiles, in bounded memory),
:mod:`~crfcore.refine.imageio` (reading images and scores, writing outputs atomically),
:mod:`~crfcore.refine.cluster` (a Dask cluster) and :mod:`~crfcore.refine.cli` (the command's arguments).
"""

from .files import Summary, refine_files

__all__ = ["refine_files", "Summary"]
