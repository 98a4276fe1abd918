"""Where a result came from, written into every results file: date, commit, versions, machine and command."""

import datetime
import os
import platform
import subprocess
import sys
from importlib import metadata

#: Packages whose versions a result depends on (those installed are recorded).
PACKAGES = ("crfcore", "numpy", "numba", "scipy", "pydensecrf2", "tensorflow", "keras", "torch", "jax")


def _git(*args):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(command=None):
    """``{"date", "commit", "dirty", "versions", "machine", "command"}`` for a results file; ``command`` defaults
    to this process's command line."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": _git("rev-parse", "--short=12", "HEAD"),
        "dirty": None if status is None else bool(status),
        "versions": versions,
        "machine": {"system": platform.system(), "machine": platform.machine(),
                    "processor": platform.processor() or platform.machine(), "cores": cores},
        "command": command or " ".join([os.path.basename(sys.executable), *sys.argv]),
    }
