"""A bounded store of forward residuals waiting for their backward, for framework adapters whose graphs pass only
tensors between the forward and the backward (TensorFlow's ``numpy_function``, PyTorch custom ops, JAX callbacks):
the forward returns an integer handle, the backward pops its residuals by it.

A forward whose backward never runs (a forward under a tape that is dropped, a traced graph run for inference)
would otherwise leak; the store is bounded in bytes and count, and evicted residuals are recomputed by the backward,
so eviction costs time, never correctness.
"""

import itertools
import threading
from collections import OrderedDict

import numpy as np


def residual_bytes(res):
    """Memory held by a forward's residuals: every array in them (iterates, messages, features; device memory for a
    CUDA forward's) and every kernel's lattice, found by walking the tuples, lists and models they nest (meanfield's
    hold one crf residual per image, whose model holds the terms and kernels), each object counted once."""
    total, seen, todo = 0, set(), [res]
    while todo:
        v = todo.pop()
        if v is None or id(v) in seen or isinstance(v, (str, bytes, int, float, np.generic)):
            continue
        seen.add(id(v))
        if all(hasattr(v, a) for a in ("shape", "dtype", "nbytes")):  # NumPy, or a device array (also simulated)
            total += int(v.nbytes)
        elif isinstance(v, (tuple, list)):
            todo.extend(v)
        elif hasattr(v, "lattice") and hasattr(v.lattice, "nbytes"):  # a kernel: its lattice's index arrays, once
            if id(v.lattice) not in seen:  # (the images of a batch hold twins of one cached spatial kernel)
                seen.add(id(v.lattice))
                total += int(v.lattice.nbytes)
        elif hasattr(v, "terms") and hasattr(v, "kernels"):  # crfcore.CrfModel: the terms' features, the kernels
            todo.extend(v.terms)
            todo.extend(v.kernels)
    return total


class ResidualStore:
    """Residuals of forwards waiting for their backward, bounded in bytes and count (oldest evicted first)."""

    def __init__(self, max_bytes=2 << 30, max_items=32):
        self.max_bytes = max_bytes
        self.max_items = max_items
        self._items = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    def put(self, res):
        """Store ``res``; returns its handle (a positive int)."""
        size = residual_bytes(res)
        with self._lock:
            handle = next(self._ids)
            self._items[handle] = (res, size)
            self._bytes += size
            while len(self._items) > 1 and (self._bytes > self.max_bytes or len(self._items) > self.max_items):
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= old
        return handle

    def pop(self, handle):
        """The residuals stored under ``handle`` (removed), or None if evicted or unknown."""
        with self._lock:
            item = self._items.pop(int(handle), None)
            if item is None:
                return None
            self._bytes -= item[1]
            return item[0]

    def __len__(self):
        return len(self._items)
