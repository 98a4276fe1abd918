"""Compiling kernels into Numba's cache in worker processes, several at once.

Numba compiles one function at a time in a process (a global compiler lock), and a kernel's compile is one
core's work; crfcore's inference kernels take 12-15 s of one core's time (measured per kernel in :data:`HINTS`;
see docs/first-call.md). Workers, one per usable core (at most :data:`MAX_WORKERS`), each compile a
share of the kernels, largest first and balanced by those measurements, from the argument types of
:mod:`crfcore.warmup.signatures`: no kernel waits for another's results. Each compiled kernel lands in the cache
at once, so the work done survives a worker that is stopped.

A worker (``python -m crfcore.warmup.compile_workers``) reads its share as one JSON line on standard input and
prints one JSON line per kernel it finished. It runs at a lower CPU priority than its parent (``nice`` 10) and
ends when its parent does: it watches its standard input, which only the parent holds open.
"""

import json
import os
import subprocess
import sys
import threading
import time

#: One core's seconds to compile each kernel from an empty cache (all argument types of one profile; measured
#: with ``benchmarks/first_call.py``'s per-kernel times): only for balancing the workers and
#: the estimate of the time left, never for correctness. Kernels not listed count :data:`DEFAULT_HINT`.
HINTS = {
    "lattice.embed_chunk": 3.1, "lattice.slice_": 1.7, "lattice.blur_neighbours": 1.6,
    "meanfield.combine_softmax": 1.5, "meanfield.combine_softmax_pair": 0.9, "lattice.new_tables": 0.3,
    "lattice.merge_wave": 0.8, "lattice.splat": 0.8, "lattice.feature_range": 0.6, "lattice.blur": 0.4,
    "lattice.gather_rows": 0.5, "lattice.scatter_rows": 0.3, "lattice.invert_remap": 0.3, "lattice.key_fields": 0.05,
    # the training kernels (crfcore warmup --training)
    "lattice.weights_to_features": 2.4, "meanfield.combine_bwd": 1.8, "lattice.slice_grad": 0.9,
    "meanfield.row_dots": 0.5, "meanfield.iteration_bwd": 0.5, "meanfield.softmax_rows_bwd": 0.45,
}
DEFAULT_HINT = 0.8
#: More workers than this gain little: the largest kernel alone is about a third of the work.
MAX_WORKERS = 4
#: Seconds of a worker's start (Python, NumPy, Numba and crfcore imported) before it compiles.
START_S = 0.8


def usable_cores():
    """Cores this process may run on (its affinity where the platform says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def split(items, n_workers):
    """``items`` (``(name, signature)``) in ``n_workers`` shares of about equal :data:`HINTS` time: the longest
    first, each to the least loaded share (LPT scheduling). Empty shares are dropped."""
    shares = [[] for _ in range(max(1, n_workers))]
    loads = [0.0] * len(shares)
    for item in sorted(items, key=lambda it: -HINTS.get(it[0], DEFAULT_HINT)):
        k = loads.index(min(loads))
        shares[k].append(item)
        loads[k] += HINTS.get(item[0], DEFAULT_HINT)
    return [s for s in shares if s]


def _seconds(share):
    """A share's expected compile seconds (from :data:`HINTS`)."""
    return sum(HINTS.get(name, DEFAULT_HINT) for name, _ in share)


class Workers:
    """Worker processes compiling a set of kernels (see the module's doc). ``items`` are ``(name, signature)``
    with the signature as :mod:`crfcore.warmup.signatures` encodes it."""

    def __init__(self, items, n_workers=None, report=False):
        items = [(name, list(sig)) for name, sig in items]
        n = min(usable_cores(), MAX_WORKERS) if n_workers is None else n_workers
        self.shares = split(items, min(n, len(items)))
        self.started = time.monotonic()
        self.expected_s = START_S + max((_seconds(s) for s in self.shares), default=0.0)
        self.done = []  # (name, seconds, error or None), in the order the workers reported them (with ``report``)
        self._lock = threading.Lock()
        home = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, CRFCORE_FIRST_CALL="compile", CRFCORE_COMPILE_WORKER="1")  # never starts workers
        env["PYTHONPATH"] = os.pathsep.join(p for p in (home, env.get("PYTHONPATH")) if p)  # this very crfcore
        self.procs = []
        try:
            for share in self.shares:
                p = subprocess.Popen([sys.executable, "-m", "crfcore.warmup.compile_workers"], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE if report else subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, text=True)
                self.procs.append(p)
                p.stdin.write(json.dumps(share) + "\n")
                p.stdin.flush()  # the pipe stays open: closing it (or this process ending) stops the worker
        except BaseException:
            self.stop()
            raise
        self._readers = [threading.Thread(target=self._read, args=(p,), daemon=True) for p in self.procs if report]
        for t in self._readers:
            t.start()

    def _read(self, proc):
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self.done.append((msg["kernel"], msg["seconds"], msg.get("error")))

    def running(self):
        """Whether a worker is still compiling."""
        return any(p.poll() is None for p in self.procs)

    def ok(self):
        """Whether every worker ended and compiled its whole share."""
        return all(p.poll() == 0 for p in self.procs)

    def seconds_left(self):
        """The estimate of the seconds until the workers are done (0 once they are)."""
        if not self.running():
            return 0.0
        return max(1.0, self.expected_s - (time.monotonic() - self.started))

    def wait(self, timeout=None):
        """Wait for the workers; True once all have ended (well or not), False if ``timeout`` passed first."""
        end = None if timeout is None else time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(None if end is None else max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        for t in self._readers:
            t.join(5.0)
        return True

    def stop(self):
        """Stop the workers now (the kernels they finished stay in the cache)."""
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            p.wait()
            if p.stdin:
                try:
                    p.stdin.close()
                except OSError:
                    pass


def _exit_with_parent():
    """End this worker when its parent does: the parent holds the other end of standard input."""
    sys.stdin.read()  # returns at end of file: the parent closed the pipe or ended
    os._exit(3)


def _main():
    share = json.loads(sys.stdin.readline())
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    try:
        os.nice(10)  # below the user's work
    except (AttributeError, OSError):
        pass
    from .._runtime import threads
    from . import signatures

    threads.configure()  # the threading layer crfcore's own calls use
    failed = False
    for name, sig in share:
        t0 = time.perf_counter()
        error = None
        try:
            signatures.dispatcher(name).compile(tuple(signatures.decode(a) for a in sig))
        except Exception as exc:  # report it and go on: the other kernels still compile
            error, failed = f"{type(exc).__name__}: {exc}", True
        print(json.dumps(dict(kernel=name, seconds=time.perf_counter() - t0, error=error)), flush=True)
    sys.stdout.flush()
    os._exit(1 if failed else 0)  # at once: the watcher thread is still reading standard input


if __name__ == "__main__":
    _main()
