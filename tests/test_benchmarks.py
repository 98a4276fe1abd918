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


def test_quick_agreement_with_densecrf(quick_result):
    result, _ = quick_result
    if not result["densecrf_available"]:
        pytest.skip("pydensecrf2 is not installed: no peer to agree with")
    for row in result["rows"]:
        assert row["max_abs_dq"] <= 1e-3, row
        assert row["label_agreement_pct"] >= 99.9, row
        assert row["speedup"] > 0 and row["densecrf_ms"] > 0


def test_compile_report_reads_every_measurement():
    """The first-call line (``compile_time`` takes minutes, so its result is given here): every figure, the floor
    beside the warm call, and "failed" for a measurement that did not come back."""
    from benchmarks.cli import compile_report

    c = dict(cold_s=0.8, served_by_numpy=True, kernels_ready_s=26.0, cold_compile_s=24.0, warm_s=0.84,
             warm_runs_s=[0.8, 0.84, 1.08], numba_floor_s=0.71, cold_backward_s=9.5)
    line = compile_report(c)
    for text in ("cold (empty Numba cache) 0.8 s (served by NumPy", "ready 26.0 s",
                 "CRFCORE_FIRST_CALL=compile: 24.0 s", "warm 0.84 s", "first call, interleaved: 0.71 s",
                 "first backward, cold: 9.5 s"):
        assert text in line, text
    line = compile_report(dict(c, numba_floor_s=None, served_by_numpy=False))
    assert "interleaved: failed" in line and "s (compiled;" in line


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
