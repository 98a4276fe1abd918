"""`python -m unet` and `python -m benchmarks` arguments: every mistake is refused with a clear message before any
work, and nothing already saved is lost."""

import os

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from unet import cli  # noqa: E402
from unet.model import build_unet  # noqa: E402
from unet.pipeline import attach_crf  # noqa: E402


@pytest.mark.parametrize("argv, match", [
    (["train", "--out", "README.md"], "is a file, not a folder"),
    (["train", "--out", "x", "--epochs", "0"], "--epochs: must be >= 1"),
    (["train", "--out", "x", "--epochs", "-3"], "--epochs: must be >= 1"),
    (["train", "--out", "x", "--batch-size", "0"], "--batch-size: must be >= 1"),
    (["train", "--out", "x", "--size", "0"], "--size: must be >= 1"),
    (["train", "--out", "x", "--size", "100"], "--size: must be a multiple of 32"),
    (["train", "--out", "x", "--n-train", "0"], "--n-train: must be >= 1"),
    (["evaluate", "--out", "x", "--model", "m.keras", "--n-test", "0"], "--n-test: must be >= 1"),
    (["export", "--out", "x", "--model", "m.keras", "--n-check", "0"], "--n-check: must be >= 1"),
    (["train", "--out", "x", "--lr", "nan"], "--lr: must be a finite number > 0"),
    (["add-crf", "--out", "x", "--unet", "u.keras", "--crf-boundary-weight", "-1"],
     "--crf-boundary-weight: must be a finite number >= 0"),
    (["add-crf", "--out", "x", "--unet", "u.keras", "--crf-boundary-margin", "inf"],
     "--crf-boundary-margin: must be a finite number >= 0"),
    (["add-crf", "--out", "x", "--unet", "u.keras", "--crf-noise", "-0.1"],
     "--crf-noise: must be a finite number >= 0"),
])
def test_bad_arguments_fail_before_any_work(argv, match, capsys, monkeypatch):
    monkeypatch.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert match in capsys.readouterr().err


def test_benchmark_repeats_refused(capsys):
    from benchmarks.cli import main

    with pytest.raises(SystemExit):
        main(["--repeats", "-1"])
    assert "--repeats: must be >= 1" in capsys.readouterr().err


def test_model_files_clear_errors(tmp_path):
    corrupt = tmp_path / "m.keras"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SystemExit, match="corrupt or truncated"):
        cli.main(["evaluate", "--out", str(tmp_path / "o"), "--model", str(corrupt)])
    with pytest.raises(SystemExit, match="no model at"):
        cli.main(["evaluate", "--out", str(tmp_path / "o"), "--model", str(tmp_path / "missing.keras")])
    with pytest.raises(SystemExit, match="not a .keras model file"):
        cli.main(["evaluate", "--out", str(tmp_path / "o"), "--model", str(tmp_path)])
    crf_path = str(tmp_path / "crf.keras")
    cli.save_model(attach_crf(build_unet(size=32)), crf_path)
    with pytest.raises(SystemExit, match="already has a CRF-RNN layer"):
        cli.main(["add-crf", "--out", str(tmp_path / "o"), "--unet", crf_path, "--size", "32"])


def test_evaluate_all_uses_the_size(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        m = np.zeros((40, 60), np.uint8)
        m[10:30, 15:45] = 255
        Image.fromarray(m).save(root / "masks" / f"{i}.png")
    model = str(tmp_path / "unet.keras")
    cli.save_model(build_unet(size=32), model)
    summary = cli.main(["evaluate", "--out", str(tmp_path / "o"), "--model", model, "--data", str(root), "--split",
                        "all", "--size", "32"])
    assert summary == 0


class _FailingSave:
    """A model whose save writes half a file and fails, as an interrupted save does."""

    def save(self, path):
        with open(path, "wb") as f:
            f.write(b"half a model")
        raise KeyboardInterrupt


def test_saves_are_atomic(tmp_path):
    path = tmp_path / "unet.keras"
    path.write_bytes(b"the previous model")
    with pytest.raises(KeyboardInterrupt):
        cli.save_model(_FailingSave(), str(path))
    assert path.read_bytes() == b"the previous model"
    assert os.listdir(tmp_path) == ["unet.keras"]  # no partial file left behind


@pytest.mark.parametrize("flags, learned", [
    ([], ("theta_alpha", "theta_beta")),
    (["--learn-theta-gamma"], True),
    (["--no-learn-widths"], False),
])
def test_which_widths_add_crf_learns(flags, learned):
    args = cli.parser().parse_args(["add-crf", "--out", "x", "--unet", "u.keras", *flags])
    assert cli._learned_widths(args) == learned
    layer = attach_crf(build_unet(size=32), learn_widths=cli._learned_widths(args)).get_layer("crfrnn")
    expected = {True: ["log_theta_alpha", "log_theta_beta", "log_theta_gamma"], False: []}.get(
        learned, ["log_theta_alpha", "log_theta_beta"])
    assert [w.name for w in layer.trainable_weights if w.name.startswith("log_")] == expected


@pytest.mark.parametrize("flags, augmentation", [
    ([], None),
    (["--crf-augment"], {"noise": 0.0}),
    (["--crf-noise", "0.05"], {"noise": 0.05}),
    (["--crf-augment", "--crf-noise", "0.05"], {"noise": 0.05}),
])
def test_crf_stage_augmentation_flags(flags, augmentation):
    args = cli.parser().parse_args(["add-crf", "--out", "x", "--unet", "u.keras", *flags])
    assert cli._crf_augmentation(args) == augmentation
