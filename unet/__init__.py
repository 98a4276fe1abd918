"""The showcase pipeline: U-Net receipt segmentation, then a trainable CRF-RNN layer (``python -m unet``).

Modules: ``synth`` (procedural synthetic photos), ``data`` (folders and splits), ``model`` (the U-Net),
``metrics`` (Dice, IoU, islands), ``pipeline`` (train / attach / evaluate), ``report`` and ``cli``.
"""
