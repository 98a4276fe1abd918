"""The receipt pipeline's reproducibility, its cross-validation by group and its pictures."""

import json
import os

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMARTDOC = os.path.join(ROOT, "..", "shared", "data", "smartdoc18")


@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("tensorflow")
    from unet import data

    return data.synthetic_splits(8, 4, 0, seed=3, size=64)


def _weights(model):
    return [np.asarray(w) for w in model.get_weights()]


def test_training_twice_with_one_seed_gives_the_same_weights(tiny):
    """Seeds and TensorFlow's deterministic ops: the U-Net (augmented, shuffled) and the CRF stage (learned
    widths, through crfcore's kernels) come out bit for bit the same; another seed does not."""
    from unet.pipeline import attach_crf, is_deterministic, set_deterministic, train_crf, train_unet

    before = is_deterministic()
    set_deterministic(True)
    try:
        runs = []
        for seed in (0, 0, 1):
            unet, _ = train_unet(tiny["train"], tiny["dev"], epochs=1, batch_size=4, verbose=0, seed=seed,
                                 jit_compile=False)
            widths = None
            if seed == 0:
                crf, _ = train_crf(attach_crf(unet), tiny["train"], tiny["dev"], epochs=1, batch_size=4, verbose=0,
                                   seed=seed, keep_best=False)
                widths = crf.get_layer("crfrnn").current_widths()
            runs.append((_weights(unet), widths))
    finally:
        set_deterministic(before)
    (u0, w0), (u1, w1), (u2, _) = runs
    for a, b in zip(u0, u1):
        np.testing.assert_array_equal(a, b)
    assert w0 == w1
    assert max(float(np.abs(a - b).max()) for a, b in zip(u0, u2)) > 1e-3


def _folder(tmp_path, n=6, groups=("bgA", "bgB", "bgC"), size=64):
    """``n`` synthetic photos as files, with a manifest whose ``source_file`` column starts with their group."""
    from unet import synth

    images, masks = synth.dataset(n, seed=11, size=size)
    (tmp_path / "images").mkdir(parents=True)
    (tmp_path / "masks").mkdir()
    rows = ["id,source_file"]
    for i in range(n):
        Image.fromarray((images[i] * 255).round().astype(np.uint8)).resize((64, 48)).save(
            tmp_path / "images" / f"{i:03d}.png")
        Image.fromarray(masks[i] * 255).resize((64, 48), Image.NEAREST).save(tmp_path / "masks" / f"{i:03d}.png")
        rows.append(f"{i:03d},{groups[i % len(groups)]}/doc{i}/frame.jpeg")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return str(tmp_path)


def test_groups_from_a_manifest_column(tmp_path):
    from unet import data

    path = _folder(tmp_path)
    ds = data.load_folder(path, size=64)
    assert data.groups(ds, path, "source_file") == ["bgA", "bgB", "bgC"] * 2
    assert ds.shapes == [(48, 64)] * 6  # the files' own size, before resizing
    with pytest.raises(ValueError, match="no column 'group'.*source_file"):
        data.groups(ds, path)
    os.remove(os.path.join(path, "manifest.csv"))
    with pytest.raises(ValueError, match="no manifest.csv"):
        data.groups(ds, path, "source_file")


def test_smartdoc_has_three_backgrounds_of_six_photos():
    if not os.path.isdir(SMARTDOC):
        pytest.skip(f"SmartDoc photos not found at {SMARTDOC} (../shared/data/smartdoc18)")
    from unet import data

    ds = data.load_folder(SMARTDOC, size=32)
    labels = data.groups(ds, SMARTDOC, "source_file")
    assert {g: labels.count(g) for g in set(labels)} == {"background01": 6, "background03": 6, "background05": 6}
    assert set(ds.shapes) == {(288, 512)}


def test_a_tiny_crossval_writes_mean_and_spread(tmp_path, monkeypatch, capsys):
    """``python -m unet crossval`` on 8 photos of 2 groups, 2 seeds, fine-tuning the cached synthetic start model
    (here an untrained U-Net put in its place): every photo is tested once per seed, and the summary's mean and
    spread are those of the seeds' pooled Dice."""
    pytest.importorskip("tensorflow")
    from unet import store
    from unet.cli import main
    from unet.model import build_unet

    monkeypatch.setenv("CRFCORE_CACHE", str(tmp_path / "cache"))
    start = store.remember_synthetic_start(build_unet(size=32), 32)
    path = _folder(tmp_path / "data", n=8, groups=("bgA", "bgB"), size=32)
    out = str(tmp_path / "cv")
    assert main(["crossval", "--data", path, "--out", out, "--size", "32", "--group-by", "source_file",
                 "--seeds", "0", "1", "--epochs", "1", "--batch-size", "4", "--crf-epochs", "1"]) == 0
    assert f"fine-tuning the synthetic start model {start} (cached)" in capsys.readouterr().out
    with open(os.path.join(out, "results.json")) as f:
        result = json.load(f)
    folds = result["settings"]["folds"]
    assert [f["name"] for f in folds] == ["bgA", "bgB"]
    assert sorted(sum((f["test"] for f in folds), [])) == [f"{i:03d}" for i in range(8)]
    assert result["settings"]["init"] == "synthetic" and result["settings"]["dev_fraction"] == 0
    assert result["settings"]["U-Net"]["average_last"] == 6 and result["settings"]["U-Net"]["warmup"] == 2
    assert len(result["runs"]) == 4
    for run in result["runs"]:
        assert run["n_test"] == 4 and run["n_train"] == 4 and run["n_dev"] == 0
        assert run["unet_averaged_epochs"] == [1]
    for method in ("unet", "unet+crf-rnn"):
        seeds = [result["per_seed"][s][method] for s in ("0", "1")]
        assert all(s["n_images"] == 8 for s in seeds)
        # pooled over the folds: each fold has 4 images, so the seed's Dice is the mean of its runs' Dice
        for s, seed in zip(seeds, (0, 1)):
            runs = [r[method]["dice"] for r in result["runs"] if r["seed"] == seed]
            assert s["dice"] == pytest.approx(np.mean(runs))
        summary = result["summary"][method]["dice"]
        dice = [s["dice"] for s in seeds]
        assert summary["mean"] == pytest.approx(np.mean(dice))
        assert summary["spread"] == pytest.approx(max(dice) - min(dice))
    assert {"date", "commit", "versions"} <= set(result["meta"])


def test_crossval_refuses_a_folder_without_groups_or_data(tmp_path):
    from unet.cli import main

    path = _folder(tmp_path / "data")
    with pytest.raises(SystemExit, match="no column 'camera'"):
        main(["crossval", "--data", path, "--out", str(tmp_path / "o"), "--group-by", "camera"])
    with pytest.raises(SystemExit, match="needs --data"):
        main(["crossval", "--out", str(tmp_path / "o")])


def test_pictures_show_each_photo_in_its_proportions_with_islands_circled():
    from unet import report
    from unet.data import Dataset

    n, side = 4, 32
    images = np.full((n, side, side, 3), 0.5, np.float32)
    masks = np.zeros((n, side, side), np.uint8)
    masks[:, 8:24, 8:24] = 1
    ds = Dataset(images, masks, [f"{i:03d}" for i in range(n)], shapes=[(90, 160)] * n)
    unet = masks.copy()
    unet[:, 2, 2] = 1  # one island per image
    preds = {"unet": (unet, 0.0), "unet+crf-rnn": (masks.copy(), 0.0)}
    assert report.picture_indices(ds) == [0, 2, 3]  # SmartDoc's photos absent: spread over the set
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = report.pictures(ds, preds, os.path.join(tmp, "p.png"), height=90)
        sheet = np.asarray(Image.open(path).convert("RGB"))
    assert sheet.shape[1] == 3 * 160 + 4 * 6  # three 16:9 panels, 90 px high
    assert sheet.shape[0] == 22 + 3 * (90 + 18 + 6)
    red = (sheet[..., 0] > 200) & (sheet[..., 1] < 80) & (sheet[..., 2] < 80)
    blue = (sheet[..., 2] > 200) & (sheet[..., 0] < 80)
    middle = slice(6 + 160 + 6, 6 + 2 * 160 + 6)
    right = slice(6 + 2 * (160 + 6), None)
    assert red[:, middle].sum() > 0 and blue[:, middle].sum() > 0  # the U-Net's island, red and circled
    assert red[:, right].sum() == 0 and blue[:, right].sum() == 0  # none in the CRF's mask


def test_two_processes_train_the_same_weights(tmp_path):
    """``python -m unet train`` twice at once, with all cores: the same U-Net, bit for bit (TensorFlow's inter-op
    thread pool made two processes differ; deterministic training runs ops one after another)."""
    pytest.importorskip("tensorflow")
    import subprocess
    import sys

    import keras

    import unet.model  # noqa: F401  (registers the U-Net's layers for loading)

    procs = []
    for k in range(2):  # at the same time: the same weights whatever the other process does
        cmd = [sys.executable, "-m", "unet", "train", "--out", str(tmp_path / f"run{k}"), "--size", "224",
               "--n-train", "32", "--n-dev", "2", "--epochs", "2", "--batch-size", "8"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    weights = [keras.models.load_model(tmp_path / f"run{k}" / "unet.keras").get_weights() for k in range(2)]
    assert len(weights[0]) > 10
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
