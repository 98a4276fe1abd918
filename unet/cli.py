"""``python -m unet``: train a U-Net, add the CRF-RNN layer, evaluate, or run the whole demo.

A thin layer over :mod:`unet.pipeline`; every stage writes into ``--out``.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from crfcore._shared import non_negative_float, non_negative_int, positive_float, positive_int  # noqa: E402

from . import store  # noqa: E402  (the standard library only: cheap at start-up)
from .array_pipelines import without_autotune  # noqa: E402  (likewise)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMARTDOC = os.path.join(REPO, "..", "shared", "data", "smartdoc18")


def _progress():
    from tqdm.auto import tqdm

    return lambda it, **kw: tqdm(it, leave=False, **kw)


def _keras_verbose():
    return 1 if sys.stdout.isatty() else 2


def _splits(args, with_crf=False, only=None):
    """train/dev/test (and crf) datasets from ``--data`` or the synthetic generator; ``only`` (a split's name or a
    tuple of names): just those synthetic splits (each is its own seeded stream, so the same photos either way)."""
    from . import data

    if args.data:
        full = data.load_folder(args.data, size=args.size)
        parts = data.split(full, args.data, seed=args.seed)
        parts["crf"] = parts["train"]
        return parts
    names = (only,) if isinstance(only, str) else tuple(only or data.SPLITS)
    parts = data.synthetic_splits(args.n_train, args.n_dev, args.n_test, args.seed, size=args.size,
                                  progress=_progress(), only=names)
    if with_crf:
        parts["crf"] = data.synthetic(args.n_crf, data.stream_seed(args.seed, "crf"), size=args.size,
                                        progress=_progress())
    return parts


def _load(path):
    """A saved model, or a clear error: missing, not a .keras file, corrupt or truncated."""
    try:
        return store.load(path)
    except store.ModelFileError as exc:
        raise SystemExit(f"error: {exc}") from None


save_model = store.save  # atomically: never a truncated model


#: The U-Net's training defaults from scratch (the demo's, on synthetic photos) and when fine-tuning a model (by
#: default the cached synthetic start model, with --data): measured on SmartDoc held out by background, see the
#: design notes (docs/design/receipt-experiments.md).
FROM_SCRATCH = dict(epochs=8, lr=3e-3, warmup=0, average_last=0)
FINE_TUNING = dict(epochs=24, lr=1e-3, warmup=2, average_last=6)


def _resolve_unet_defaults(args):
    """Fill the U-Net flags left unset: ``--init synthetic`` with ``--data`` (else none), and the epochs, learning
    rate, warm-up and averaging of :data:`FINE_TUNING` when there is a model to start from, else
    :data:`FROM_SCRATCH`."""
    if args.init is None:
        args.init = "synthetic" if args.data else "none"
    defaults = FROM_SCRATCH if args.init == "none" else FINE_TUNING
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _init_model(args):
    """The model ``--init`` names: None (``none``), the cached synthetic start model (``synthetic``, trained once
    if the cache has none for ``--size``) or a .keras file."""
    if args.init == "none":
        return None
    if args.init == "synthetic":
        try:
            model, path, trained = store.synthetic_start(args.size, verbose=_keras_verbose(), progress=_progress())
        except store.ModelFileError as exc:
            raise SystemExit(f"error: {exc}") from None
        print(f"fine-tuning the synthetic start model {path}" + ("" if trained else " (cached)"))
        return model
    return _load(args.init)


def _has_crf(model):
    return "crfrnn" in [layer.name for layer in model.layers]


def cmd_train(args, parts=None):
    from . import pipeline

    parts = parts or _splits(args, only=("train", "dev"))  # the test split is evaluate's
    if args.data and getattr(args, "mix_synthetic", 0):
        parts = dict(parts, train=parts["train"].concat(_rehearsal(args)))
    init = _init_model(args)
    t0 = time.perf_counter()
    model, history = pipeline.train_unet(parts["train"], parts["dev"], epochs=args.epochs,
                                         batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                                         verbose=_keras_verbose(), augmentation=args.augment, init=init,
                                         average_last=args.average_last, warmup=args.warmup,
                                         freeze_batchnorm=args.freeze_bn)
    os.makedirs(args.out, exist_ok=True)
    path = save_model(model, os.path.join(args.out, "unet.keras"))
    pipeline.save_json({"history": history, "seconds": time.perf_counter() - t0}, os.path.join(args.out,
                                                                                               "unet_history.json"))
    print(f"U-Net trained in {time.perf_counter() - t0:.0f} s -> {path}")
    if _trains_the_synthetic_start(args):
        print(f"kept as the start model of `train --data`: {store.remember_synthetic_start(model, args.size)}")
    return model


def cmd_add_crf(args, unet=None, parts=None):
    from . import pipeline

    unet = unet or _load(args.unet)
    if _has_crf(unet):
        raise SystemExit(f"error: {args.unet!r} already has a CRF-RNN layer; pass the U-Net from `python -m unet "
                         f"train` (its unet.keras)")
    parts = parts or _splits(args, with_crf=True, only=("dev",))  # the CRF trains on photos of its own
    t0 = time.perf_counter()
    crf_model = pipeline.attach_crf(unet, {"bilateral_weight": args.crf_bilateral_weight}, start=args.crf_start,
                                    learn_widths=_learned_widths(args), guide=args.crf_guide)
    crf_model, history = pipeline.train_crf(crf_model, parts["crf"], parts["dev"], epochs=args.crf_epochs,
                                            batch_size=args.crf_batch_size, learning_rate=args.crf_lr,
                                            widths_learning_rate=args.crf_widths_lr,
                                            boundary_weight=args.crf_boundary_weight,
                                            boundary_margin=args.crf_boundary_margin, seed=args.seed,
                                            verbose=_keras_verbose(), augmentation=_crf_augmentation(args),
                                            island_cost=args.crf_island_cost)
    os.makedirs(args.out, exist_ok=True)
    path = save_model(crf_model, os.path.join(args.out, "unet_crf.keras"))
    pipeline.save_json({"history": history, "seconds": time.perf_counter() - t0,
                        "crf_weights": pipeline.crf_weights(crf_model)}, os.path.join(args.out, "crf_history.json"))
    print(f"CRF-RNN layer trained in {time.perf_counter() - t0:.0f} s -> {path}")
    return crf_model


def _crf_augmentation(args):
    """``train_crf``'s ``augmentation`` from the flags: None, or the U-Net's strengths with ``--crf-noise``."""
    if not (args.crf_augment or args.crf_noise):
        return None
    return {"noise": args.crf_noise}


def _learned_widths(args):
    """``attach_crf``'s ``learn_widths`` from the flags: none, theta_alpha and theta_beta, or all three."""
    from . import pipeline

    if not args.learn_widths:
        return False
    return True if args.learn_theta_gamma else pipeline.LEARNED_WIDTHS


def _widths_setting(args):
    learned = _learned_widths(args)
    if not learned:
        return "widths fixed"
    return "widths learned" if learned is True else "theta_alpha, theta_beta learned (theta_gamma held)"


def _evaluate_sets(unet, crf_model, sets, args, meanfield_params=None):
    from . import pipeline

    sections, summary = [], {}
    for title, ds in sets:
        results, preds = pipeline.evaluate(unet, crf_model, ds, progress=_progress(),
                                           meanfield_params=meanfield_params)
        sections.append((title, ds, results, preds))
        summary[title] = results
        print(f"\n{title} ({len(ds)} images)")
        for method, r in results.items():
            print(f"  {method:16s} Dice {r['dice']:.4f}  IoU {r['iou']:.4f}  acc {r['pixel_accuracy']:.4f}  "
                  f"islands/img {r['islands_per_image']:.2f}  {r['ms_per_image']:.1f} ms/img")
    return sections, summary


def cmd_evaluate(args, unet=None, crf_model=None, parts=None, settings=None):
    from . import data, pipeline, report

    if crf_model is None:
        model = _load(args.model)
        crf_model = model if _has_crf(model) else None
        unet = pipeline.unet_of(model) if crf_model is not None else model
    sets = []
    if args.data or parts is not None or args.split != "none":
        if args.data and args.split == "all":
            sets.append((f"{os.path.basename(os.path.normpath(args.data))} (all)",
                         data.load_folder(args.data, size=args.size)))
        elif args.split != "none":
            parts = parts or _splits(args, only=args.split)
            label = os.path.basename(os.path.normpath(args.data)) if args.data else "synthetic"
            sets.append((f"{label} {args.split} split", parts[args.split]))
    smartdoc = getattr(args, "smartdoc", None)
    if smartdoc and os.path.isdir(smartdoc):
        sets.append(("SmartDoc real photos", data.load_folder(smartdoc, size=args.size)))
    elif smartdoc:
        print(f"SmartDoc data not found at {smartdoc!r}: skipping the real-photo check")
    for title, ds in sets:
        if not len(ds):
            raise SystemExit(f"error: nothing to evaluate: {title} has no images")
    if not sets:
        raise SystemExit("error: nothing to evaluate: pass --data, a --split or --smartdoc")
    dev = (parts or {}).get("dev")
    if dev is None and args.split not in ("all", "none") and not args.data:
        dev = _splits(args, only="dev")["dev"]
    elif dev is None and args.data and args.split not in ("all", "none"):
        dev = _splits(args)["dev"]
    meanfield_params = None
    if dev is not None and len(dev):
        print(f"fitting meanfield's parameters on the dev split ({min(len(dev), pipeline.FIT_IMAGES)} images, "
              f"crfcore.fit)")
        meanfield_params = pipeline.fit_postprocessing(unet, dev)
        import numpy as np

        shown = {k: (round(float(v), 4) if np.ndim(v) == 0 else np.round(v, 4).tolist())
                 for k, v in meanfield_params.items() if k != "compat" and v is not None and not isinstance(v, str)}
        print(f"  fitted: {shown}")
    sections, summary = _evaluate_sets(unet, crf_model, sets, args, meanfield_params=meanfield_params)
    pipeline.save_json(summary, os.path.join(args.out, "metrics.json"))
    path = report.write(args.out, sections, settings=settings,
                        crf_weights=pipeline.crf_weights(crf_model["unet+crf-rnn"] if isinstance(crf_model, dict)
                                                         else crf_model) if crf_model is not None else None)
    print(f"\nreport: {path}")
    return summary


def _trains_the_synthetic_start(args):
    """Whether ``args`` (of ``train`` or ``demo``) train the U-Net :func:`unet.store.synthetic_start` would:
    synthetic photos, its settings."""
    settings = dict(n_train=args.n_train, n_dev=args.n_dev, epochs=args.epochs, batch_size=args.batch_size,
                    learning_rate=args.lr, seed=args.seed)
    return (not args.data and args.init == "none" and settings == store.SYNTHETIC_SETTINGS and args.augment is True
            and not args.warmup and not args.average_last and not args.freeze_bn and args.deterministic)


def cmd_demo(args):
    t0 = time.perf_counter()
    parts = _splits(args, with_crf=True)
    t_data = time.perf_counter() - t0
    unet = cmd_train(args, parts)
    t_unet = time.perf_counter() - t0 - t_data
    crf_model = cmd_add_crf(args, unet=unet, parts=parts)
    t_crf = time.perf_counter() - t0 - t_data - t_unet
    # the comparison the learned widths must stand: the CRF-RNN with the hand-tuned widths held fixed
    from . import pipeline

    tuned = pipeline.attach_crf(unet, learn_widths=False, start="tuned")
    tuned, _ = pipeline.train_crf(tuned, parts["crf"], parts["dev"], epochs=2, batch_size=args.crf_batch_size,
                                  boundary_weight=0.0,  # as it was trained before the widths could be learned
                                  learning_rate=args.crf_lr, seed=args.seed, verbose=_keras_verbose())
    t_tuned = time.perf_counter() - t0 - t_data - t_unet - t_crf
    args.split = "test"
    settings = {
        "data": args.data or f"embedded synthetic generator (seed {args.seed}): {args.n_train} train, "
                             f"{args.n_dev} dev, {args.n_test} test, {args.n_crf} for the CRF stage",
        "U-Net": f"{args.epochs} epochs, batch {args.batch_size}, {args.size}x{args.size}, {unet.count_params():,} "
                 f"weights",
        "CRF-RNN stage": f"{args.crf_epochs} epoch(s), batch {args.crf_batch_size}, U-Net frozen, start "
                         f"{args.crf_start}, {_widths_setting(args)}, boundary weight "
                         f"{args.crf_boundary_weight} (margin {args.crf_boundary_margin} px), initial bilateral weight "
                         f"{args.crf_bilateral_weight}, the epoch kept by dev Dice - {args.crf_island_cost} x islands "
                         f"per image"
                         f"{', guide' if args.crf_guide else ''}"
                         f"{', augmented' if _crf_augmentation(args) else ''}"
                         f"{f' with noise up to {args.crf_noise}' if args.crf_noise else ''}"
                         "; the hand-tuned comparison: 2 epochs, widths fixed",
        "time": f"data {t_data:.0f} s, U-Net {t_unet:.0f} s, CRF-RNN {t_crf:.0f} s (+ {t_tuned:.0f} s for the "
                f"hand-tuned comparison)",
    }
    summary = cmd_evaluate(args, unet=unet, crf_model={"unet+crf-rnn": crf_model, "unet+crf-rnn-tuned": tuned},
                           parts=parts, settings=settings)
    seconds = time.perf_counter() - t0
    print(f"demo finished in {seconds:.0f} s")
    from .provenance import provenance

    # the results file the docs' results page renders (docs/results/demo-*.json keeps copies of these)
    pipeline.save_json({"meta": provenance(), "settings": settings, "seconds": seconds, "metrics": summary,
                        "labels": pipeline.LABELS}, os.path.join(args.out, "results.json"))
    return summary


def _folds(args, full):
    """``[(name, test indices)]``: one fold per group of ``--group-by`` (or a manifest's ``group`` column), else
    ``--folds`` folds of a shuffle seeded 0 (the same folds for every training seed)."""
    import numpy as np

    from . import data

    column = args.group_by
    if column is None and os.path.exists(os.path.join(args.data, "manifest.csv")):
        header, _ = data._read_manifest(os.path.join(args.data, "manifest.csv"))
        column = "group" if "group" in header else None
    if column is not None:
        try:
            labels = data.groups(full, args.data, column)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        names = sorted(set(labels))
        if len(names) < 2:
            raise SystemExit(f"error: cross-validation by {column!r} needs at least two groups, found {names}")
        return [(g, [i for i, lab in enumerate(labels) if lab == g]) for g in names]
    if args.folds > len(full):
        raise SystemExit(f"error: --folds {args.folds} but {args.data!r} has {len(full)} images")
    order = np.random.default_rng(0).permutation(len(full))
    return [(f"fold{k}", sorted(int(i) for i in order[k::args.folds])) for k in range(args.folds)]


def _rehearsal(args):
    """``--mix-synthetic`` photos: the first of the synthetic training stream of seed 0 (the same for every seed)."""
    from . import data

    return data.synthetic(args.mix_synthetic, data.stream_seed(0, "train"), size=args.size)


def _spread(values):
    import numpy as np

    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "spread": float(v.max() - v.min()), "std": float(v.std(ddof=1)) if len(v) > 1
            else 0.0, "min": float(v.min()), "max": float(v.max()), "values": v.tolist()}


def cmd_crossval(args):
    """Train (fine-tune) and add the CRF on all groups but one, test on that one, each way, for each seed."""
    import keras
    import numpy as np

    from . import data, metrics, pipeline

    if not args.data:
        raise SystemExit("error: crossval needs --data (a folder with images/ and masks/)")
    if not 0 <= args.dev_fraction < 1:
        raise SystemExit(f"error: --dev-fraction must be in [0, 1), got {args.dev_fraction}")
    t0 = time.perf_counter()
    full = data.load_folder(args.data, size=args.size)
    folds = _folds(args, full)
    init = _init_model(args)
    rehearsal = _rehearsal(args) if args.mix_synthetic else None
    methods = ("unet", "unet+crf-rnn")
    runs, per_image = [], {}
    for seed in args.seeds:
        for name, test_idx in folds:
            t_run = time.perf_counter()
            pool = np.array([i for i in range(len(full)) if i not in set(test_idx)])
            order = np.random.default_rng([seed, len(runs)]).permutation(pool)
            n_dev = int(round(args.dev_fraction * len(pool)))
            dev, train = full.subset(np.sort(order[:n_dev])), full.subset(np.sort(order[n_dev:]))
            test = full.subset(test_idx)
            print(f"\nseed {seed}, held out {name} ({len(test)} images): train {len(train)}, dev {len(dev)}")
            keras.backend.clear_session()
            unet, h_unet = pipeline.train_unet(train if rehearsal is None else train.concat(rehearsal), dev,
                                               epochs=args.epochs, batch_size=args.batch_size,
                                               learning_rate=args.lr, seed=seed, verbose=0,
                                               augmentation=_unet_augmentation(args), init=init,
                                               average_last=args.average_last, warmup=args.warmup,
                                               freeze_batchnorm=args.freeze_bn,
                                               jit_compile=False)  # a few dozen steps: XLA's compile costs more
            crf = pipeline.attach_crf(unet, {"bilateral_weight": args.crf_bilateral_weight}, start=args.crf_start,
                                      learn_widths=_learned_widths(args), guide=args.crf_guide)
            crf, h_crf = pipeline.train_crf(crf, train, dev, epochs=args.crf_epochs, batch_size=args.crf_batch_size,
                                            learning_rate=args.crf_lr, widths_learning_rate=args.crf_widths_lr,
                                            boundary_weight=args.crf_boundary_weight,
                                            boundary_margin=args.crf_boundary_margin, seed=seed, verbose=0,
                                            augmentation=_crf_augmentation(args), island_cost=args.crf_island_cost)
            preds = pipeline.predict(unet, crf, test)
            run = {"seed": seed, "fold": name, "n_train": len(train), "n_dev": len(dev), "n_test": len(test),
                   "unet_epoch": h_unet["best_epoch"], "unet_averaged_epochs": h_unet.get("averaged_epochs"),
                   "crf_epoch": h_crf["best_epoch"], "crf_widths": pipeline.crf_weights(crf)}
            for m in methods:
                masks = preds[m][0]
                d = [metrics.dice(p, t) for p, t in zip(masks, test.masks)]
                n = [metrics.islands(p, t) for p, t in zip(masks, test.masks)]
                per_image.setdefault((seed, m), []).extend(zip(d, n))
                run[m] = {"dice": float(np.mean(d)), "islands_per_image": float(np.mean(n))}
            run["seconds"] = time.perf_counter() - t_run
            runs.append(run)
            print(f"  U-Net Dice {run['unet']['dice']:.4f}, islands {run['unet']['islands_per_image']:.2f}; "
                  f"+ CRF-RNN Dice {run['unet+crf-rnn']['dice']:.4f}, islands "
                  f"{run['unet+crf-rnn']['islands_per_image']:.2f} ({run['seconds']:.0f} s)")
    per_seed = {str(seed): {m: {"dice": float(np.mean([d for d, _ in per_image[seed, m]])),
                                "islands_per_image": float(np.mean([n for _, n in per_image[seed, m]])),
                                "n_images": len(per_image[seed, m])} for m in methods} for seed in args.seeds}
    summary = {m: {"dice": _spread([per_seed[str(s)][m]["dice"] for s in args.seeds]),
                   "islands_per_image": _spread([per_seed[str(s)][m]["islands_per_image"] for s in args.seeds])}
               for m in methods}
    seconds = time.perf_counter() - t0
    print(f"\n{len(args.seeds)} seed(s) x {len(folds)} folds, every image tested once per seed ({seconds:.0f} s):")
    for m in methods:
        d, n = summary[m]["dice"], summary[m]["islands_per_image"]
        print(f"  {pipeline.LABELS[m]:32s} Dice {d['mean']:.4f} (spread over seeds {d['spread']:.4f}), islands per "
              f"image {n['mean']:.2f}")
    from .provenance import provenance

    settings = {"data": args.data, "folds": [{"name": name, "test": [full.names[i] for i in idx]}
                                             for name, idx in folds],
                "seeds": list(args.seeds), "init": args.init, "dev_fraction": args.dev_fraction,
                "U-Net": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                          "augment": args.augment, "average_last": args.average_last, "warmup": args.warmup,
                          "freeze_bn": args.freeze_bn, "mix_synthetic": args.mix_synthetic,
                          "size": args.size},
                "CRF-RNN": {"epochs": args.crf_epochs, "batch_size": args.crf_batch_size, "widths":
                            _widths_setting(args), "boundary_weight": args.crf_boundary_weight,
                            "island_cost": args.crf_island_cost}}
    path = pipeline.save_json({"meta": provenance(), "settings": settings, "seconds": seconds, "summary": summary,
                               "per_seed": per_seed, "runs": runs, "labels": {m: pipeline.LABELS[m] for m in methods}},
                              os.path.join(args.out, "results.json"))
    print(f"results: {path}")
    return summary


def _unet_augmentation(args):
    return args.augment


def cmd_export(args):
    from . import data, export, pipeline

    model = _load(args.model)
    if not _has_crf(model):
        raise SystemExit("error: --model must be a U-Net + CRF-RNN model from `python -m unet add-crf`")
    size = model.inputs[0].shape[1]
    if args.data:
        images = data.load_folder(args.data, size=size).images[: args.n_check]
    else:
        images = data.synthetic(args.n_check, data.stream_seed(args.seed, "test"), size=size).images
    report = export.export(model, args.out, images)
    pipeline.save_json(report, os.path.join(args.out, "export.json"))
    export.check(report)
    print(f"export OK: {args.out} (checked on {len(images)} images)")
    return report


def image_size(text):
    """argparse type: the U-Net's input side, a positive multiple of 32 (five 2x poolings)."""
    value = positive_int(text)
    if value % 32:
        raise argparse.ArgumentTypeError(f"must be a multiple of 32 (the U-Net pools five times), got {value}; "
                                         f"e.g. {max(32, value - value % 32)} or {value - value % 32 + 32}")
    return value


def out_dir(text):
    """argparse type: an output folder (made if absent); an existing file is refused before any work."""
    if os.path.exists(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder; choose another --out")
    return text


def _common(p, out_required=True):
    p.add_argument("--out", required=out_required, type=out_dir,
                   help="output folder (models, metrics.json, report.md)")
    p.add_argument("--data", help="folder with images/ and masks/ (same stems); default: the synthetic generator")
    p.add_argument("--seed", type=int, default=0, help="seed of data generation, splits and training")
    p.add_argument("--size", type=image_size, default=224,
                   help="image side fed to the U-Net, a multiple of 32 (default 224)")
    p.add_argument("--n-train", type=positive_int, default=560, help="synthetic training images (default 560)")
    p.add_argument("--n-dev", type=positive_int, default=40, help="synthetic dev images (default 40)")
    p.add_argument("--n-test", type=positive_int, default=60, help="synthetic test images (default 60)")
    p.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                   help="TensorFlow's deterministic ops: one seed gives the same weights within a process, and "
                        "across runs (ops run one after another, each on all cores; default on; --no-deterministic allows "
                        "the others)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="TensorFlow's intra-op threads (default: all cores)")


def _unet_opts(p):
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="U-Net epochs (default 8 from scratch, 24 fine-tuning)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="U-Net batch size (default 8)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="U-Net learning rate, cosine decay (default 3e-3 from scratch, 1e-3 fine-tuning)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="flips, small rotations, scale and colour jitter each epoch (default on)")
    p.add_argument("--init", default=None,
                   help="start from this model: 'synthetic' (the U-Net trained on synthetic photos with the demo's "
                        "defaults, cached per --size: `make demo` leaves it there, else it is trained once, about 10 "
                        "minutes), a .keras file, or 'none' (from scratch). Default: synthetic with --data, else "
                        "none")
    p.add_argument("--average-last", type=non_negative_int, default=None,
                   help="keep the mean of the weights of the last N epochs instead of the best dev epoch (0: off; "
                        "default 6 fine-tuning, else 0)")
    p.add_argument("--mix-synthetic", type=non_negative_int, default=0,
                   help="with --data, add this many synthetic photos to the U-Net's training photos (rehearsal: a "
                        "fine-tuned model keeps what the synthetic photos taught, clutter and paper stacks; default 0)")
    p.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="with --init, hold the batch normalisation layers as the init model left them (default off)")
    p.add_argument("--warmup", type=non_negative_int, default=None,
                   help="epochs of linear learning-rate warm-up before the cosine decay (default 2 fine-tuning, "
                        "else 0)")


def _crf_opts(p):
    p.add_argument("--n-crf", type=positive_int, default=128,
                   help="synthetic images for the CRF stage (default 128)")
    p.add_argument("--crf-epochs", type=positive_int, default=12,
                   help="CRF-RNN epochs (default 12: the learned colour width still widens, and the islands fall, "
                        "after 8)")
    p.add_argument("--crf-batch-size", type=positive_int, default=4,
                   help="CRF-RNN batch size, > 1 works (default 4)")
    p.add_argument("--crf-lr", type=positive_float, default=0.003,
                   help="CRF-RNN matrices' learning rate (default 0.003)")
    p.add_argument("--learn-widths", action=argparse.BooleanOptionalAction, default=True,
                   help="learn the bilateral kernel's widths theta_alpha and theta_beta with the matrices (default on)")
    p.add_argument("--learn-theta-gamma", action="store_true",
                   help="learn the spatial kernel's width theta_gamma too (default: held at densecrf's 3 px, as "
                        "densecrf and Kraehenbuehl & Koltun hold it; learned, it grew to 5-11 px, a blur that costs "
                        "Dice at the document's outline)")
    p.add_argument("--crf-widths-lr", type=positive_float, default=0.05,
                   help="learning rate of the log widths (default 0.05)")
    p.add_argument("--crf-boundary-weight", type=non_negative_float, default=150.0,
                   help="weight of the boundary-length term added to the cross-entropy (the mean total variation of "
                        "the probabilities): every spurious island adds boundary (default 150; 0: cross-entropy "
                        "alone)")
    p.add_argument("--crf-island-cost", type=non_negative_float, default=0.01,
                   help="the epoch kept is the one with the best dev Dice minus this per island per image (default "
                        "0.01; 0: the Dice alone)")
    p.add_argument("--crf-boundary-margin", type=non_negative_float, default=3.0,
                   help="count the boundary term only farther than this many pixels from the true boundary, so that "
                        "it penalises spurious boundaries and not the document's edge (default 3; 0: everywhere)")
    p.add_argument("--crf-bilateral-weight", type=positive_float, default=5.0,
                   help="initial weight of the bilateral kernel, learned with the matrices (default 5, the hand-tuned "
                        "CRF's; densecrf's is 10)")
    p.add_argument("--crf-augment", action=argparse.BooleanOptionalAction, default=False,
                   help="train the CRF stage on augmented copies (the U-Net's flips, rotations, scale and colour "
                        "jitter, drawn afresh each epoch; default off: on synthetic photos it raised the Dice on "
                        "real photos once but also their islands)")
    p.add_argument("--crf-noise", type=non_negative_float, default=0.0,
                   help="with --crf-augment (implied), add Gaussian pixel noise of a deviation drawn up to this per "
                        "image (e.g. 0.05): the learned colour width grows and fewer islands remain on real photos, "
                        "at some Dice on clean ones (default 0)")
    p.add_argument("--crf-guide", action="store_true",
                   help="learn a 1x1 convolution of the image in front of the CRF's bilateral kernel")
    p.add_argument("--crf-start", choices=["densecrf", "tuned"], default="densecrf",
                   help="initial CRF: densecrf's default kernels (theta_alpha 80 px, theta_beta 13/255, theta_gamma "
                        "3 px; default) or the hand-tuned widths (10 px, 40/255, 3 px)")


def parser():
    p = argparse.ArgumentParser(
        prog="python -m unet",
        description="Receipt/document segmentation: a U-Net, then a trainable CRF-RNN layer on top of it.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the U-Net (step 1) -> OUT/unet.keras",
                       description="Train a U-Net from scratch on --data or synthetic photos; saves OUT/unet.keras.")
    _common(t)
    _unet_opts(t)
    a = sub.add_parser("add-crf", help="freeze the U-Net, add CrfRnnLayer, retrain (steps 2-4) -> OUT/unet_crf.keras",
                       description="Freeze a trained U-Net, attach crfcore.adapters.tf.CrfRnnLayer to its logits and input "
                                   "image, and train only the CRF weights; saves OUT/unet_crf.keras.")
    _common(a)
    a.add_argument("--unet", required=True, help="the U-Net from `train` (a .keras file)")
    _crf_opts(a)
    e = sub.add_parser("evaluate", help="Dice, IoU, accuracy, islands and timings of U-Net, +meanfield, +CRF-RNN",
                       description="Evaluate a saved model (a U-Net, or a U-Net + CRF-RNN from add-crf) on a split "
                                   "of --data or of the synthetic set, and optionally on SmartDoc; writes "
                                   "OUT/metrics.json and OUT/report.md.")
    _common(e)
    e.add_argument("--model", required=True, help="a .keras model from `train` or `add-crf`")
    e.add_argument("--split", default="test", choices=["train", "dev", "test", "all", "none"],
                   help="which split to evaluate ('all' takes the whole --data folder; default test)")
    e.add_argument("--smartdoc", default=None, help="also evaluate on this images/+masks/ folder of real photos")
    d = sub.add_parser("demo", help="the whole pipeline on the embedded synthetic data (what `make demo` runs)",
                       description="Generate synthetic receipt photos, train the U-Net, add and train the CRF-RNN "
                                   "layer, evaluate on the synthetic test split and on SmartDoc real photos when "
                                   "../shared/data/smartdoc18 exists, and write OUT/report.md. About 15 minutes "
                                   "on 2 CPU cores with the defaults.")
    _common(d)
    _unet_opts(d)
    _crf_opts(d)
    d.add_argument("--smartdoc", default=SMARTDOC, help="real-photo check folder (default ../shared/data/smartdoc18)")
    c = sub.add_parser("crossval", help="cross-validate train + add-crf on a folder, held out by group, over seeds",
                       description="For each seed and each group of photos (a manifest column, --group-by; else "
                                   "--folds folds), fine-tune or train the U-Net and train the CRF-RNN layer on the "
                                   "other groups, and test both on the held-out one. Writes OUT/results.json: per run, "
                                   "per seed (every image tested once) and the mean and spread over the seeds.")
    _common(c)
    _unet_opts(c)
    _crf_opts(c)
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    c.add_argument("--group-by", default=None,
                   help="manifest.csv column naming each photo's group (a path's first component is taken: "
                        "SmartDoc's source_file gives its background); default: a 'group' column if there is one, "
                        "else --folds")
    c.add_argument("--folds", type=positive_int, default=3,
                   help="without groups, this many folds of a seeded shuffle (default 3)")
    c.add_argument("--dev-fraction", type=float, default=0.0,
                   help="share of the training photos held out as a dev set that picks the U-Net's epoch (without "
                        "--average-last) and the CRF's (default 0: every training photo trains, the U-Net's last "
                        "epochs are averaged and the CRF's last epoch is kept)")
    x = sub.add_parser("export", help="SavedModel + TensorFlow Lite of a U-Net + CRF-RNN model, checked against Keras",
                       description="Clone a model from add-crf onto the pure-TensorFlow CRF backend, write "
                                   "OUT/saved_model and OUT/model.tflite (built-in ops only), run both on a few "
                                   "images and fail unless they match Keras (max |Δ logits| <= 1e-3, Dice of the "
                                   "masks within 0.001); sizes and latencies go to OUT/export.json.")
    x.add_argument("--model", required=True, help="a .keras model from `add-crf`")
    x.add_argument("--out", required=True, type=out_dir, help="output folder")
    x.add_argument("--data", help="images/ + masks/ folder to check on (default: synthetic test images)")
    x.add_argument("--n-check", type=positive_int, default=8, help="images to check on (default 8)")
    x.add_argument("--seed", type=int, default=0, help="seed of the synthetic check images")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    commands = {"train": cmd_train, "add-crf": cmd_add_crf, "evaluate": cmd_evaluate, "demo": cmd_demo,
                "export": cmd_export, "crossval": cmd_crossval}
    if args.command != "export" and (args.deterministic or args.threads):
        from . import pipeline

        pipeline.set_deterministic(args.deterministic, threads=args.threads)
    if hasattr(args, "init"):  # the commands that train a U-Net
        _resolve_unet_defaults(args)
    with without_autotune():  # Keras's array pipelines: autotuned, fit stalled for up to 17 s at its end
        commands[args.command](args)
    return 0
