"""pydensecrf on crfcore: change ``import pydensecrf.densecrf as dcrf`` to ``import crfcore.pydensecrf.densecrf as
dcrf`` (and ``pydensecrf.utils`` to ``crfcore.pydensecrf.utils``); nothing else in a script changes. No compiler, any
Python crfcore installs on, the same numbers, clearer errors (README, "Coming from pydensecrf")."""

from . import densecrf, utils

__all__ = ["densecrf", "utils"]
