"""What keeps 0.1's call forms and import names working for one release, each with a DeprecationWarning that says
what to write instead (the CHANGELOG lists them)."""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings


def deprecated(old, new, stacklevel=3):
    """Warn that ``old`` is deprecated in favour of ``new`` (removed in the next release)."""
    warnings.warn(f"{old} is deprecated since crfcore 0.2 and will be removed in 0.3; write {new} instead",
                  DeprecationWarning, stacklevel=stacklevel)


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``old.X`` as the module ``new.X`` itself (one module object, so nothing is registered twice)."""

    def __init__(self, old, new):
        self.old, self.new = old, new

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(self.old + "."):
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=False)

    def create_module(self, spec):
        target = self.new + spec.name[len(self.old):]
        deprecated(f"`import {spec.name}`", f"`import {target}`", stacklevel=8)
        return importlib.import_module(target)

    def exec_module(self, module):
        pass  # already executed under its new name


def alias_package(old, new):
    """Make ``old`` and every ``old.X`` the modules ``new`` and ``new.X`` (called by ``old/__init__.py`` when the
    package is imported under its old name)."""
    package = importlib.import_module(new)
    if not any(isinstance(f, _Alias) and f.old == old for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias(old, new))
    sys.modules[old] = package
