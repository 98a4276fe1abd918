"""crfcore across processes: fork after use, a fork-based Pool, Ctrl-C, and the threading layer behind them.

Each case runs in a fresh interpreter (a script), as users run them: forking pytest's own process, with
TensorFlow loaded by other tests, would test something else.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)

SETUP = textwrap.dedent("""
    import os, signal, sys, time, numpy as np, numba, crfcore
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(96, 80, 3)).astype(np.float32)
    image = rng.integers(0, 256, size=(96, 80, 3), dtype=np.uint8)
    reference = crfcore.meanfield(logits, image)  # crfcore has run: Numba's threads exist
""")


def run_script(body, timeout=120):
    proc = subprocess.run([sys.executable, "-c", SETUP + textwrap.dedent(body)], capture_output=True, text=True,
                          env=ENV, cwd=ROOT, timeout=timeout)
    return proc


def test_threading_layer_is_tbb_where_installed():
    from crfcore._runtime.threads import _tbb_library

    if _tbb_library() is None:
        pytest.skip("the tbb wheel is not installed on this platform: Numba's default layer is used")
    proc = run_script("print(numba.threading_layer())")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "tbb"


def test_fork_after_use():
    proc = run_script("""
        pid = os.fork()
        if pid == 0:
            out = crfcore.meanfield(logits, image)
            os._exit(0 if np.array_equal(out, reference) else 3)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        print("parent", np.array_equal(crfcore.meanfield(logits, image), reference))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "child 0" in proc.stdout and "parent True" in proc.stdout
    assert "fork() called from a process already using GNU OpenMP" not in proc.stderr + proc.stdout


def test_fork_after_a_batch_side_by_side():
    """A batch's small images ran on the compute thread and its helpers (each launching kernels through TBB): the
    idle helpers stop before a fork too, so the fork is clean (no "Unable to join threads") and the child works."""
    proc = run_script("""
        batch = crfcore.meanfield(np.stack([logits] * 4), np.stack([image] * 4))
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                out = crfcore.meanfield(np.stack([logits] * 4), np.stack([image] * 4))
                os._exit(0 if np.array_equal(out, batch) else 3)
            _, status = os.waitpid(pid, 0)
            print("child", os.waitstatus_to_exitcode(status))
            crfcore.meanfield(np.stack([logits] * 4), np.stack([image] * 4))  # side by side again before the next
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("child 0") == 3, proc.stdout
    assert "Unable to join threads" not in proc.stderr + proc.stdout, proc.stderr[-2000:]


def test_fork_while_another_thread_builds_a_spatial_kernel():
    """A child forked while another thread holds the spatial kernels' lock (building one) gets a free lock: its
    first call runs rather than waiting forever."""
    proc = run_script("""
        from crfcore import inference
        inference._spatial_lock.acquire()  # as a thread building a kernel at the fork
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)  # a hang ends the child (status -14) instead of the test
            out = crfcore.meanfield(logits[:50], image[:50])
            os._exit(0 if out.shape == (50, 80, 3) else 3)
        inference._spatial_lock.release()
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "child 0" in proc.stdout, proc.stdout


def test_fork_pool_after_use():
    proc = run_script("""
        import multiprocessing as mp

        def task(seed):
            lg = np.random.default_rng(seed).normal(size=(96, 80, 3)).astype(np.float32)
            return crfcore.meanfield(lg, image)

        if __name__ == "__main__":
            with mp.get_context("fork").Pool(2) as pool:
                outs = pool.map(task, range(6), chunksize=1)
            serial = [task(s) for s in range(6)]
            print("same", all(np.array_equal(a, b) for a, b in zip(outs, serial)))
    """, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "same True" in proc.stdout


#: A large call whose 500 iterations take minutes, its kernels compiled (or loaded) first, so that an interrupt
#: lands in the computation.
BIG_SETUP = SETUP + textwrap.dedent("""
    big = rng.normal(size=(1024, 1024, 2)).astype(np.float32)
    big_image = rng.integers(0, 256, size=(1024, 1024, 3), dtype=np.uint8)
    crfcore.meanfield(big, big_image, n_iter=1)
""")


def _signal_masks(pid):
    """Each thread's name and whether it blocks, ignores or catches SIGINT, read from /proc (Linux)."""
    bit = 1 << (signal.SIGINT - 1)
    rows = []
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
            flags = "".join(k[3] for k in ("SigBlk", "SigIgn", "SigCgt") if int(fields.get(k, "0"), 16) & bit)
            rows.append(f"{tid}:{fields.get('Name', '?')}:{flags or '-'}")
    except OSError as exc:
        rows.append(f"unreadable ({exc})")
    return "threads (B blocks, I ignores, C catches SIGINT): " + " ".join(rows)


def test_ctrl_c_stops_the_work_at_once():
    script = BIG_SETUP + textwrap.dedent("""
        print("ready", signal.getsignal(signal.SIGINT), flush=True)
        try:
            crfcore.meanfield(big, big_image, n_iter=500)  # minutes of work
            print("finished?!", flush=True)
        except KeyboardInterrupt:
            t0 = time.perf_counter()
            crfcore.meanfield(logits, image)  # must not queue behind the abandoned work
            print(f"next call {time.perf_counter() - t0:.3f}", flush=True)
        crfcore.meanfield(big, big_image, n_iter=500)  # a second interrupt, uncaught: the process exits
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV, cwd=ROOT)
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("ready"), ready
        time.sleep(1.0)
        masks = _signal_masks(proc.pid)  # who could take the interrupt, for the message if it is lost
        proc.send_signal(signal.SIGINT)
        line = proc.stdout.readline()
        assert line.startswith("next call"), f"{line!r}; child's SIGINT handler: {ready.split(maxsplit=1)[1:]}; {masks}"
        assert float(line.split()[-1]) < 0.5  # a 96x80 image takes ~10 ms; the abandoned work stopped
        time.sleep(1.0)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        elapsed = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr.read()
    assert elapsed < 3.0, elapsed  # the process did not wait for the computation to finish


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX thread-directed signals")
def test_ctrl_c_taken_by_another_thread_still_stops_the_work():
    """The kernel may hand a Ctrl-C to any thread that does not block it (threads of other libraries); Python's
    handler then only flags it, and the caller must still wake up and cancel the work."""
    script = BIG_SETUP + textwrap.dedent("""
        import threading

        def other_library_thread():  # SIGINT unblocked, like a thread of another library
            time.sleep(1.0)
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)  # delivered to this thread, not main

        threading.Thread(target=other_library_thread, daemon=True).start()
        t0 = time.perf_counter()
        try:
            crfcore.meanfield(big, big_image, n_iter=500)  # minutes of work
            print("finished?!", flush=True)
        except KeyboardInterrupt:
            t1 = time.perf_counter()
            crfcore.meanfield(logits, image)
            print(f"interrupted after {t1 - t0:.2f} next call {time.perf_counter() - t1:.3f}", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    words = proc.stdout.split()
    assert words[:2] == ["interrupted", "after"], proc.stdout
    assert float(words[2]) < 2.0  # signalled 1 s in; the caller woke up within its polling interval
    assert float(words[-1]) < 0.5


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc to read each thread's mask")
def test_crfcore_threads_leave_ctrl_c_to_the_caller():
    """Every thread crfcore starts (its compute thread, Numba's workers) blocks SIGINT and SIGTERM, so that the
    kernel always hands them to the caller's thread, which cancels the work."""
    proc = run_script("""
        import signal
        bits = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
        main = str(os.getpid())
        for tid in sorted(os.listdir("/proc/self/task"), key=int):
            with open(f"/proc/self/task/{tid}/status") as f:
                blocked = int(next(l for l in f if l.startswith("SigBlk:")).split()[1], 16)
            print(tid, "main" if tid == main else "other", (blocked & bits) == bits)
    """)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split() for line in proc.stdout.splitlines()]
    main = [r for r in rows if r[1] == "main"]
    assert main and main[0][2] == "False"  # the caller takes Ctrl-C
    blocked = [r for r in rows if r[1] == "other" and r[2] == "True"]
    assert len(blocked) >= 2  # the compute thread and at least one Numba worker (2 threads on 2 cores)
