"""The README's Python examples run as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def python_blocks():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def block(marker):
    """The README's Python block that contains ``marker``."""
    found = [b for b in python_blocks() if marker in b]
    assert len(found) == 1, marker
    return found[0]


def test_readme_has_examples():
    assert len(python_blocks()) >= 7


def test_postprocessing_example():
    ns = {}
    exec(block("q = crfcore.meanfield(logits, image, n_iter=5,"), ns)
    assert ns["q"].shape == (240, 320, 2)
    assert ns["labels"].shape == (240, 320)


def test_fit_example():
    ns = {}
    exec(block("crfcore.fit("), ns)
    assert ns["q"].shape == (4, 32, 40, 2) and ns["params"]["theta_alpha"] > 0


def test_terms_example():
    ns = {}
    exec(block("crfcore.PairwiseTerm("), ns)
    assert ns["q"].shape == (60 * 80, 3)


def test_pydensecrf_example():
    ns = {}
    exec(block("import crfcore.pydensecrf.densecrf as dcrf"), ns)
    assert ns["labels"].shape == (120, 160) and ns["Q"].shape == (3, 120 * 160)


def test_keras_five_steps_example():
    pytest.importorskip("tensorflow")
    ns = {}
    exec(block("# 1. Train your features"), ns)
    assert ns["labels"].shape == (8, 64, 64)
    assert not ns["unet"].trainable
    assert len(ns["crf_model"].trainable_weights) == 3


def test_torch_example():
    pytest.importorskip("torch")
    ns = {}
    exec(block("from crfcore.adapters.torch import CrfRnn"), ns)
    assert ns["refined"].shape == (4, 2, 64, 80) and ns["crf"].log_theta_alpha.grad is not None


def test_jax_example():
    pytest.importorskip("jax")
    ns = {}
    exec(block("from crfcore.adapters.jax import crf_refine"), ns)
    assert float(ns["value"]) > 0 and ns["params"]["compat"].shape == (2, 2)
