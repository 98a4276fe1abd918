"""The README's Python examples run as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def python_blocks():
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_has_examples():
    assert len(python_blocks()) >= 2


def test_postprocessing_example():
    ns = {}
    exec(python_blocks()[0], ns)
    assert ns["q"].shape == (240, 320, 2)
    assert ns["labels"].shape == (240, 320)


def test_keras_five_steps_example():
    pytest.importorskip("tensorflow")
    ns = {}
    exec(python_blocks()[1], ns)
    assert ns["labels"].shape == (8, 64, 64)
    assert not ns["unet"].trainable
    assert len(ns["crf_model"].trainable_weights) == 3
