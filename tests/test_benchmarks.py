import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    pytest.importorskip("skimage")
    path = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--no-compile-time", "--json", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(path) as f:
        return json.load(f), proc.stdout


def test_quick_json_structure(quick_result):
    result, stdout = quick_result
    assert {"machine", "kernels", "rows", "backward", "batch", "densecrf_available"} <= set(result)
    assert len(result["rows"]) >= 3
    for row in result["rows"]:
        for key in ("size", "labels", "iterations", "crfcore_ms", "crfcore_1t_ms", "crfcore_ms_per_mpix_iter",
                    "crfcore_min_ms", "crfcore_max_ms", "phases"):
            assert key in row, key
        assert row["crfcore_min_ms"] <= row["crfcore_ms"] <= row["crfcore_max_ms"]
        assert set(row["phases"]) >= {"build_bilateral_ms", "build_spatial_ms", "splat_ms", "blur_ms", "slice_ms"}
    for b in result["backward"]:
        assert b["forward_backward_ms"] > 0 and b["residual_bytes_per_pixel_per_iteration"] > 0
        assert b["backward_with_widths_ms"] > 0 and "with the widths" in stdout
    assert result["batch"]["crfcore_images_per_s"] > 0
    assert result["batch"]["crfcore_4_python_threads_images_per_s"] > 0
    for row in result["rows"]:
        assert row["crfcore_peak_mib"] is None or row["crfcore_peak_mib"] > 0  # measured in a fresh process
    assert "ms/MP/it" in stdout and "batch of 8" in stdout
    assert {row["input"] for row in result["rows"]} == {"photo", "noise"}  # the random-noise row set
    noise = next(row for row in result["rows"] if row["input"] == "noise")
    assert noise["phases"]["lattice_vertices"] > noise["pixels"]  # every pixel its own colour: > 1 vertex a pixel
    (vol,) = result["volume"]
    assert vol["voxels"] == 40 * 64 * 64 and vol["crfcore_ms"] > 0 and vol["crfcore_1t_ms"] > 0
    assert "3-D volumes" in stdout


def test_quick_agreement_with_densecrf(quick_result):
    result, _ = quick_result
    if not result["densecrf_available"]:
        pytest.skip("pydensecrf2 is not installed: no peer to agree with")
    for row in result["rows"]:
        assert row["max_abs_dq"] <= 1e-3, row
        assert row["label_agreement_pct"] >= 99.9, row
        assert row["speedup"] > 0 and row["densecrf_ms"] > 0
    for row in result["volume"]:  # densecrf's generic DenseCRF with crfcore's 3-D features: the same model
        assert row["label_agreement_pct"] >= 99.9, row
        assert row["max_abs_dq"] <= 2e-2, row  # float32 features and lattice in densecrf


def test_throughput_row_runs_both_peers_and_the_folder():
    """The throughput section (run by the full ``python -m benchmarks``), small: crfcore's batch and folder, and
    one densecrf process per core at once on photo inputs."""
    pytest.importorskip("skimage")
    from benchmarks import throughput

    row = throughput.bench_throughput(48, 3, 2, 4, 1, seconds=0.5, with_refine=True)
    assert row["crfcore_batch_images_per_s"] > 0 and row["crfcore_refine_images_per_s"] > 0
    if "densecrf_images_per_s" in row:
        assert len(row["densecrf_per_process"]) == row["densecrf_processes"] == os.cpu_count()
        assert row["speedup"] == pytest.approx(row["crfcore_batch_images_per_s"] / row["densecrf_images_per_s"])
    assert "batch of 4 at 48x48 L=3" in throughput.report([row])


def test_contention_section_starts_and_ends_its_competitors():
    """The contention section runs a busy process per core while it times, and ends them after (also on error)."""
    pytest.importorskip("skimage")
    from benchmarks import contention

    with contention.competitors(2) as procs:
        assert all(p.poll() is None for p in procs)  # running
    assert all(p.poll() is not None for p in procs)  # ended and reaped
    with pytest.raises(RuntimeError), contention.competitors(1) as procs:
        raise RuntimeError("a measurement failed")
    assert procs[0].poll() is not None
    result = contention.bench_contention([(48, 2, 2)], 1, 2, step_cfg=(48, 2))
    assert result["competitors"] == os.cpu_count() and result["rows"][0]["crfcore_ms"] > 0
    assert result["stepwise"]["shim_step_ms"] > 0
    assert "under contention" in contention.report(result)


def test_first_call_report_reads_every_measurement():
    """The first-call rows (``first_call.measure`` takes minutes, so its result is given here): every figure,
    the per-kernel row largest first, and "failed" for a measurement that did not come back."""
    from benchmarks.first_call import report

    c = dict(cores=2, pattern_s=[0.32, 0.55, 9.33, 0.046, 0.053, 0.053, 0.051], served_by_numpy=True,
             kernels={"lattice.embed": 6.0, "lattice.slice_": 1.6, "lattice.blur": 0.4}, workers=2, workers_s=8.2,
             in_process_s=16.5, training_s=6.6, warm_s=0.68, warm_runs_s=[0.7, 0.68], numba_floor_s=0.43)
    text = report(c)
    for part in ("import 0.32 s; call 1 0.55 s (NumPy", "call 2 9.33 s (waits", "calls 3-6 46 ms, 53 ms",
                 "8.2 s in 2 worker process(es), 16.5 s in the calling process", "training kernels after them 6.6 s",
                 "per kernel (one core, 8.0 s in all): embed 6.0, slice_ 1.6, blur 0.4", "first call 0.68 s",
                 "interleaved: 0.43 s", "2 cores"):
        assert part in text, part
    text = report(dict(c, numba_floor_s=None, kernels=None, pattern_s=None))
    assert "interleaved: failed" in text and "per kernel: failed" in text and "calls: failed" in text


def test_deployment_rows_run_every_way():
    """The deployment section (run by the full ``python -m benchmarks``) builds, converts and times every way."""
    pytest.importorskip("skimage")
    pytest.importorskip("tensorflow")
    from benchmarks import deploy

    row = deploy.run(repeats=1, progress=lambda msg: None)
    for name in ("unet_keras", "unet_crf_keras_numba", "unet_crf_savedmodel_tf", "unet_tflite", "unet_crf_tflite",
                 "crf_core_numba", "crf_savedmodel_tf", "crf_tflite", "crf_tflite_1_iteration"):
        assert row[f"{name}_ms"] > 0, name
    assert row["interpreter"] in ("ai_edge_litert", "tf.lite")
    assert row["crf_tflite_build_ms"] + 5 * row["crf_tflite_per_iteration_ms"] == pytest.approx(row["crf_tflite_ms"])
    assert "CRF alone: crfcore" in deploy.report(row) and "SavedModel (tf)" in deploy.report(row)


def test_json_path_is_checked_before_the_run(capsys):
    from benchmarks.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--quick", "--json", "/nonexistent/x.json"])
    assert exit_.value.code == 2 and "cannot write there" in capsys.readouterr().err
