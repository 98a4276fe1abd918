"""The package's layers, read from its import statements (docs/design/layout.md draws them).

A module may import modules of its own layer or of the layers below it, never above, and no import circle is
allowed anywhere. Every ``import`` counts, also those inside functions: a lazy import that runs up a layer is an
upward import all the same. The order is written here once; a new module must be given its place.
"""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The layers from the ground up; each entry is a module or a package (all its modules).
LAYERS = (
    ("ground: bare kernels, no crfcore imports", ("crfcore._version", "crfcore._compat", "crfcore._argtypes",
                                                 "crfcore._kernels")),
    ("checks and the compute thread", ("crfcore._validation", "crfcore._runtime")),
    ("the lattice", ("crfcore.lattice", "crfcore._cuda.device", "crfcore._cuda.lattice")),
    ("the engine: kernels and mean-field iterations", ("crfcore._engine", "crfcore._cuda.kernel",
                                                      "crfcore._cuda.iterations", "crfcore._cuda.inputs")),
    ("parameters and features", ("crfcore.params", "crfcore.features")),
    ("the terms on each device, and the first calls", ("crfcore._cuda", "crfcore.warmup")),
    ("crf: any pairwise terms", ("crfcore.terms",)),
    ("meanfield: two standard terms on images", ("crfcore.inference",)),
    ("built on meanfield and crf", ("crfcore.fitting", "crfcore.refine", "crfcore.pydensecrf")),
    ("the package's front: public names, the command, the contract for adapters and applications",
     ("crfcore", "crfcore.__main__", "crfcore.cli", "crfcore._shared")),
    ("framework adapters", ("crfcore.adapters",)),
)


def _modules():
    """``{module name: path}`` of crfcore and its adapters (installed as ``crfcore.adapters``)."""
    mods = {}
    for package, folder in (("crfcore", "crfcore"), ("crfcore.adapters", "adapters")):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, name[:-3]), os.path.join(ROOT, folder))
                parts = [package] + [p for p in rel.split(os.sep) if p != "__init__"]
                mods[".".join(parts)] = os.path.join(dirpath, name)
    return mods


def _imports(path, module, names):
    """The modules of ``names`` that the file ``path`` (module ``module``) imports, anywhere in the file."""
    is_package = os.path.basename(path) == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[:len(module.split(".")) + is_package - node.level]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in names else base for a in node.names]
        else:
            continue
        for t in targets:
            while t not in names and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in names and t != module:
                found.add(t)
    return found


def _layer(module):
    """The index in :data:`LAYERS` of the longest entry that ``module`` is or lies in."""
    best, best_len = None, -1
    for i, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and len(entry) > best_len:
                best, best_len = i, len(entry)
    return best


MODULES = _modules()
EDGES = {m: _imports(p, m, MODULES) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if _layer(m) is None)
    assert not missing, f"give these modules a place in LAYERS (tests/test_layers.py): {missing}"


def test_no_import_runs_up_a_layer():
    upward = sorted(f"{a} (layer {_layer(a)}: {LAYERS[_layer(a)][0]}) imports {b} (layer {_layer(b)}: "
                    f"{LAYERS[_layer(b)][0]})"
                    for a, targets in EDGES.items() for b in targets if _layer(b) > _layer(a))
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_no_import_circle():
    state, stack, circles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(EDGES[m]):
            if state.get(t) == "open":
                circles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(MODULES):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


#: Modules without a leading underscore that are still crfcore's internals: the first-call machinery behind
#: :mod:`crfcore.warmup`'s public functions.
INTERNAL = ("crfcore.warmup.compile_workers", "crfcore.warmup.numba_cache", "crfcore.warmup.numpy_lattice",
            "crfcore.warmup.signatures", "crfcore.warmup.signature_table")


def _application_imports(folder):
    """``(path, module imported)`` for every import of crfcore or the checkout's applications in ``folder``."""
    names = dict(MODULES)
    for app in ("unet", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, app)):
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, name[:-3]), ROOT).split(os.sep)
                    names[".".join(p for p in rel if p != "__init__")] = None
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                module = ".".join(p for p in os.path.relpath(path[:-3], ROOT).split(os.sep) if p != "__init__")
                for t in _imports(path, module, names):
                    yield os.path.relpath(path, ROOT), t


@pytest.mark.parametrize("folder", ["unet", "benchmarks"])
def test_applications_use_public_names_and_the_shared_contract(folder):
    """``unet`` and ``benchmarks`` import crfcore's public modules and :mod:`crfcore._shared` only (the contract
    between the engine and its applications), never another private module."""
    private = [f"{path} imports {t}" for path, t in _application_imports(folder) if t.startswith("crfcore")
               and t != "crfcore._shared" and (t in INTERNAL or any(p.startswith("_") for p in t.split(".")[1:]))]
    assert not private, "\n".join(private)


def test_the_pipeline_does_not_import_the_benchmarks():
    """Above crfcore, ``benchmarks`` may use ``unet`` (it times the receipt pipeline's deployment), never the other
    way round."""
    upward = [f"{path} imports {t}" for path, t in _application_imports("unet") if t.startswith("benchmarks")]
    assert not upward, "\n".join(upward)


def test_layers_are_drawn_in_the_docs():
    """docs/design/layout.md draws the same layers, top first: each layer's first entry begins a line of the
    drawing, in LAYERS' order from the bottom up."""
    text = open(os.path.join(ROOT, "docs", "design", "layout.md"), encoding="utf-8").read()
    drawing = text.split("```text", 1)[1].split("```", 1)[0]
    positions = [re.search(rf"^ *{re.escape(entries[0])}\s", drawing, re.M) for _, entries in LAYERS]
    assert None not in positions, [entries[0] for (_, entries), p in zip(LAYERS, positions) if p is None]
    starts = [p.start() for p in positions]
    assert starts == sorted(starts, reverse=True), "layout.md draws the layers top first, in LAYERS' order"
