"""What Numba's on-disk cache holds: the only module of crfcore that reads Numba's private attributes.

Numba has no public way to ask whether a kernel's compiled code for some argument types is in its cache without
compiling it, nor where the cache is. Both are read here from the internals of Numba 0.6x (``Dispatcher._cache``,
its ``_index_key`` and ``_cache_file``): ``tests/test_numba_cache.py`` fails with a clear message when a Numba
release changes them. Until this module is updated the answers are None ("unknown"), and crfcore takes the path
that works without them: it treats the kernels as not cached and hands them to the compile workers, which load
them from the cache when they are there (about a second lost, nothing wrong).
"""

import os


def compiled(dispatcher, sig):
    """Whether ``dispatcher`` has code for the argument types ``sig`` in this process (public: ``overloads``)."""
    return tuple(sig) in dispatcher.overloads


def cached(dispatcher, sig):
    """Whether Numba's on-disk cache has ``dispatcher``'s code for ``sig`` (for this machine and this source):
    True or False, or None when this Numba's internals are not the ones this module knows."""
    try:
        cache = dispatcher._cache
        if not hasattr(cache, "_cache_file"):  # caching off for this kernel (a NullCache): never cached
            return False
        key = cache._index_key(tuple(sig), dispatcher.targetctx.codegen())
        index = cache._cache_file._load_index()
    except (AttributeError, TypeError):
        return None
    except (OSError, EOFError, ValueError):  # an unreadable index: Numba itself would recompile
        return False
    return key in index


def folder(dispatcher):
    """The folder Numba keeps ``dispatcher``'s cache in (``NUMBA_CACHE_DIR``, the package's ``__pycache__``, or a
    per-user folder where that is not writable: Numba's choice), or None when unknown."""
    try:
        return os.path.abspath(dispatcher._cache._cache_path)
    except AttributeError:
        return None


def in_package(path, package_dir):
    """Whether the cache ``path`` is inside the package (its ``__pycache__``) rather than a user or set folder."""
    path, package_dir = os.path.abspath(path), os.path.abspath(package_dir)
    return os.path.commonpath([path, package_dir]) == package_dir
