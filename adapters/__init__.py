"""Framework adapters for crfcore, each behind its extra: :mod:`crfcore.adapters.tf` (Keras 3 / TensorFlow,
``pip install "crfcore[tf]"``), :mod:`crfcore.adapters.torch` (``crfcore[torch]``) and :mod:`crfcore.adapters.jax`
(``crfcore[jax]``).

Importing this package needs no framework; each framework module raises an ImportError naming its extra when the
framework is missing. All three share one function contract, ``crf_refine(logits, image, *, n_iter, theta_alpha,
theta_beta, theta_gamma, w_bilateral, w_spatial, compat, normalization, spatial_dims)`` with
:func:`crfcore.meanfield`'s keywords, order and defaults:

========== ==================================== ====================================
framework  logits                               image
========== ==================================== ====================================
core, JAX  ``(..., *spatial, L)`` channels last ``(..., *spatial, C)``
TensorFlow ``(..., *spatial, L)`` channels last ``(..., *spatial, C)``
PyTorch    ``(B, L, *spatial)`` channels first  ``(B, C, *spatial)``
========== ==================================== ====================================

The crfasrnn-compatible names (``image_dims``, ``num_classes``, ``num_iterations``, ...) belong to the drop-in
classes :class:`crfcore.adapters.tf.CrfRnnLayer` and :class:`crfcore.adapters.torch.CrfRnn`.
"""

if __name__ != "crfcore.adapters":  # the checkout's folder imported by its 0.1 name, ``adapters``
    from crfcore._compat import alias_package

    alias_package(__name__, "crfcore.adapters")
