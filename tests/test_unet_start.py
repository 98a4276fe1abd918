"""The synthetic start model that ``train --data`` and ``crossval`` fine-tune by default (unet.store), and the
flags' defaults that depend on it."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from unet import cli, store  # noqa: E402

TINY = dict(n_train=4, n_dev=2, epochs=1, batch_size=4, learning_rate=3e-3, seed=0)


def _args(*argv):
    return cli._resolve_unet_defaults(cli.parser().parse_args(list(argv)))


def test_fine_tuning_is_the_default_with_data_and_training_from_scratch_without():
    tuned = _args("train", "--out", "o", "--data", "d")
    assert (tuned.init, tuned.epochs, tuned.lr, tuned.warmup, tuned.average_last) == ("synthetic", 24, 1e-3, 2, 6)
    scratch = _args("train", "--out", "o")
    assert (scratch.init, scratch.epochs, scratch.lr, scratch.warmup, scratch.average_last) == ("none", 8, 3e-3, 0, 0)
    mine = _args("train", "--out", "o", "--data", "d", "--init", "none", "--epochs", "3")
    assert (mine.init, mine.epochs, mine.lr, mine.average_last) == ("none", 3, 3e-3, 0)
    given = _args("crossval", "--out", "o", "--data", "d", "--init", "m.keras", "--average-last", "0")
    assert (given.init, given.epochs, given.average_last, given.dev_fraction) == ("m.keras", 24, 0, 0.0)


def test_the_demo_with_its_defaults_trains_the_synthetic_start_model():
    assert cli._trains_the_synthetic_start(_args("demo", "--out", "o"))
    assert cli._trains_the_synthetic_start(_args("train", "--out", "o"))
    assert dict(n_train=560, n_dev=40, epochs=8, batch_size=8, learning_rate=3e-3, seed=0) == store.SYNTHETIC_SETTINGS
    for other in (["--n-train", "8"], ["--seed", "1"], ["--epochs", "9"], ["--data", "d"], ["--no-augment"],
                  ["--average-last", "2"], ["--init", "m.keras"], ["--no-deterministic"]):
        assert not cli._trains_the_synthetic_start(_args("demo", "--out", "o", *other)), other


def test_the_synthetic_start_model_is_trained_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CRFCORE_CACHE", str(tmp_path / "cache"))
    model, path, trained = store.synthetic_start(32, settings=TINY, verbose=0)
    assert trained and os.path.exists(path) and path.startswith(str(tmp_path / "cache"))
    with open(path[:-len(".keras")] + ".json") as f:
        assert json.load(f) == dict(TINY, size=32, version=store.START_VERSION)
    again, path2, trained2 = store.synthetic_start(32, settings=TINY, verbose=0)
    assert path2 == path and not trained2
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    # another size, other settings, the default settings: other files
    others = {store.synthetic_start_path(64, TINY), store.synthetic_start_path(32, dict(TINY, seed=1)),
              store.synthetic_start_path(32)}
    assert path not in others and len(others) == 3
    # remembering never replaces a cached model
    store.remember_synthetic_start(store.load(path), 32, dict(TINY, seed=1))
    before = os.path.getmtime(path)
    store.remember_synthetic_start(again, 32, TINY)
    assert os.path.getmtime(path) == before


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("CRFCORE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert store.cache_dir() == os.path.join(str(tmp_path), "crfcore")
    monkeypatch.setenv("CRFCORE_CACHE", str(tmp_path / "mine"))
    assert store.synthetic_start_path(224).startswith(str(tmp_path / "mine"))


def test_a_damaged_cached_model_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CRFCORE_CACHE", str(tmp_path))
    path = store.synthetic_start_path(32)
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 not a zip")
    with pytest.raises(SystemExit, match="cached synthetic start model.*corrupt or truncated.*delete it"):
        cli._init_model(_args("train", "--out", "o", "--data", "d", "--size", "32"))
