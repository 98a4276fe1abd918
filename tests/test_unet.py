import json
import os

import numpy as np
import pytest
from PIL import Image, ImageDraw

from unet import metrics, synth


def test_dice_iou_accuracy_by_hand():
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True  # 4 pixels
    pred = np.zeros((4, 4), bool)
    pred[:2, :3] = True  # 6 pixels, 4 shared
    assert metrics.dice(pred, truth) == pytest.approx(2 * 4 / (6 + 4))
    assert metrics.iou(pred, truth) == pytest.approx(4 / 6)
    assert metrics.pixel_accuracy(pred, truth) == pytest.approx(14 / 16)
    empty = np.zeros((4, 4), bool)
    assert metrics.dice(empty, empty) == 1.0 and metrics.iou(empty, empty) == 1.0
    assert metrics.dice(pred, empty) == 0.0
    with pytest.raises(ValueError, match="shape"):
        metrics.dice(pred, truth[:3])


def test_islands_by_hand():
    truth = np.zeros((10, 10), bool)
    truth[2:8, 2:8] = True
    pred = truth.copy()
    assert metrics.islands(pred, truth) == 0
    pred[0, 9] = True  # a speck of document in the background: island 1
    pred[9, 0:2] = True  # another one (2 pixels, one component): island 2
    pred[4:6, 4:6] = False  # a hole inside the document: island 3
    pred[2, 2] = False  # a bite out of the document's corner touches true document... still a hole? no:
    # predicted background at (2, 2) is connected to the true background through (1, 2)? (1, 2) is predicted
    # background and truly background, so this bite is part of the outer background: not an island.
    pred[8, 5] = True  # a bump on the document's edge touches true document: not an island
    labels, n = metrics.island_components(pred, truth)
    assert n == 3
    assert labels[0, 9] > 0 and labels[9, 0] == labels[9, 1] > 0 and labels[4, 4] > 0
    assert labels[2, 2] == 0 and labels[8, 5] == 0
    # diagonal neighbours are separate components (4-connectivity)
    diag = np.zeros((5, 5), bool)
    diag[0, 0] = diag[1, 1] = True
    assert metrics.islands(diag, np.zeros((5, 5), bool)) == 2


def test_boundary_length_and_its_margin_by_hand():
    tf = pytest.importorskip("tensorflow")
    from unet.pipeline import boundary_length, far_from_boundary

    truth = np.zeros((1, 12, 12), np.uint8)
    truth[0, :, 6:] = 1  # one straight edge between columns 5 and 6
    far = far_from_boundary(truth, 2)
    # the edge pixels are columns 5 and 6; "more than 2 pixels" from them leaves columns 0-2 and 9-11
    assert far[0, :, :3].all() and far[0, :, 9:].all() and not far[0, :, 3:9].any()
    assert far_from_boundary(truth, 0).all() and far_from_boundary(np.zeros((1, 5, 5)), 3).all()
    pred = truth.copy()
    pred[0, 3, 1] = 1  # a one-pixel island, far from the edge: 4 unit boundaries
    logits = tf.constant(np.where(pred[..., None] == np.arange(2), 30.0, 0.0), tf.float32)
    n = 12 * 12
    assert float(boundary_length(logits)) == pytest.approx((12 + 4) / n, rel=1e-5)
    assert float(boundary_length(logits, tf.constant(far))) == pytest.approx(4 / n, rel=1e-5)


def test_summarise_means():
    truth = np.zeros((2, 6, 6), bool)
    truth[:, 1:4, 1:4] = True
    pred = truth.copy()
    pred[1, 5, 5] = True
    s = metrics.summarise(pred, truth)
    assert s["islands_per_image"] == 0.5
    assert s["dice"] == pytest.approx((1 + 2 * 9 / 19) / 2)


def test_generator_mask_covers_exactly_the_drawn_paper():
    for seed in range(6):
        layers = {}
        synth.render(np.random.default_rng([7, seed]), size=96, supersample=1, layers=layers)
        mask, comp = layers["mask"], layers["composite"]
        np.testing.assert_array_equal(comp[mask], layers["paper"][mask])
        np.testing.assert_array_equal(comp[~mask], layers["background"][~mask])
        # the mask is the paper quad (up to curl and crumple, a few pixels at the border)
        poly = Image.new("1", (96, 96), 0)
        ImageDraw.Draw(poly).polygon([tuple(p) for p in layers["quad"]], fill=1)
        poly = np.asarray(poly, bool)
        assert metrics.iou(mask, poly) > 0.85
        # the paper is paper: bright, mostly white, with darker text-like marks inside
        paper = layers["paper"][mask]
        assert np.median(paper) > 0.75


def test_generator_is_deterministic_and_varied():
    a_img, a_mask = synth.dataset(3, seed=5, size=64)
    b_img, b_mask = synth.dataset(3, seed=5, size=64)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)
    c_img, _ = synth.dataset(3, seed=6, size=64)
    assert not np.array_equal(a_img, c_img)
    # chunked streams agree with the whole
    part_img, part_mask = synth.dataset_range(5, 1, 3, size=64)
    np.testing.assert_array_equal(part_img, a_img[1:])
    assert a_img.dtype == np.float32 and a_img.min() >= 0 and a_img.max() <= 1
    assert set(np.unique(a_mask)) <= {0, 1}
    fractions = a_mask.mean(axis=(1, 2))
    assert np.all(fractions > 0.01) and np.all(fractions < 0.9)


def test_load_folder_and_split(tmp_path):
    from unet import data

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i:02d}.jpg")
        m = np.zeros((40, 60), np.uint8)
        m[10:30, 20:40] = 255 if i % 2 else 1  # 0/255 and 0/1 masks both work
        Image.fromarray(m).save(tmp_path / "masks" / f"{i:02d}.png")
    ds = data.load_folder(str(tmp_path), size=32)
    assert ds.images.shape == (10, 32, 32, 3) and ds.masks.shape == (10, 32, 32)
    assert set(np.unique(ds.masks)) == {0, 1}
    assert abs(ds.masks.mean() - (20 * 20) / (40 * 60)) < 0.03
    parts = data.split(ds, str(tmp_path), seed=1)
    assert sorted(sum((p.names for p in parts.values()), [])) == ds.names
    assert data.split(ds, str(tmp_path), seed=1)["test"].names == parts["test"].names
    with open(tmp_path / "manifest.csv", "w") as f:
        f.write("id,split\n" + "".join(f"{i:02d},{'test' if i < 3 else 'train'}\n" for i in range(10)))
    parts = data.split(ds, str(tmp_path))
    assert parts["test"].names == ["00", "01", "02"] and len(parts["dev"]) == 0
    os.remove(tmp_path / "masks" / "03.png")
    with pytest.raises(ValueError, match="no mask"):
        data.load_folder(str(tmp_path))
    with pytest.raises(ValueError, match="images/"):
        data.load_folder(str(tmp_path / "images"))


def test_tiny_end_to_end_cli(tmp_path):
    pytest.importorskip("tensorflow")
    from unet.cli import main

    out = str(tmp_path / "run")
    common = ["--out", out, "--size", "64", "--n-train", "8", "--n-dev", "4", "--n-test", "4"]
    assert main(["train", *common, "--epochs", "1", "--batch-size", "4"]) == 0
    assert os.path.exists(os.path.join(out, "unet.keras"))
    assert main(["add-crf", *common, "--unet", os.path.join(out, "unet.keras"), "--n-crf", "8",
                 "--crf-epochs", "1", "--crf-batch-size", "4", "--crf-lr", "0.05"]) == 0
    assert os.path.exists(os.path.join(out, "unet_crf.keras"))
    with open(os.path.join(out, "crf_history.json")) as f:
        crf_history = json.load(f)
    trained = crf_history["crf_weights"]
    from unet.pipeline import DENSECRF_DEFAULTS as start

    initial = {"spatial_ker_weights": start["spatial_weight"] * np.eye(2),
               "bilateral_ker_weights": 5.0 * np.eye(2),  # add-crf's --crf-bilateral-weight default, not densecrf's 10
               "compatibility_matrix": 1 - np.eye(2)}
    initial.update({k: start[k] for k in ("theta_alpha", "theta_beta", "theta_gamma")})
    assert set(trained) == set(initial)
    epoch_widths = crf_history["history"]["widths"][-1]  # the CRF stage trained the bilateral widths...
    for name in ("theta_alpha", "theta_beta"):
        assert abs(np.log(epoch_widths[name] / start[name])) > 1e-3, name
    assert epoch_widths["theta_gamma"] == trained["theta_gamma"] == start["theta_gamma"]  # ...not the spatial one
    if crf_history["history"]["best_epoch"] == 1:  # ...and kept them unless the untrained start was better on dev
        for name, w in trained.items():
            if name != "theta_gamma":
                assert np.abs(np.asarray(w) - initial[name]).max() > 1e-4 * np.abs(initial[name]).max(), name
    else:
        for name, w in trained.items():
            np.testing.assert_allclose(w, initial[name], rtol=1e-6, err_msg=name)
    assert main(["evaluate", *common, "--model", os.path.join(out, "unet_crf.keras")]) == 0
    with open(os.path.join(out, "metrics.json")) as f:
        summary = json.load(f)
    (results,) = summary.values()
    # the post-processing row is tuned by crfcore.fit on the dev split; the defaults row is labelled as such
    assert set(results) == {"unet", "unet+meanfield-defaults", "unet+meanfield", "unet+crf-rnn"}
    for r in results.values():
        assert 0 <= r["dice"] <= 1 and 0 <= r["iou"] <= 1 and 0 <= r["pixel_accuracy"] <= 1
        assert r["islands_per_image"] >= 0 and r["ms_per_image"] > 0 and r["n_images"] == 4
    text = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "U-Net + trained CRF-RNN layer" in text and "figures/" in text
    assert "densecrf's default parameters (not tuned)" in text and "crfcore.fit on the dev split" in text
    figures = os.listdir(os.path.join(out, "figures"))
    assert figures and Image.open(os.path.join(out, "figures", figures[0])).size == (4 * 64 + 12, 64)
    # deployment: SavedModel + TFLite, checked against Keras by the command itself (it fails otherwise)
    exp = str(tmp_path / "export")
    assert main(["export", "--model", os.path.join(out, "unet_crf.keras"), "--out", exp, "--n-check", "3"]) == 0
    with open(os.path.join(exp, "export.json")) as f:
        report = json.load(f)
    assert os.path.exists(os.path.join(exp, "model.tflite")) and os.path.isdir(os.path.join(exp, "saved_model"))
    assert report["tflite_bytes"] == os.path.getsize(os.path.join(exp, "model.tflite"))
    assert report["saved_model_max_abs_dlogits"] <= 1e-3 and report["tflite_max_abs_dlogits"] <= 1e-3
    assert report["tflite_dice_vs_keras"] > 0.999 and report["tflite_crf_ms_per_image"] > 0
    assert report["tflite_interpreter"] in ("ai_edge_litert", "tf.lite")


def test_a_tiny_demo_writes_its_results_file(tmp_path):
    """``python -m unet demo`` end to end on a few small synthetic images: the report, and the results file that
    the docs' results page renders (metrics per test set and method, where it came from)."""
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "unet", "demo", "--out", str(out), "--size", "64", "--n-train", "8", "--n-dev",
           "4", "--n-test", "4", "--n-crf", "4", "--epochs", "1", "--crf-epochs", "1", "--smartdoc", "none"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert {"date", "commit", "versions", "machine", "command"} <= set(result["meta"])
    (title, methods), = result["metrics"].items()
    assert set(methods) >= {"unet", "unet+crf-rnn"} and all(0 <= m["dice"] <= 1 for m in methods.values())
    assert (out / "report.md").exists()


def test_generator_draws_bundled_pictures_and_cables():
    """scikit-image's bundled photos (no download) become pictures and things on the desk; cables are dark."""
    pytest.importorskip("skimage")
    photos, textures = synth._library("photos"), synth._library("textures")
    assert len(photos) >= 5 and len(textures) >= 2
    assert all(p.dtype == np.float32 and p.ndim == 3 and p.shape[2] == 3 and 0 <= p.min() and p.max() <= 1
               for p in photos + textures)
    pic = synth._picture(np.random.default_rng(0), 30, 50)
    assert pic.shape == (30, 50, 3) and 0 <= pic.min() and pic.max() <= 1 and pic.std() > 0.02
    canvas = Image.new("RGB", (64, 64), (255, 255, 255))
    synth._cables(np.random.default_rng(1), canvas, 64, 64, 1)
    drawn = np.asarray(canvas).max(-1) < 100
    assert 20 < drawn.sum() < 64 * 64 // 4  # a thin dark curve
    sides = [drawn[0].any(), drawn[-1].any(), drawn[:, 0].any(), drawn[:, -1].any()]
    assert sum(sides) >= 2  # from one edge of the frame to another
    canvas = Image.new("RGB", (64, 64), (128, 128, 128))
    assert synth._printed(np.random.default_rng(2), canvas, 32, 32, 10)
    assert np.asarray(canvas).std() > 5
