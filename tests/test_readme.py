"""The README's and the documentation's Python examples run as written, and what they show is what they claim."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
DOCS = os.path.join(ROOT, "docs")
PAGES = [README] + sorted(glob.glob(os.path.join(DOCS, "*.md")) + glob.glob(os.path.join(DOCS, "design", "*.md")))
FRAMEWORKS = {"tensorflow": "tensorflow", "keras": "tensorflow", "torch": "torch", "jax": "jax", "cupy": "cupy"}


def python_blocks(path):
    with open(path, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def all_blocks():
    return [(os.path.relpath(p, ROOT), k, b) for p in PAGES for k, b in enumerate(python_blocks(p))]


def block(marker, path=None):
    """The Python block that contains ``marker`` (in ``path``, or in the docs' pages)."""
    paths = [path] if path else PAGES[1:]
    found = [b for p in paths for b in python_blocks(p) if marker in b]
    assert len(found) == 1, (marker, len(found))
    return found[0]


def test_pages_have_examples():
    assert len(python_blocks(README)) >= 5
    assert len(all_blocks()) >= 13


@pytest.mark.parametrize("where, k, code", all_blocks(), ids=[f"{w}:{k}" for w, k, _ in all_blocks()])
def test_every_example_runs(where, k, code):
    """Each block runs alone; the README's blocks after the quick start continue its namespace, as a reader's
    session would."""
    for module, extra in FRAMEWORKS.items():
        if re.search(rf"^\s*(import|from) {module}\b", code, flags=re.M):
            pytest.importorskip(extra)
    ns = {}
    if where == "README.md" and k > 0:
        exec(python_blocks(README)[0], ns)
    exec(compile(code, f"{where}:block{k}", "exec"), ns)


def test_quick_start():
    ns = {}
    exec(block("q = crfcore.meanfield(logits, image, n_iter=5,", README), ns)
    assert ns["q"].shape == (240, 320, 2) and ns["labels"].shape == (240, 320)


def test_getting_started_shows_the_crf_helping():
    ns = {}
    exec(block("print((q.argmax(-1) == truth).mean()"), ns)
    truth, q, logits = ns["truth"], ns["q"], ns["logits"]
    assert (q.argmax(-1) == truth).mean() > 0.99 > 0.75 > (logits.argmax(-1) == truth).mean()


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


def test_readme_is_short_undated_and_links_absolutely():
    """The README is the package index's long description: about 250 lines at most, no dated rows, and links
    that work there (absolute; no checkout paths)."""
    text = open(README, encoding="utf-8").read()
    assert text.count("\n") <= 250
    body = text.split("<!-- performance:start")[0] + text.split("<!-- performance:end -->")[1]
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", body), "a dated row outside the rendered performance table"
    for link in re.findall(r"\]\(([^)]+)\)", text):
        assert link.startswith("https://"), link


def test_readme_performance_is_the_newest_results_file():
    sys.path.insert(0, os.path.join(DOCS, "scripts"))
    import render_results

    files = render_results.load_all(os.path.join(DOCS, "results"), "benchmark")
    assert files, "docs/results/ has no benchmark results file"
    text = open(README, encoding="utf-8").read()
    shown = text.split("<!-- performance:start")[1].split("\n", 1)[1].split("<!-- performance:end -->")[0]
    assert shown.strip() == "\n".join(render_results.readme_table(files[0][1])).strip(), \
        "README's performance table is stale: run `python docs/scripts/render_results.py`"


def test_results_files_say_where_they_came_from():
    for path in glob.glob(os.path.join(DOCS, "results", "*.json")):
        with open(path) as f:
            meta = json.load(f).get("meta")
        if os.path.basename(path).startswith(("benchmark-", "demo-")):
            assert meta and {"date", "commit", "versions", "machine", "command"} <= set(meta), path


def _text(path):
    with open(path, encoding="utf-8") as f:
        return " ".join(f.read().split())  # line breaks as spaces


def test_readme_says_what_the_performance_table_measured_and_how_fit_avoids_its_compile():
    """The table says each row's input (photos, benchmarks/inputs.py; the quick start's random noise, several times
    slower; a 3-D volume); fit's first run compiles the training kernels unless warmed up."""
    text = _text(README)
    table = text.split("<!-- performance:start")[1].split("<!-- performance:end -->")[0]
    assert "| photo 224² |" in table and "| noise 224² |" in table and "| volume " in table, table
    after = text.split("<!-- performance:end -->")[1].split("All rows")[0]
    assert "Photo rows run scikit-image's samples" in after and "random-noise image like the quick start's" in after, \
        after
    fit = text.split("**Fit the parameters**")[1].split("```")[0]
    assert "`crfcore warmup --training`" in fit, fit


def test_gpu_page_names_the_error_of_a_machine_without_numba_cuda():
    """docs/gpu.md says which exception ``device="cuda"`` raises without numba-cuda: the one it raises (run with the
    package out of the interpreter's reach)."""
    code = ("import importlib, sys, numpy as np, crfcore\n"
            "sys.path[:] = [p for p in sys.path if 'site-packages' not in p and 'dist-packages' not in p]\n"
            "importlib.invalidate_caches()\n"
            "try:\n"
            "    crfcore.meanfield(np.zeros((4, 4, 2), np.float32), np.zeros((4, 4, 3), np.uint8), device='cuda')\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    raised = proc.stdout.split()[0]
    assert raised == "ImportError" and "pip install 'crfcore[cuda]'" in proc.stdout, proc.stdout
    page = _text(os.path.join(DOCS, "gpu.md")).split("## Without a GPU")[1]
    assert f'Without the `numba-cuda` package, `device="cuda"` raises an `{raised}`' in page, page[:300]
