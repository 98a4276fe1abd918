"""Models on disk: loading with clear errors, atomic saving, and the cached synthetic start model.

The synthetic start model is the U-Net that ``make demo`` trains on the embedded generator's photos (its default
settings, :data:`SYNTHETIC_SETTINGS`). ``python -m unet train --data DIR`` and ``crossval`` fine-tune it by default:
it is trained once per image size and kept in the user's cache folder (:func:`cache_dir`), and ``make demo`` leaves
its own U-Net there when it ran with those settings.
"""

import hashlib
import json
import os
import sys
import time
import zipfile

#: How the synthetic start model is trained: ``make demo``'s defaults (``python -m unet demo``), seed 0.
SYNTHETIC_SETTINGS = dict(n_train=560, n_dev=40, epochs=8, batch_size=8, learning_rate=3e-3, seed=0)
#: Part of the cache key: raise it when the generator, the U-Net or its training changes, so that an older cached
#: model is not taken for the new one.
START_VERSION = 1


class ModelFileError(ValueError):
    """A model file that is missing, not a ``.keras`` file, corrupt or truncated."""


def load(path):
    """A saved ``.keras`` model (a U-Net, or a U-Net + CRF-RNN), or :class:`ModelFileError` saying what is wrong."""
    import keras

    import crfcore.adapters.tf  # noqa: F401  (registers CrfRnnLayer for loading)
    import unet.model  # noqa: F401

    if not os.path.exists(path):
        raise ModelFileError(f"no model at {path!r}; run `python -m unet train --out DIR` first")
    if os.path.isdir(path) or not path.endswith(".keras"):
        raise ModelFileError(f"{path!r} is not a .keras model file (from `python -m unet train` or `add-crf`)")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            raise zipfile.BadZipFile(f"member {bad!r} is corrupt")
    except zipfile.BadZipFile as exc:
        raise ModelFileError(f"{path!r} is corrupt or truncated ({exc}); train it again") from None
    try:
        return keras.models.load_model(path)
    except Exception as exc:  # Keras raises many types for damaged or foreign files
        raise ModelFileError(f"cannot load the model {path!r}: {type(exc).__name__}: {exc}") from None


def save(model, path):
    """``model.save(path)`` atomically: written to a temporary file beside it, then renamed, so an interrupted
    save never leaves a truncated model behind (an older one stays intact)."""
    tmp = f"{path}.partial-{os.getpid()}.keras"
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def cache_dir():
    """Where the synthetic start models are kept: ``$CRFCORE_CACHE``, else ``$XDG_CACHE_HOME/crfcore``, else
    ``~/.cache/crfcore``."""
    explicit = os.environ.get("CRFCORE_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "crfcore")


def _settings(size, settings):
    return dict(SYNTHETIC_SETTINGS if settings is None else settings, size=int(size), version=START_VERSION)


def synthetic_start_path(size, settings=None):
    """The cache file of the synthetic start model for ``size`` x ``size`` images (trained with ``settings``,
    default :data:`SYNTHETIC_SETTINGS`); it need not exist."""
    full = _settings(size, settings)
    digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(cache_dir(), f"unet-synthetic-{int(size)}px-{digest}.keras")


def remember_synthetic_start(model, size, settings=None):
    """Keep ``model`` (a U-Net trained on synthetic photos with ``settings``) as the cached start model, unless
    one is there already; returns its path."""
    path = synthetic_start_path(size, settings)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save(model, path)
        with open(path[:-len(".keras")] + ".json", "w") as f:
            json.dump(_settings(size, settings), f, indent=1)
    return path


def synthetic_start(size, settings=None, verbose=1, progress=None):
    """The U-Net trained on synthetic photos, the start of fine-tuning on real ones: loaded from the cache, or
    trained once (about 10 minutes at 224 px on 2 cores with :data:`SYNTHETIC_SETTINGS`) and cached.

    Returns
    -------
    model : keras.Model
    path : str
        Its cache file.
    trained : bool
        Whether it was trained now (False: loaded).
    """
    path = synthetic_start_path(size, settings)
    if os.path.exists(path):
        try:
            return load(path), path, False
        except ModelFileError as exc:
            raise ModelFileError(f"the cached synthetic start model: {exc}; delete it, and it is trained again on "
                                 f"the next run") from None
    from . import data, pipeline

    s = dict(SYNTHETIC_SETTINGS if settings is None else settings)
    print(f"no synthetic start model for {size} px in the cache yet: training it once on {s['n_train']} synthetic "
          f"photos ({s['epochs']} epochs; about 10 minutes at 224 px on 2 cores), kept at {path}", file=sys.stderr)
    t0 = time.perf_counter()
    parts = data.synthetic_splits(s["n_train"], s["n_dev"], 0, seed=s["seed"], size=size, progress=progress,
                                  only=("train", "dev"))
    model, _ = pipeline.train_unet(parts["train"], parts["dev"], epochs=s["epochs"], batch_size=s["batch_size"],
                                   learning_rate=s["learning_rate"], seed=s["seed"], verbose=verbose)
    remember_synthetic_start(model, size, settings)
    print(f"synthetic start model trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return model, path, True
