"""The results pages, rendered from the results files in docs/results/ (run by docs/conf.py at every build).

``benchmark-*.json`` are ``python -m benchmarks --json`` files, ``demo-*.json`` copies of the ``results.json``
that ``make demo`` writes. The newest of each (by the date recorded in it) is shown; older ones stay in the folder
and are listed. Nothing on these pages is typed by hand: rerun the command and add its file to change them.
"""

import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def load_all(folder, prefix):
    """The results files ``prefix-*.json`` of ``folder``, newest first: ``[(file name, result), ...]``."""
    out = []
    for path in glob.glob(os.path.join(folder, f"{prefix}-*.json")):
        with open(path) as f:
            out.append((os.path.basename(path), json.load(f)))
    return sorted(out, key=lambda x: x[1].get("meta", {}).get("date", ""), reverse=True)


def _meta(meta):
    v = meta.get("versions", {})
    m = meta.get("machine", {})
    versions = ", ".join(f"{k} {v[k]}" for k in ("crfcore", "numpy", "numba", "pydensecrf2", "tensorflow") if k in v)
    return (f"Run on {meta.get('date', '?')} at commit `{meta.get('commit') or '?'}`"
            f"{' (with local changes)' if meta.get('dirty') else ''} with `{meta.get('command', '?')}`; "
            f"{m.get('cores', '?')} cores ({m.get('processor', '?')}, {m.get('system', '?')}); "
            f"Python {v.get('python', '?')}, {versions}.")


def _fmt(x, spec):
    return "–" if x is None else format(x, spec)


def benchmark_page(files):
    """Markdown of the benchmark results page for :func:`load_all`'s ``files``."""
    lines = ["# Benchmark results", "",
             "Rendered from the newest `docs/results/benchmark-*.json` (written by `python -m benchmarks --json "
             "PATH`; `make bench` runs it). Each row times crfcore and the C++ densecrf (pydensecrf2) on the same "
             "input in the same run, interleaved, after a warm-up call: medians of the repeats.", ""]
    if not files:
        return "\n".join(lines + ["No results file yet: run `python -m benchmarks --json docs/results/"
                                  "benchmark-DATE.json`."]) + "\n"
    name, r = files[0]
    lines += [_meta(r.get("meta", {})), "", "![crfcore and densecrf over image sizes](../_static/figures/speed.png)",
              "", "Inputs: *photo* is a scikit-image sample photo resized, with a segmentation's noisy scores; *noise* "
              "the same scores on a uniformly random RGB image (about two lattice vertices per pixel: the hardest "
              "case).", "",
              "| input | size | labels | iterations | crfcore ms | crfcore, 1 thread | densecrf ms | "
              "densecrf / crfcore | densecrf / crfcore on 1 thread | max abs ΔQ | labels equal % |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row.get('input', 'photo')} | {row['size']}² | {row['labels']} | {row['iterations']} | "
                     f"{row['crfcore_ms']:.1f} | {row['crfcore_1t_ms']:.1f} | {_fmt(row.get('densecrf_ms'), '.1f')} | "
                     f"{_fmt(row.get('speedup'), '.2f')}× | {_fmt(row.get('speedup_1t'), '.2f')}× | "
                     f"{_fmt(row.get('max_abs_dq'), '.1e')} | {_fmt(row.get('label_agreement_pct'), '.3f')} |")
    if r.get("volume"):
        lines += ["", "## 3-D volumes", "", "A synthetic scan (smooth blobs in one noisy intensity channel) with "
                  "`spatial_dims=3`, against densecrf's generic `DenseCRF` given the same 3-D features.", "",
                  "| volume | labels | iterations | crfcore ms | crfcore, 1 thread | densecrf ms | "
                  "densecrf / crfcore | on 1 thread | labels equal % |", "|---|---|---|---|---|---|---|---|---|"]
        for v in r["volume"]:
            lines.append(f"| {'×'.join(map(str, v['shape']))} | {v['labels']} | {v['iterations']} | "
                         f"{v['crfcore_ms']:.0f} | {v['crfcore_1t_ms']:.0f} | {_fmt(v.get('densecrf_ms'), '.0f')} | "
                         f"{_fmt(v.get('speedup'), '.2f')}× | {_fmt(v.get('speedup_1t'), '.2f')}× | "
                         f"{_fmt(v.get('label_agreement_pct'), '.3f')} |")
    if r.get("throughput"):
        lines += ["", "## Throughput against one densecrf process per core", "",
                  "crfcore: one process, the batch given to `crfcore.meanfield` at once (and `crfcore.refine_files` "
                  "over a folder of the same images); densecrf: one process per core, all at once. Photo inputs.", "",
                  "| batch | size | labels | crfcore images/s | crfcore refine images/s | densecrf images/s "
                  "(all processes) | ratio |", "|---|---|---|---|---|---|---|"]
        for t in r["throughput"]:
            lines.append(f"| {t['batch']} | {t['size']}² | {t['labels']} | {t['crfcore_batch_images_per_s']:.1f} | "
                         f"{_fmt(t.get('crfcore_refine_images_per_s'), '.1f')} | "
                         f"{_fmt(t.get('densecrf_images_per_s'), '.1f')} ({t['densecrf_processes']}) | "
                         f"{_fmt(t.get('speedup'), '.2f')}× |")
    c = r.get("contention")
    if c:
        lines += ["", "## Under contention", "", f"{c['competitors']} busy processes (one per core) run beside "
                  "both peers. Photo inputs.", "", "| size | labels | iterations | crfcore ms | crfcore, 1 thread | "
                  "densecrf ms | densecrf / crfcore | on 1 thread |", "|---|---|---|---|---|---|---|---|"]
        for row in c["rows"]:
            lines.append(f"| {row['size']}² | {row['labels']} | {row['iterations']} | {row['crfcore_ms']:.1f} | "
                         f"{row['crfcore_1t_ms']:.1f} | {_fmt(row.get('densecrf_ms'), '.1f')} | "
                         f"{_fmt(row.get('speedup'), '.2f')}× | {_fmt(row.get('speedup_1t'), '.2f')}× |")
        s = c["stepwise"]
        lines += ["", f"pydensecrf's step-wise `stepInference` at {s['size']}² with {s['labels']} labels: "
                  f"crfcore.pydensecrf {s['shim_step_ms']:.1f} ms, pydensecrf2 "
                  f"{_fmt(s.get('densecrf_step_ms'), '.1f')} ms."]
    lines += ["", "## Backward pass", "", "| size | labels | iterations | forward ms | backward ms | backward / "
              "forward | with widths and image ms |", "|---|---|---|---|---|---|---|"]
    for b in r.get("backward", []):
        lines.append(f"| {b['size']}² | {b['labels']} | {b['iterations']} | {b['forward_ms']:.1f} | "
                     f"{b['backward_ms']:.1f} | {b['backward_over_forward']:.2f} | "
                     f"{b['backward_with_widths_ms']:.1f} |")
    b = r.get("batch")
    if b:
        lines += ["", "## Batches", "", f"A batch of {b['batch']} images of {b['size']}² with {b['labels']} labels: "
                  f"crfcore {b['crfcore_images_per_s']:.1f} images/s (from 4 Python threads at once "
                  f"{b['crfcore_4_python_threads_images_per_s']:.1f})"
                  + (f", densecrf {b['densecrf_images_per_s']:.1f}." if "densecrf_images_per_s" in b else ".")]
    if r.get("pydensecrf"):
        lines += ["", "## The pydensecrf script through `crfcore.pydensecrf`", "",
                  "| size | labels | iterations | crfcore.pydensecrf ms | crfcore.meanfield ms | pydensecrf2 ms | "
                  "pydensecrf2 / crfcore.pydensecrf |", "|---|---|---|---|---|---|---|"]
        for p in r["pydensecrf"]:
            lines.append(f"| {p['size']}² | {p['labels']} | {p['iterations']} | {p['shim_ms']:.1f} | "
                         f"{p['meanfield_ms']:.1f} | {_fmt(p.get('densecrf_ms'), '.1f')} | "
                         f"{_fmt(p.get('speedup'), '.2f')}× |")
    fc = r.get("first_call")
    if fc:
        sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
        from benchmarks.first_call import report

        lines += ["", "## First calls from an empty cache", "", "See [first-call compilation](../first-call.md).",
                  "", "```text", report(fc), "```"]
    if len(files) > 1:
        lines += ["", "## Older results", ""] + [f"- `{n}`: {f.get('meta', {}).get('date', '?')}"
                                                 for n, f in files[1:]]
    return "\n".join(lines) + "\n"


def demo_page(files):
    """Markdown of the receipt pipeline's results page."""
    lines = ["# Receipt pipeline results", "",
             "Rendered from the newest `docs/results/demo-*.json` (a copy of the `out/demo/results.json` that "
             "`make demo` writes). Dice and spurious islands per image on the synthetic test split and on the 18 "
             "real SmartDoc photos, for the U-Net alone and with each kind of CRF.", ""]
    if not files:
        return "\n".join(lines + ["No results file yet: run `make demo` and copy `out/demo/results.json`."]) + "\n"
    name, r = files[0]
    lines += [_meta(r.get("meta", {})), ""]
    labels = r.get("labels", {})
    for title, methods in r["metrics"].items():
        lines += [f"## {title}", "", "| method | Dice | IoU | islands per image | ms per image |",
                  "|---|---|---|---|---|"]
        for method, m in methods.items():
            lines.append(f"| {labels.get(method, method)} | {m['dice']:.4f} | {m['iou']:.4f} | "
                         f"{m['islands_per_image']:.2f} | {m['ms_per_image']:.1f} |")
        lines.append("")
    if r.get("settings"):
        lines += ["## Settings", ""] + [f"- {k}: {v}" for k, v in r["settings"].items()]
    if len(files) > 1:
        lines += ["", "## Older results", ""] + [f"- `{n}`: {f.get('meta', {}).get('date', '?')}"
                                                 for n, f in files[1:]]
    return "\n".join(lines) + "\n"


#: The rows of the README's "Performance at a glance": (input, size, labels, iterations).
README_ROWS = (("photo", 224, 2, 5), ("photo", 512, 2, 5), ("photo", 512, 21, 10), ("photo", 1024, 21, 10),
               ("noise", 224, 2, 5), ("noise", 512, 21, 5))
START = "<!-- performance:start"
END = "<!-- performance:end -->"


def readme_table(result):
    """The README's performance table (markdown lines) from a benchmark result."""
    meta = result.get("meta", {})
    lines = ["| image | labels | iterations | crfcore | C++ densecrf | speed-up | speed-up, crfcore on 1 thread |",
             "|---|---|---|---|---|---|---|"]
    for kind, size, labels, iters in README_ROWS:
        row = next((r for r in result["rows"] if (r.get("input", "photo"), r["size"], r["labels"], r["iterations"])
                    == (kind, size, labels, iters)), None)
        if row is None:
            continue
        lines.append(f"| {kind} {size}² | {labels} | {iters} | {row['crfcore_ms']:.0f} ms | "
                     f"{_fmt(row.get('densecrf_ms'), '.0f')} ms | {_fmt(row.get('speedup'), '.2f')}× | "
                     f"{_fmt(row.get('speedup_1t'), '.2f')}× |")
    for v in result.get("volume", [])[:1]:
        lines.append(f"| volume {'×'.join(map(str, v['shape']))} | {v['labels']} | {v['iterations']} | "
                     f"{v['crfcore_ms']:.0f} ms | {_fmt(v.get('densecrf_ms'), '.0f')} ms | "
                     f"{_fmt(v.get('speedup'), '.2f')}× | {_fmt(v.get('speedup_1t'), '.2f')}× |")
    cores = meta.get("machine", {}).get("cores", "?")
    lines += ["", f"Medians, the same input through both in the same run, on {cores} CPU cores (commit "
                  f"`{meta.get('commit') or '?'}`). *photo*: a sample photo with a segmentation's noisy scores; "
                  "*noise*: the same scores on a random RGB image; *volume*: a synthetic 3-D scan, one channel."]
    return lines


def update_readme(readme, results):
    """Rewrite the README's performance table from the newest benchmark file; returns whether it changed."""
    files = load_all(results, "benchmark")
    text = open(readme, encoding="utf-8").read()
    a, b = text.index(START), text.index(END)
    head = text[:a] + text[a:].split("\n", 1)[0] + "\n"
    new = head + ("\n".join(readme_table(files[0][1])) + "\n" if files else "") + text[b:]
    if new != text:
        with open(readme, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text


def write_pages(results, out):
    """Write ``benchmarks.md`` and ``demo.md`` into ``out`` from the files in ``results``, and the speed plot."""
    bench = load_all(results, "benchmark")
    pages = {"benchmarks.md": benchmark_page(bench), "demo.md": demo_page(load_all(results, "demo"))}
    for name, text in pages.items():
        path = os.path.join(out, name)
        old = open(path).read() if os.path.exists(path) else None
        if old != text:  # unchanged pages keep their time stamp: Sphinx then does not rebuild them
            with open(path, "w") as f:
                f.write(text)
    if bench:
        import figures

        figures.speed_plot(bench[0][1], os.path.join(os.path.dirname(HERE), "_static", "figures", "speed.png"))


if __name__ == "__main__":
    docs = os.path.dirname(HERE)
    write_pages(os.path.join(docs, "results"), os.path.join(docs, "results"))
    if update_readme(os.path.join(os.path.dirname(docs), "README.md"), os.path.join(docs, "results")):
        print("README.md: performance table updated")
