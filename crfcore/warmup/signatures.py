"""The argument types each kernel is called with, so that kernels can be compiled before their first call.

Numba compiles a kernel on its first call, for the types of that call's arguments, and one compile cannot start
before the kernels whose results it needs have run. With the types written down (:data:`TABLE`, in
``signature_table.py``), :mod:`crfcore.warmup` compiles any kernel at any time, in any process: the kernels of a
call are split between worker processes that compile concurrently.

The table is generated, never written by hand: ``python -m crfcore.warmup`` runs the calls of every
profile with the compiled kernels, records the types of every kernel call made from Python (calls between kernels
are compiled with their caller) and rewrites ``signature_table.py``. A test regenerates it and fails when a kernel's
arguments changed without it.

Types are stored as expressions in :mod:`numba.core.types` (``Array(float32, 2, 'C')``), evaluated by
:func:`decode`: readable, and independent of how a Numba release pickles its types.
"""

import os

import numpy as np

#: What a profile's calls are: ``(what, dtype, labels)``. ``what`` is ``"inference"`` (:func:`crfcore.meanfield`)
#: or ``"training"`` (``meanfield_fwd`` with residuals and ``meanfield_bwd`` with the features' gradient). Two
#: labels use kernels of their own; any other number of labels shares the 3-label ones.
PROFILES = tuple((what, dtype, labels) for what in ("inference", "training") for dtype in ("float32", "float64")
                 for labels in (2, 3))


def profile_key(what, dtype, n_labels):
    """The table's key of a call: ``"inference/float32/2"`` (2 labels) or ``".../3"`` (3 or more)."""
    return f"{what}/{np.dtype(dtype).name}/{2 if n_labels == 2 else 3}"


def encode(t):
    """A Numba type as an expression :func:`decode` evaluates; TypeError for a kind the table does not store."""
    from numba.core import types

    if isinstance(t, types.Array):
        extra = "" if t.mutable else ", readonly=True"
        return f"Array({encode(t.dtype)}, {t.ndim}, {t.layout!r}{extra})"
    if isinstance(t, types.UniTuple):
        return f"UniTuple({encode(t.dtype)}, {t.count})"
    if isinstance(t, types.Tuple):
        return f"Tuple(({''.join(encode(x) + ', ' for x in t.types)}))"
    if isinstance(t, types.Boolean):
        return "boolean"
    if isinstance(t, (types.Integer, types.Float)):
        return str(t)
    raise TypeError(f"no table entry for a kernel argument of Numba type {t!r}")


_decoded = {}


def decode(expr):
    """The Numba type that :func:`encode` wrote as ``expr``."""
    if expr not in _decoded:
        from numba.core import types

        _decoded[expr] = eval(expr, {"__builtins__": {}}, vars(types))  # only the table's own expressions
    return _decoded[expr]


def decode_all(sig):
    """A signature of the table as the tuple of Numba types ``Dispatcher.compile`` takes."""
    return tuple(decode(a) for a in sig)


def _run(what, dtype, n_labels):
    """One small call of the profile (compiled kernels, never the NumPy fallback)."""
    import crfcore

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 24, 20, n_labels)).astype(dtype)
    image = rng.integers(0, 255, size=(2, 24, 20, 3), dtype=np.uint8)
    if what == "inference":
        crfcore.meanfield(logits, image, n_iter=1)
    else:
        out, res = crfcore.meanfield_fwd(logits, image, n_iter=1)
        crfcore.meanfield_bwd(res, np.ones_like(out), features=True)


def record():
    """``{profile key: {kernel name: [signature, ...]}}`` of every profile, from real calls in this process."""
    import numba

    from .._kernels import lattice, meanfield

    os.environ["CRFCORE_FIRST_CALL"] = "compile"  # the kernels themselves, in this process
    os.environ["CRFCORE_COMPILE_WORKER"] = "1"  # no compile workers: kernels are wrapped below
    for profile in PROFILES:
        _run(*profile)  # compiled (or loaded) with the real dispatchers, so callers have their callees
    modules = (lattice, meanfield)
    dispatchers = {(m, name): obj for m in modules for name, obj in vars(m).items()
                   if isinstance(obj, numba.core.registry.CPUDispatcher)}
    seen = []

    def recorder(module, name, dispatcher):
        def call(*args):
            seen.append((f"{module.__name__.rsplit('.', 1)[-1]}.{name}",
                         tuple(encode(numba.typeof(a)) for a in args)))
            return dispatcher(*args)
        return call

    table = {}
    try:
        for (m, name), d in dispatchers.items():  # calls from Python now go through a recorder
            setattr(m, name, recorder(m, name, d))
        for profile in PROFILES:
            seen.clear()
            _run(*profile)
            kernels = table.setdefault(profile_key(*profile), {})
            for name, sig in seen:
                if sig not in kernels.setdefault(name, []):
                    kernels[name].append(sig)
    finally:
        for (m, name), d in dispatchers.items():
            setattr(m, name, d)
    for key in [k for k in table if k.startswith("training/")]:  # stored as what inference does not already have
        base = table.get("inference/" + key.split("/", 1)[1], {})
        own = {name: [s for s in sigs if s not in base.get(name, [])] for name, sigs in table[key].items()}
        table[key] = {name: sigs for name, sigs in own.items() if sigs}
    return table


def write(table, path=None):
    """Write ``table`` as ``signature_table.py`` (beside this file unless ``path``)."""
    path = path or os.path.join(os.path.dirname(__file__), "signature_table.py")
    lines = ['"""Generated by ``python -m crfcore.warmup``: do not edit (see crfcore.warmup.signatures)."""', "",
             "TABLE = {"]
    for key in sorted(table):
        lines.append(f"    {key!r}: {{")
        for name in sorted(table[key]):
            lines.append(f"        {name!r}: [")
            for sig in table[key][name]:
                line = "            ("
                for a in sig:
                    if len(line) + len(repr(a)) + 2 > 118:
                        lines.append(line.rstrip())
                        line = "             "
                    line += f"{a!r}, "
                lines.append(line.rstrip() + "),")
            lines.append("        ],")
        lines.append("    },")
    lines.append("}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def entries(key):
    """``[(kernel name, signature as encoded), ...]`` of a profile key (see :func:`profile_key`), training's
    including inference's; None if the table has no such profile."""
    from .signature_table import TABLE

    entry = TABLE.get(key)
    if entry is None:
        return None
    out = [(name, tuple(sig)) for name in sorted(entry) for sig in entry[name]]
    if key.startswith("training/"):  # training runs the inference kernels too; the table lists only the others
        out = entries("inference/" + key.split("/", 1)[1]) + out
    return out


def dispatcher(name):
    """The kernel ``"lattice.embed"`` (module.name in :mod:`crfcore._kernels`)."""
    from .._kernels import lattice, meanfield

    module, attr = name.split(".")
    return getattr({"lattice": lattice, "meanfield": meanfield}[module], attr)

