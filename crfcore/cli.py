"""The ``crfcore`` command (``python -m crfcore`` is the same): ``refine``, ``warmup``, ``info`` and ``--version``.

Every subcommand returns its exit status: 0 done, 1 the work ran but some of it failed (``refine``: some files), 2 bad
arguments or inputs (a one-line ``error:`` message, never a traceback), 130 interrupted (Ctrl-C). Warnings are
one-line ``warning:`` messages too, without Python's source line.
"""

import argparse
import sys
import warnings

from ._argtypes import positive_int
from ._version import __version__


def _refine(args):
    from .refine import cli

    return cli.run(args)


def _warmup(args):
    from . import warmup

    report = warmup.compile_all(training=args.training, progress=not args.no_progress, n_workers=args.workers)
    print(warmup.format_report(report))
    return 0 if not report["failed"] else 1


def _info(args):
    from . import warmup
    from ._runtime import threads

    import numba
    import numpy

    print(f"crfcore {__version__}")
    print(f"python {sys.version.split()[0]}, numpy {numpy.__version__}, numba {numba.__version__}")
    print(f"Numba threads: {numba.config.NUMBA_NUM_THREADS}; threading layer: {threads.layer() or 'not started yet'}; "
          f"TBB runtime: {threads.configure() or 'not loaded'}")
    print(f"kernel cache: {warmup.cache_folder()} ({warmup.cache_note()})")
    ready = {(dtype, n): warmup.ready("inference", dtype, n) for dtype in ("float32", "float64") for n in (2, 3)}
    print("inference kernels cached: " + "; ".join(
        f"{dtype} " + ", ".join(f"{'2 labels' if n == 2 else '3+ labels'} {'yes' if ready[dtype, n] else 'no'}"
                                for n in (2, 3)) for dtype in ("float32", "float64"))
          + ("" if all(ready.values()) else " (the rest: run crfcore warmup)"))
    print(f"device='cuda': {_cuda_status()}")
    return 0


def _cuda_status():
    import importlib.util

    if importlib.util.find_spec("numba_cuda") is None:
        return "numba-cuda is not installed (pip install 'crfcore[cuda]')"
    from ._cuda import device

    try:
        cuda = device.require()
    except RuntimeError:
        return "no usable GPU (numba.cuda.is_available() is False)"
    if device.simulator():
        return "Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1: on the CPU, slow)"
    gpu = cuda.get_current_device()
    name = gpu.name.decode() if isinstance(gpu.name, bytes) else gpu.name
    return f"{name}, compute capability {'.'.join(map(str, gpu.compute_capability))}"


def parser():
    """The command's argument parser."""
    from .refine import cli as refine_cli

    p = argparse.ArgumentParser(prog="crfcore", description="Dense CRF tools: refine data sets, compile the kernels.")
    p.add_argument("--version", action="version", version=f"crfcore {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    r = sub.add_parser("refine", help="refine the segmentations of a whole data set",
                       description=refine_cli.DESCRIPTION)
    refine_cli.add_arguments(r)
    r.set_defaults(run=_refine)
    w = sub.add_parser("warmup", help="compile every kernel into Numba's cache (once per install)",
                       description="Compile the kernels that inference calls need (and, with --training, those of "
                                   "the backward pass) into Numba's on-disk cache, in one worker process per core, "
                                   "so that no later process waits for a compile or is served by the slower NumPy "
                                   "fallback. Kernels already cached are skipped. Shows a progress bar and prints "
                                   "the kernels, the seconds and the cache folder (NUMBA_CACHE_DIR, the package, "
                                   "or Numba's per-user folder when the package's is read-only).")
    w.add_argument("--training", action="store_true", help="also the backward pass's kernels (CRF-as-RNN training)")
    w.add_argument("--no-progress", action="store_true", help="no progress bar")
    w.add_argument("--workers", type=positive_int, default=None,
                   help="compile processes (default: one per usable core, at most 4)")
    w.set_defaults(run=_warmup)
    i = sub.add_parser("info", help="versions, threading layer and kernel cache", description="Print crfcore's "
                                                                                             "versions and set-up.")
    i.set_defaults(run=_info)
    return p


def _warning_line(message, category, filename, lineno, file=None, line=None):
    """Python's warnings as the command's own one-line messages (no file name, no source line)."""
    print(f"warning: {message}", file=sys.stderr if file is None else file, flush=True)


def main(argv=None):
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line
            return args.run(args)
    except KeyboardInterrupt:
        print(f"interrupted{'; rerun the same command to continue' if args.command == 'refine' else ''}",
              file=sys.stderr)
        return 130
