"""Keras's input pipelines for NumPy arrays without tf.data's autotuning, so that ``fit`` does not stall at its end.

Keras's ``fit``, ``evaluate`` and ``predict`` on arrays build a tf.data pipeline whose parallel map and prefetch are
autotuned. With TensorFlow 2.21, dropping such a pipeline's iterator when ``fit`` returns blocked for up to 17 s: a
native stack dump of the wait shows the main thread in ``IteratorResource::~IteratorResource`` ->
``UnboundedThreadPool::LogicalThreadWrapper::~LogicalThreadWrapper``, waiting for a thread of the pipeline that had
no work left. The waits come and go with time, not work (0 to 17 s after epochs of equal work), as a thread that
sleeps out its period before it sees the end would; the autotuner's optimisation loop is such a thread (its period
doubles up to a minute). Measured on the demo's U-Net at 224 px, 560 photos, one ``fit`` per epoch: autotuned, 3 of
6 epochs ended with a wait of 7-13 s; without autotuning none of 3 did, with bit-identical losses. The demo's U-Net
is trained by one ``fit`` per epoch (fresh augmentation each epoch), so the waits had added up to about 1-2 minutes.

Inside :func:`without_autotune`, the pipelines Keras builds for arrays get ``tf.data.Options().autotune.enabled =
False``: the same elements in the same order (the map stays deterministic; its random ops keep their seeds), so
training gives the same weights, only without the autotuner's thread. Where Keras's internals differ from what this
expects, nothing is changed.
"""

import contextlib
import threading

_lock = threading.Lock()
_depth = 0
_installed = False


def _install():
    """Wrap Keras's ``ArrayDataAdapter.get_tf_dataset`` once; the wrapper acts only inside :func:`without_autotune`."""
    global _installed
    if _installed:
        return
    _installed = True
    try:
        from keras.src.trainers.data_adapters import array_data_adapter
        original = array_data_adapter.ArrayDataAdapter.get_tf_dataset
    except (ImportError, AttributeError):  # another Keras: leave it as it is
        return

    def get_tf_dataset(self):
        dataset = original(self)
        if not active():
            return dataset
        import tensorflow as tf

        options = tf.data.Options()
        options.autotune.enabled = False
        return dataset.with_options(options)

    get_tf_dataset.__wrapped__ = original
    array_data_adapter.ArrayDataAdapter.get_tf_dataset = get_tf_dataset


def active():
    """Whether a :func:`without_autotune` block is open (in any thread of this process)."""
    return _depth > 0


@contextlib.contextmanager
def without_autotune():
    """Build Keras's pipelines for NumPy arrays without tf.data's autotuning inside this block (blocks may nest)."""
    global _depth
    _install()
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
