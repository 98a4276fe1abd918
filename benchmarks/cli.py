"""``python -m benchmarks``: crfcore against Krähenbühl's C++ densecrf (pydensecrf2), side by side, same run.

Every row runs the same input (a real photo with noisy unaries, or the same unaries on a random-noise image) and
the same parameters through each peer, after a warm-up call, and reports the median and spread of the repeats
(crfcore on all threads and on one: its per-core speed), per-phase times of crfcore, peak memory, the ratio
crfcore / peer and the agreement of the outputs. Further sections: 3-D volumes (:mod:`benchmarks.volume`), data
sets' throughput against one densecrf process per core (:mod:`benchmarks.throughput`), the backward pass, the
pydensecrf API, several processes and contention for the cores (:mod:`benchmarks.contention`). JIT compilation
is measured separately, in a fresh process with an empty Numba cache, and never mixed into the timings.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

import crfcore
from crfcore import warmup
from crfcore._shared import lattice_kernels as LK
from crfcore._shared import positive_int, run_on_compute_thread, threads
from crfcore.features import bilateral_features, spatial_features
from crfcore.lattice import Lattice

from . import first_call, volume
from unet.provenance import provenance
from .inputs import case, input_case
from .peers import INSTALL_HINT, KERNELS, _pydensecrf_script, _pydensecrf_setup, dcrf, densecrf, ours
from .timing import _with_threads, peak_memory, timed, timed_interleaved

def _peak_child(peer, size, n_lab, n_iter, kind="photo"):
    """Runs in a fresh process (see :func:`isolated_peak_memory`): prints the peer's peak memory in MiB."""
    image, logits = input_case(kind, size, n_lab)
    fn = ours if peer == "crfcore" else densecrf
    small_image, small_logits = case(32, n_lab)
    fn(small_logits, small_image, 1)  # load the compiled kernels / libraries, nothing the size of the input
    print(json.dumps(peak_memory(lambda: fn(logits, image, n_iter))))


def isolated_peak_memory(peer, size, n_lab, n_iter, threads, kind="photo"):
    """Peak memory of one peer's call in a fresh process, so that neither peer reuses pages the other (or an
    earlier row) freed: the input is made, the peer warmed up on a 32x32 image, then the call is measured."""
    code = (f"import numba; numba.set_num_threads({threads}); from benchmarks.cli import _peak_child; "
            f"_peak_child({peer!r}, {size}, {n_lab}, {n_iter}, {kind!r})")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                             timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def phases(logits, image, repeats):
    """See :func:`_phases`: run on crfcore's compute thread, like every crfcore call (one OpenMP team)."""
    return run_on_compute_thread(_phases, logits, image, repeats)


def _phases(logits, image, repeats):
    """Median milliseconds of crfcore's phases on one image: lattice builds, and splat (with the sum of each
    vertex's chunk rows) / blur / slice (with the copy back to the chunk rows) of one
    bilateral filtering of all L channels."""
    h, w, n_lab = logits.shape
    flat = image.reshape(-1, 3).astype(np.float64)
    fb = bilateral_features(flat, (h, w), KERNELS["theta_alpha"], KERNELS["theta_beta"])
    fs = spatial_features((h, w), KERNELS["theta_gamma"])
    out = {}
    out["build_bilateral_ms"] = 1e3 * timed(lambda: Lattice(fb), repeats)[0]
    out["build_spatial_ms"] = 1e3 * timed(lambda: Lattice(fs), repeats)[0]
    lat = Lattice(fb)
    a = lat.arrays
    values = np.ascontiguousarray(np.full((h * w, n_lab), 1.0 / n_lab, dtype=np.float32))
    ones = lat.ones(np.float32)
    local, buf, tmp = lat.workspace(n_lab, np.float32)
    res = np.empty_like(values)

    def splat():
        LK.splat(values, ones, a.offsets, a.weights, a.starts, lat.chunk, local)
        LK.gather_rows(local, a.indptr, a.rows, buf)

    def blur_all():
        LK.blur(buf, tmp, a.neighbours, False)

    def slice_():
        LK.scatter_rows(buf, a.remap, local)
        LK.slice_(local, a.offsets, a.weights, a.starts, lat.chunk, np.float32(lat.alpha), ones, res, False)

    out["splat_ms"] = 1e3 * timed(splat, repeats)[0]
    out["blur_ms"] = 1e3 * timed(blur_all, repeats)[0]
    out["slice_ms"] = 1e3 * timed(slice_, repeats)[0]
    out["lattice_vertices"] = lat.num_vertices
    return out


def bench_row(size, n_lab, n_iter, repeats, threads, kind="photo"):
    image, logits = input_case(kind, size, n_lab)
    row = {"input": kind, "size": size, "labels": n_lab, "iterations": n_iter, "pixels": size * size}
    numba.set_num_threads(threads)
    q_all = ours(logits, image, n_iter)
    row["crfcore_peak_mib"] = isolated_peak_memory("crfcore", size, n_lab, n_iter, threads, kind)
    fns = [_with_threads(threads, lambda: ours(logits, image, n_iter)),
           _with_threads(1, lambda: ours(logits, image, n_iter))]
    if dcrf is not None:
        fns.append(lambda: densecrf(logits, image, n_iter))
    timings = timed_interleaved(fns, repeats)
    (med, lo, hi), (med1, lo1, hi1) = timings[:2]
    row.update(crfcore_ms=1e3 * med, crfcore_min_ms=1e3 * lo, crfcore_max_ms=1e3 * hi)
    row.update(crfcore_1t_ms=1e3 * med1, crfcore_1t_min_ms=1e3 * lo1, crfcore_1t_max_ms=1e3 * hi1)
    row["crfcore_ms_per_mpix_iter"] = row["crfcore_ms"] / (size * size / 1e6) / n_iter
    row["phases"] = phases(logits, image, max(1, repeats // 2))
    if dcrf is not None:
        q_ref = densecrf(logits, image, n_iter)
        row["densecrf_peak_mib"] = isolated_peak_memory("densecrf", size, n_lab, n_iter, 1, kind)
        med, lo, hi = timings[2]
        row.update(densecrf_ms=1e3 * med, densecrf_min_ms=1e3 * lo, densecrf_max_ms=1e3 * hi)
        row["speedup"] = row["densecrf_ms"] / row["crfcore_ms"]
        row["speedup_1t"] = row["densecrf_ms"] / row["crfcore_1t_ms"]
        row["max_abs_dq"] = float(np.abs(q_all - q_ref).max())
        row["label_agreement_pct"] = float(100.0 * np.mean(q_all.argmax(-1) == q_ref.argmax(-1)))
    return row


def bench_backward(size, n_lab, n_iter, repeats):
    """Forward alone, forward keeping residuals, the backward alone without and with the gradients through the
    kernels' features (widths and image), median ms of each."""
    image, logits = case(size, n_lab)
    g = np.random.default_rng(0).normal(size=logits.shape).astype(np.float32)
    fwd = timed(lambda: ours(logits, image, n_iter), repeats)[0]

    def forward_keep():
        return crfcore.meanfield_fwd(logits, image, n_iter=n_iter, output="logits", **KERNELS)[1]

    fwd_res = timed(forward_keep, repeats)[0]
    res = forward_keep()
    bwd = timed(lambda: crfcore.meanfield_bwd(res, g, features=False), repeats)[0]
    bwd_widths = timed(lambda: crfcore.meanfield_bwd(res, g, features=True), repeats)[0]
    residual_bytes = 3 * n_lab * 4  # Q, K_s Q and K_b Q per pixel per iteration, float32
    return {"size": size, "labels": n_lab, "iterations": n_iter, "forward_ms": 1e3 * fwd,
            "forward_with_residuals_ms": 1e3 * fwd_res, "backward_ms": 1e3 * bwd,
            "backward_over_forward": bwd / fwd, "forward_backward_ms": 1e3 * (fwd_res + bwd),
            "backward_with_widths_ms": 1e3 * bwd_widths, "backward_with_widths_over_forward": bwd_widths / fwd,
            "residual_bytes_per_pixel_per_iteration": residual_bytes}


def bench_pydensecrf(size, n_lab, n_iter, repeats):
    """The same pydensecrf script through ``crfcore.pydensecrf`` and through pydensecrf2, and crfcore.meanfield on the
    same input (median ms)."""
    from crfcore.pydensecrf import densecrf as shim

    image, logits = case(size, n_lab)
    out = {"size": size, "labels": n_lab, "iterations": n_iter}
    fns = [lambda: _pydensecrf_script(shim, logits, image, n_iter), lambda: ours(logits, image, n_iter)]
    if dcrf is not None:
        fns.append(lambda: _pydensecrf_script(dcrf, logits, image, n_iter))
    times = [1e3 * med for med, _, _ in timed_interleaved(fns, repeats)]
    out["shim_ms"], out["meanfield_ms"] = times[:2]
    out["shim_over_meanfield"] = out["shim_ms"] / out["meanfield_ms"]
    if dcrf is not None:
        out["densecrf_ms"] = times[2]
        out["speedup"] = out["densecrf_ms"] / out["shim_ms"]
        q_ours = _pydensecrf_script(shim, logits, image, n_iter)
        q_ref = _pydensecrf_script(dcrf, logits, image, n_iter)
        out["max_abs_dq"] = float(np.abs(q_ours - q_ref).max())
    return out


def bench_stepwise(size, n_lab, repeats):
    """pydensecrf's step-wise loop (``startInference``, then ``stepInference(Q, tmp1, tmp2)`` with both scratch
    arrays filled, and ``klDivergence``) through ``crfcore.pydensecrf`` and pydensecrf2: median ms per call."""
    from crfcore.pydensecrf import densecrf as shim

    image, logits = case(size, n_lab)
    out = {"size": size, "labels": n_lab}
    crfs = [_pydensecrf_setup(shim, logits, image)] + ([_pydensecrf_setup(dcrf, logits, image)] if dcrf else [])
    states = [d.startInference() for d in crfs]
    steps = [lambda d=d, s=s: d.stepInference(*s) for d, s in zip(crfs, states)]
    kls = [lambda d=d, s=s: d.klDivergence(s[0]) for d, s in zip(crfs, states)]
    step_ms = [1e3 * med for med, _, _ in timed_interleaved(steps, repeats)]
    kl_ms = [1e3 * med for med, _, _ in timed_interleaved(kls, repeats)]
    out["shim_step_ms"], out["shim_kl_ms"] = step_ms[0], kl_ms[0]
    if dcrf is not None:
        out["densecrf_step_ms"], out["densecrf_kl_ms"] = step_ms[1], kl_ms[1]
        out["step_speedup"] = step_ms[1] / step_ms[0]
        out["kl_speedup"] = kl_ms[1] / kl_ms[0]
        out["max_abs_dq"] = float(np.abs(np.asarray(states[0][0]) - np.asarray(states[1][0])).max())
    return out


def bench_batch(repeats, batch=8, size=224, n_lab=2, n_iter=5):
    cases = [case(size, n_lab, photo_name=name, seed=i) for i, name in
             enumerate(["astronaut", "coffee", "chelsea", "rocket"] * (batch // 4))]
    images = np.stack([c[0] for c in cases])
    logits = np.stack([c[1] for c in cases])
    out = {"batch": batch, "size": size, "labels": n_lab, "iterations": n_iter}
    t = timed(lambda: ours(logits, images, n_iter), repeats)[0]
    out["crfcore_images_per_s"] = batch / t

    def from_threads():  # the same images from 4 Python threads at once (a server's thread pool)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: ours(logits[i], images[i], n_iter), range(batch)))

    t = timed(from_threads, repeats)[0]
    out["crfcore_4_python_threads_images_per_s"] = batch / t
    if dcrf is not None:
        t = timed(lambda: [densecrf(lg, im, n_iter) for lg, im in zip(logits, images)], repeats)[0]
        out["densecrf_images_per_s"] = batch / t
    return out


def configs(quick, large):
    """The standard table's rows: ``(input, size, labels, iterations)``."""
    if quick:
        return [("photo", 224, 2, 5), ("photo", 224, 21, 5), ("photo", 512, 2, 5), ("noise", 224, 2, 5)]
    sizes = [224, 512, 1024] + ([2048] if large else [])
    return ([("photo", s, n, it) for s in sizes for n in (2, 21) for it in (5, 10)]
            + [("noise", s, n, 5) for s in (224, 512) for n in (2, 21)])


def volume_configs(quick):
    """The 3-D rows: ``(shape, labels, iterations)``."""
    return [((40, 64, 64), 2, 5)] if quick else [((100, 150, 120), 2, 5), ((64, 96, 96), 4, 5)]


def _mib(x):
    return float("nan") if x is None else x


def fmt_table(rows):
    head = (f"{'input':>5} {'size':>9} {'L':>3} {'it':>3} | {'crfcore':>9} {'1 thread':>9} {'densecrf':>9} | "
            f"{'x (all)':>7} "
            f"{'x (1t)':>6} | {'ms/MP/it':>8} | {'build':>6} {'splat':>6} {'blur':>6} {'slice':>6} | "
            f"{'MiB ours':>8} {'MiB C++':>8} | {'max|dQ|':>8} {'agree %':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        p = r["phases"]
        dc = r.get("densecrf_ms")
        lines.append(
            f"{r.get('input', 'photo'):>5} {r['size']:>4}x{r['size']:<4} {r['labels']:>3} {r['iterations']:>3} | "
            f"{r['crfcore_ms']:>7.1f}ms "
            f"{r['crfcore_1t_ms']:>7.1f}ms {(f'{dc:7.1f}ms' if dc else '      n/a'):>9} | "
            f"{r.get('speedup', float('nan')):>7.2f} {r.get('speedup_1t', float('nan')):>6.2f} | "
            f"{r['crfcore_ms_per_mpix_iter']:>8.1f} | "
            f"{p['build_bilateral_ms'] + p['build_spatial_ms']:>6.1f} {p['splat_ms']:>6.1f} {p['blur_ms']:>6.1f} "
            f"{p['slice_ms']:>6.1f} | {_mib(r.get('crfcore_peak_mib')):>8.1f} "
            f"{_mib(r.get('densecrf_peak_mib')):>8.1f} | {r.get('max_abs_dq', float('nan')):>8.1e} "
            f"{r.get('label_agreement_pct', float('nan')):>8.3f}")
    return "\n".join(lines)


def run(quick=False, large=False, repeats=None, with_compile=True, progress=print, extras=True):
    # the timings are the compiled kernels': a cold cache compiles in this process (before the warm-up calls end)
    # rather than serving calls from NumPy meanwhile (crfcore.warmup); the first-call figures set their own mode
    os.environ[warmup.ENV] = "compile"
    threads = numba.config.NUMBA_NUM_THREADS
    result = {"machine": {"python": platform.python_version(), "numba": numba.__version__,
                          "numpy": np.__version__, "cpu_count": os.cpu_count(), "threads": threads,
                          "processor": platform.processor() or platform.machine()},
              "kernels": KERNELS, "densecrf_available": dcrf is not None}
    if dcrf is None:
        progress(INSTALL_HINT + "; benchmarking crfcore alone")
    if with_compile:
        progress("measuring the first calls (fresh processes, empty Numba cache)...")
        result["first_call"] = first_call.measure()
    rows = []
    for kind, size, n_lab, n_iter in configs(quick, large):
        reps = repeats or (2 if quick else (9 if size <= 224 else 5 if size <= 512 else 3))
        progress(f"  {kind} {size}x{size} L={n_lab} {n_iter} iterations ({reps} repeats)...")
        rows.append(bench_row(size, n_lab, n_iter, reps, threads, kind))
    result["rows"] = rows
    progress("  3-D volumes...")
    result["volume"] = [volume.bench_volume(shape, n, it, repeats or (2 if quick else 3), threads)
                        for shape, n, it in volume_configs(quick)]
    back_cfg = [(224, 2, 5), (224, 21, 5)] if quick else [(224, 2, 5), (512, 2, 5), (512, 21, 10)]
    progress("  backward pass...")
    result["backward"] = [bench_backward(s, n, it, repeats or (2 if quick else 3)) for s, n, it in back_cfg]
    progress("  batch throughput...")
    result["batch"] = bench_batch(repeats or (2 if quick else 3))
    progress("  the pydensecrf script through crfcore.pydensecrf...")
    shim_cfg = [(224, 2, 5)] if quick else [(224, 2, 5), (512, 2, 5), (512, 21, 10)]
    result["pydensecrf"] = [bench_pydensecrf(s, n, it, repeats or (3 if quick else 5)) for s, n, it in shim_cfg]
    progress("  pydensecrf's step-wise inference through crfcore.pydensecrf...")
    step_cfg = [(224, 2)] if quick else [(224, 2), (512, 21)]
    result["stepwise"] = [bench_stepwise(s, n, repeats or (3 if quick else 7)) for s, n in step_cfg]
    if not quick and extras:
        from . import adapters, contention, processes, throughput

        progress("  throughput against one densecrf process per core...")
        result["throughput"] = [
            throughput.bench_throughput(224, 2, 5, 64, repeats or 3, seconds=6.0, with_refine=True),
            throughput.bench_throughput(512, 21, 5, 64, repeats or 2, seconds=8.0)]
        progress("  under contention (a busy process per core)...")
        result["contention"] = contention.bench_contention([(224, 2, 5), (512, 21, 5)], repeats or 5, threads)
        progress("  several processes at once...")
        result["processes"] = processes.run(peers=("crfcore",) + (("densecrf",) if dcrf is not None else ()),
                                            progress=progress)
        progress("  framework adapters...")
        result["adapters"] = adapters.run(progress=progress)
        result["adapters_quiet_pools"] = adapters.run_quiet_pools(progress=progress)
        try:
            from . import deploy

            result["deploy"] = deploy.run(progress=progress)
        except ImportError as e:  # no TensorFlow / Keras in this environment
            progress(f"  deployment latency skipped: {e}")
    return result


def report(result):
    lines = [fmt_table(result["rows"]), ""]
    if result.get("volume"):
        lines.append(volume.report(result["volume"]))
    if result.get("throughput"):
        from . import throughput

        lines.append(throughput.report(result["throughput"]))
    if result.get("contention"):
        from . import contention

        lines.append(contention.report(result["contention"]))
    if result.get("first_call"):
        lines.append(first_call.report(result["first_call"]))
    for b in result["backward"]:
        lines.append(f"backward {b['size']}x{b['size']} L={b['labels']} {b['iterations']} it: forward "
                     f"{b['forward_ms']:.1f} ms (keeping residuals {b['forward_with_residuals_ms']:.1f} ms), "
                     f"backward {b['backward_ms']:.1f} ms, backward / forward = {b['backward_over_forward']:.2f}; "
                     f"with the widths' and image's gradients {b['backward_with_widths_ms']:.1f} ms, / forward = "
                     f"{b['backward_with_widths_over_forward']:.2f}; "
                     f"residuals {b['residual_bytes_per_pixel_per_iteration']} B/pixel/iteration")
    b = result["batch"]
    line = (f"batch of {b['batch']} at {b['size']}x{b['size']} L={b['labels']}: crfcore "
            f"{b['crfcore_images_per_s']:.1f} images/s (from 4 Python threads at once "
            f"{b['crfcore_4_python_threads_images_per_s']:.1f} images/s)")
    if "densecrf_images_per_s" in b:
        line += f", densecrf {b['densecrf_images_per_s']:.1f} images/s"
    lines.append(line)
    for r in result.get("pydensecrf", []):
        line = (f"pydensecrf script {r['size']}x{r['size']} L={r['labels']} {r['iterations']} it: crfcore.pydensecrf "
                f"{r['shim_ms']:.1f} ms, crfcore.meanfield {r['meanfield_ms']:.1f} ms (shim / meanfield "
                f"{r['shim_over_meanfield']:.2f})")
        if "densecrf_ms" in r:
            line += (f", pydensecrf2 {r['densecrf_ms']:.1f} ms: x{r['speedup']:.2f}, max|dQ| {r['max_abs_dq']:.1e}")
        lines.append(line)
    for r in result.get("stepwise", []):
        line = (f"pydensecrf step-wise {r['size']}x{r['size']} L={r['labels']}: crfcore.pydensecrf stepInference "
                f"{r['shim_step_ms']:.1f} ms, klDivergence {r['shim_kl_ms']:.1f} ms")
        if "densecrf_step_ms" in r:
            line += (f"; pydensecrf2 {r['densecrf_step_ms']:.1f} / {r['densecrf_kl_ms']:.1f} ms: x{r['step_speedup']:.2f}"
                     f" / x{r['kl_speedup']:.2f}, max|dQ| {r['max_abs_dq']:.1e}")
        lines.append(line)
    if "processes" in result:
        from . import adapters, processes

        lines.append(processes.report(result["processes"]))
        lines.append(adapters.report(result["adapters"]))
        if "adapters_quiet_pools" in result:
            lines.append(adapters.report(result["adapters_quiet_pools"], label=" (framework pools sleep)"))
    if "deploy" in result:
        from . import deploy

        lines.append(deploy.report(result["deploy"]))
    m = result["machine"]
    lines.append(f"machine: {m['cpu_count']} cores, {m['threads']} Numba threads ({threads.layer()} layer), numba "
                 f"{m['numba']}, numpy {m['numpy']}, Python {m['python']}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small subset (under a minute)")
    p.add_argument("--large", action="store_true", help="add 2048x2048 rows")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed repeats per peer and row (default 9 at 224, 5 at 512, 3 larger)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--no-compile-time", action="store_true", help="skip the first-call (compile) measurement")
    p.add_argument("--no-extras", action="store_true",
                   help="skip the sections of several processes, the framework adapters and deployment")
    args = p.parse_args(argv)
    if args.json:  # checked before a run of minutes, not after it
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK) or os.path.isdir(args.json):
            p.error(f"--json {args.json}: cannot write there ({folder} is not a writable folder)")
    meta = provenance("python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]))
    result = run(quick=args.quick, large=args.large, repeats=args.repeats, with_compile=not args.no_compile_time,
                 progress=lambda s: print(s, file=sys.stderr, flush=True), extras=not args.no_extras)
    result["meta"] = meta
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0
