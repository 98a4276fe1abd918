"""crfcore.refine_files / python -m crfcore refine, end to end on small folders written by the tests."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
tifffile = pytest.importorskip("tifffile")

from PIL import Image  # noqa: E402

import crfcore  # noqa: E402
from crfcore.refine import tiling  # noqa: E402
from crfcore.cli import main  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KW = dict(theta_alpha=20.0, theta_beta=13.0)  # kernels that fit the small test images


def scene(rng, h=48, w=64, n_lab=3):
    """An image of coloured rectangles and noisy probabilities that roughly find them."""
    labels = np.zeros((h, w), np.int64)
    for k in range(1, n_lab):
        y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
        labels[y:y + h // 2, x:x + w // 2] = k
    colours = rng.integers(0, 256, size=(n_lab, 3))
    image = np.clip(colours[labels] + rng.normal(0, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)
    logits = np.eye(n_lab)[labels] * 2.0 + rng.normal(0, 1.2, size=(h, w, n_lab))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return image, probs.astype(np.float32), labels


def scene_folders(rng, tmp_path, names, **scene_kw):
    """``tmp_path/i`` with a PNG scene and ``tmp_path/s`` with its probabilities (``.npy``) for each name."""
    imgs, scs = tmp_path / "i", tmp_path / "s"
    imgs.mkdir()
    scs.mkdir()
    for name in names:
        image, probs, _ = scene(rng, **scene_kw)
        Image.fromarray(image).save(imgs / f"{name}.png")
        np.save(scs / f"{name}.npy", probs)
    return imgs, scs


def expected(image, probs, **kw):
    return crfcore.meanfield(np.log(np.maximum(probs, 1e-8)).astype(np.float32), image, **dict(KW, **kw)).argmax(-1)


def read_labels(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def test_formats_and_results_equal_meanfield(rng, tmp_path):
    imgs, scs, out = tmp_path / "images", tmp_path / "scores", tmp_path / "out"
    imgs.mkdir()
    scs.mkdir()
    cases = {}
    for name, ext in [("png8", ".png"), ("jpeg", ".jpg"), ("tif16", ".tif"), ("grey", ".png"), ("four", ".tif")]:
        image, probs, _ = scene(rng)
        if name == "tif16":
            stored = image.astype(np.uint16) * 257
            tifffile.imwrite(imgs / f"{name}{ext}", stored)
            image = stored
        elif name == "grey":
            image = image[..., :1]
            Image.fromarray(image[..., 0]).save(imgs / f"{name}{ext}")
        elif name == "four":
            image = np.concatenate([image, image[..., :1]], -1)
            tifffile.imwrite(imgs / f"{name}{ext}", image)
        else:
            Image.fromarray(image).save(imgs / f"{name}{ext}")
            if ext == ".jpg":
                image = np.asarray(Image.open(imgs / f"{name}{ext}"))
        cases[name] = (image, probs)
        if name == "png8":
            np.savez(scs / f"{name}.npz", probs=probs)
        else:
            np.save(scs / f"{name}.npy", probs)
    summary = crfcore.refine_files(str(imgs), str(scs), str(out), save_probs=True, progress=False,
                                   **dict(KW, theta_beta=13.0))
    assert summary.done == 5 and not summary.failed
    for name, (image, probs) in cases.items():
        kw = dict(theta_beta=13.0 * 257) if name == "tif16" else {}
        if name == "tif16":
            continue  # checked below with its own units
        mode, labels = read_labels(out / f"{name}.png")
        assert mode == "P"  # the label index as the pixel value, with a palette for viewing
        np.testing.assert_array_equal(labels, expected(image, probs, **kw))
        q = np.load(out / f"{name}.npy")
        assert q.dtype == np.float16 and q.shape == probs.shape
    # 16-bit: theta_beta in its units
    out16 = tmp_path / "out16"
    crfcore.refine_files(str(imgs / "tif16.tif"), str(scs), str(out16), progress=False, theta_alpha=20.0,
                         theta_beta=13.0 * 257)
    image, probs = cases["tif16"]
    np.testing.assert_array_equal(read_labels(out16 / "tif16.png")[1],
                                  expected(image, probs, theta_beta=13.0 * 257))


def test_label_maps_and_logits(rng, tmp_path):
    image, probs, labels = scene(rng)
    (tmp_path / "i").mkdir()
    (tmp_path / "s").mkdir()
    Image.fromarray(image).save(tmp_path / "i" / "a.png")
    anno = (labels + 1).astype(np.uint8)
    anno[::3] = 0  # unknown
    Image.fromarray(anno).save(tmp_path / "s" / "a.png")
    assert main(["refine", str(tmp_path / "i"), "--scores", str(tmp_path / "s"), "--out", str(tmp_path / "o"),
                 "--unknown-label", "0", "--gt-prob", "0.7", "--theta-alpha", "20", "--no-progress"]) == 0
    from crfcore.pydensecrf.utils import unary_from_labels

    u = unary_from_labels(anno, 3, gt_prob=0.7, zero_unsure=True)
    ref = crfcore.meanfield(-u.T.reshape(48, 64, 3), image, theta_alpha=20.0).argmax(-1)
    np.testing.assert_array_equal(read_labels(tmp_path / "o" / "a.png")[1], ref)
    # logits in .npy
    (tmp_path / "l").mkdir()
    np.save(tmp_path / "l" / "a.npy", np.log(probs))
    assert main(["refine", str(tmp_path / "i"), "--scores", str(tmp_path / "l"), "--out", str(tmp_path / "o2"),
                 "--scores-are", "logits", "--theta-alpha", "20", "--no-progress"]) == 0
    np.testing.assert_array_equal(read_labels(tmp_path / "o2" / "a.png")[1], expected(image, probs))


def test_bad_files_reported_and_skipped(rng, tmp_path, capsys):
    imgs, scs = scene_folders(rng, tmp_path, [f"ok{i}" for i in range(3)])
    out = tmp_path / "o"
    image, probs, _ = scene(rng)
    Image.fromarray(image).save(imgs / "size.png")
    np.save(scs / "size.npy", probs[:40])
    Image.fromarray(image).save(imgs / "nan.png")
    bad = probs.copy()
    bad[3, 3, 0] = np.nan
    np.save(scs / "nan.npy", bad)
    Image.fromarray(image).save(imgs / "labels.png")
    np.save(scs / "labels.npy", probs[..., :2])
    (imgs / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    np.save(scs / "corrupt.npy", probs)
    Image.fromarray(image).save(imgs / "orphan.png")
    before = {f: os.path.getmtime(os.path.join(dp, f)) for dp in (imgs, scs) for f in os.listdir(dp)}
    code = main(["refine", str(imgs), "--scores", str(scs), "--out", str(out), "--n-labels", "3", "--no-progress"])
    assert code == 1
    printed = capsys.readouterr().out
    assert "refined 3 image(s)" in printed and "5 failed" in printed
    with open(out / "failures.csv") as f:
        failures = f.read()
    for name, why in [("size.png", "are 64x40 (shape (40, 64, 3), read as (H, W, L)) but image"), ("nan.png", "NaN"),
                      ("labels.png", "expected 3 (from `n_labels` (--n-labels))"),
                      ("corrupt.png", "cannot read image"), ("orphan.png", "no scores")]:
        assert name in failures and why in failures, (name, failures)
    assert sorted(os.listdir(out)) == [".crfcore-refine.jsonl", ".crfcore-refine.lock", "failures.csv", "ok0.png",
                                       "ok1.png", "ok2.png"]
    after = {f: os.path.getmtime(os.path.join(dp, f)) for dp in (imgs, scs) for f in os.listdir(dp)}
    assert before == after  # inputs untouched


def test_resumable_after_a_kill(rng, tmp_path):
    imgs, scs = scene_folders(rng, tmp_path, [f"{i:02d}" for i in range(30)], h=160, w=200, n_lab=2)
    out = tmp_path / "o"
    argv = [sys.executable, "-m", "crfcore", "refine", str(imgs), "--scores", str(scs), "--out", str(out),
            "--save-probs", "--no-progress", "--n-iter", "10"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    deadline = time.time() + 120
    while time.time() < deadline and len([f for f in os.listdir(out) if f.endswith(".png")] if out.exists()
                                          else []) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.wait()
    done = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    assert 3 <= len(done) < 30
    stamps = {f: os.path.getmtime(out / f) for f in os.listdir(out) if not f.startswith(".")}
    summary = crfcore.refine_files(str(imgs), str(scs), str(out), save_probs=True, progress=False, n_iter=10)
    assert summary.skipped >= len(done) - 1 and summary.done + summary.skipped == 30 and not summary.failed
    # finished outputs were not written again; the file the kill interrupted (the newest .png: it may lack its .npy,
    # or its line in the run's record) is redone
    newest = max(done, key=lambda f: stamps[f])
    for f in done:
        if f != newest and f.replace(".png", ".npy") in stamps:
            assert os.path.getmtime(out / f) == stamps[f], f
    assert not [f for f in os.listdir(out) if "partial" in f]  # the killed write's hidden temp was removed
    for f in sorted(os.listdir(imgs)):
        stem = f[:-4]
        image = np.asarray(Image.open(imgs / f))
        probs = np.load(scs / f"{stem}.npy")
        np.testing.assert_array_equal(read_labels(out / f"{stem}.png")[1],
                                      crfcore.meanfield(np.log(np.maximum(probs, 1e-8)), image, n_iter=10).argmax(-1))


def test_tiling(rng):
    image, probs, _ = scene(rng, 160, 200, 3)
    logits = np.log(probs)
    whole = crfcore.meanfield(logits, image, **KW).argmax(-1)
    np.testing.assert_array_equal(tiling.refine_tiled(logits, image, tile=None, **KW), whole)
    np.testing.assert_array_equal(tiling.refine_tiled(logits, image, tile=400, overlap=10, **KW), whole)
    small = tiling.refine_tiled(logits, image, tile=48, overlap=40, **KW)
    assert np.mean(small == whole) >= 0.99
    tiles = list(tiling.tiles(160, 200, 48, 40))
    covered = np.zeros((160, 200), int)
    for (iy, ix), _ in tiles:
        covered[iy[0]:iy[1], ix[0]:ix[1]] += 1
    assert (covered == 1).all()  # the interiors tile the image exactly once


def test_dask_local_cluster_writes_the_same_files(rng, tmp_path):
    pytest.importorskip("distributed")
    imgs, scs = scene_folders(rng, tmp_path, [str(i) for i in range(6)])
    (imgs / "bad.png").write_bytes(b"nope")
    np.save(scs / "bad.npy", scene(rng)[1])
    single = crfcore.refine_files(str(imgs), str(scs), str(tmp_path / "one"), save_probs=True, progress=False, **KW)
    spread = crfcore.refine_files(str(imgs), str(scs), str(tmp_path / "two"), save_probs=True, progress=False,
                                  dask="local:2", **KW)
    assert single.done == spread.done == 6 and len(single.failed) == len(spread.failed) == 1
    for f in sorted(os.listdir(tmp_path / "one")):
        if f.startswith("."):  # the manifest: the same records, in the order the files finished
            continue
        a, b = (tmp_path / "one" / f).read_bytes(), (tmp_path / "two" / f).read_bytes()
        assert a == b, f
    assert sorted((tmp_path / "one" / ".crfcore-refine.jsonl").read_text().splitlines()) == \
        sorted((tmp_path / "two" / ".crfcore-refine.jsonl").read_text().splitlines())


@pytest.mark.parametrize("argv, match", [
    (["refine", "x", "--scores", "y", "--out", "o", "--gt-prob", "1.5"], "--gt-prob: must be in"),
    (["refine", "x", "--scores", "y", "--out", "o", "--tile", "0"], "--tile: must be >= 1"),
    (["refine", "x", "--scores", "y", "--out", "o", "--max-memory", "lots"], "--max-memory: expected a size"),
    (["refine", "x", "--scores", "y", "--out", "o", "--theta-alpha", "-1"], "--theta-alpha: must be a finite"),
    (["refine", "x", "--scores", "y", "--out", "o", "--normalization", "sym"], "--normalization: invalid choice"),
])
def test_cli_argument_errors(argv, match, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert match in capsys.readouterr().err


def test_missing_inputs_are_errors(tmp_path, capsys):
    assert main(["refine", str(tmp_path / "nothing"), "--scores", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    assert "no such folder" in capsys.readouterr().err


def _checksums(*folders):
    import hashlib

    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for f in folders for p in sorted(f.iterdir())}


@pytest.mark.parametrize("case", ["out is the scores folder, --save-probs", "out is the images folder",
                                  "out is the images folder, --overwrite", "out is the scores folder, glob"])
def test_inputs_are_never_modified(rng, tmp_path, case):
    """An output folder that holds input files is refused before any work, and every input keeps its bytes."""
    imgs, scs = scene_folders(rng, tmp_path, ["a0", "a1"])
    before = _checksums(imgs, scs)
    argv = {"out is the scores folder, --save-probs": [str(imgs), "--scores", str(scs), "--out", str(scs),
                                                       "--save-probs"],
            "out is the images folder": [str(imgs), "--scores", str(scs), "--out", str(imgs)],
            "out is the images folder, --overwrite": [str(imgs), "--scores", str(scs), "--out", str(imgs),
                                                      "--overwrite"],
            "out is the scores folder, glob": [str(imgs / "*.png"), "--scores", str(scs / "*.npy"), "--out",
                                               str(scs) + "/"]}[case]
    assert main(["refine", *argv, "--no-progress"]) == 2
    assert _checksums(imgs, scs) == before
    assert sorted(os.listdir(scs)) == ["a0.npy", "a1.npy"] and sorted(os.listdir(imgs)) == ["a0.png", "a1.png"]


def test_resume_redoes_what_it_cannot_trust(rng, tmp_path, capsys):
    imgs, scs = scene_folders(rng, tmp_path, ["a0", "a1"])
    out = tmp_path / "out"
    first = crfcore.refine_files(str(imgs), str(scs), str(out), progress=False, **KW)
    assert first.done == 2
    again = crfcore.refine_files(str(imgs), str(scs), str(out), progress=False, **KW)
    assert again.done == 0 and again.skipped == 2  # same inputs, same options: done
    (out / "a0.png").write_bytes(b"")  # a zero-byte output is not done
    redo = crfcore.refine_files(str(imgs), str(scs), str(out), progress=False, **KW)
    assert redo.done == 1 and redo.skipped == 1
    assert read_labels(out / "a0.png")[1].shape == (48, 64)
    other = crfcore.refine_files(str(imgs), str(scs), str(out), progress=False, **dict(KW, theta_alpha=30.0))
    assert other.done == 2  # other parameters: every file again
    _, probs, _ = scene(rng)
    np.save(scs / "a1.npy", probs)  # an input changed
    changed = crfcore.refine_files(str(imgs), str(scs), str(out), progress=False, **dict(KW, theta_alpha=30.0))
    assert changed.done == 1 and changed.skipped == 1


def test_label_maps_take_one_label_count_over_the_run(rng, tmp_path):
    """A label map without the top class is refined with the run's L, not its own (its probabilities have the
    same shape as the others')."""
    (tmp_path / "i").mkdir()
    (tmp_path / "s").mkdir()
    for name, top in (("full", 2), ("part", 1)):
        image, _, labels = scene(rng, n_lab=3)
        Image.fromarray(image).save(tmp_path / "i" / f"{name}.png")
        Image.fromarray(np.minimum(labels, top).astype(np.uint8)).save(tmp_path / "s" / f"{name}.png")
    out, fixed = tmp_path / "out", tmp_path / "fixed"
    crfcore.refine_files(str(tmp_path / "i"), str(tmp_path / "s"), str(out), save_probs=True, progress=False, **KW)
    crfcore.refine_files(str(tmp_path / "i"), str(tmp_path / "s"), str(fixed), save_probs=True, n_labels=3,
                         progress=False, **KW)
    for name in ("full", "part"):
        assert np.load(out / f"{name}.npy").shape[-1] == 3
        np.testing.assert_array_equal(np.load(out / f"{name}.npy"), np.load(fixed / f"{name}.npy"))


def test_unclear_scores_are_refused(rng, tmp_path):
    imgs, scs = scene_folders(rng, tmp_path, ["a0"])
    with pytest.raises(ValueError, match="label maps only"):
        crfcore.refine_files(str(imgs), str(scs), str(tmp_path / "o1"), unknown_label=0, progress=False)
    _, probs, _ = scene(rng)
    os.remove(scs / "a0.npy")
    np.savez(scs / "a0.npz", probs=probs, other=probs)
    summary = crfcore.refine_files(str(imgs), str(scs), str(tmp_path / "o2"), progress=False)
    assert summary.failed and "several arrays" in summary.failed[0][1]
    os.remove(scs / "a0.npz")
    np.save(scs / "a0.npy", np.moveaxis(probs, -1, 0))
    summary = crfcore.refine_files(str(imgs), str(scs), str(tmp_path / "o3"), progress=False)
    assert summary.failed and "channels first (L, H, W)" in summary.failed[0][1]


@pytest.mark.parametrize("address, message", [("local:abc", "local:N needs"), ("local:0", "local:N needs"),
                                              ("nonsense", "scheduler address")])
def test_bad_dask_addresses_are_refused_by_the_parser(rng, tmp_path, capsys, address, message):
    imgs, scs = scene_folders(rng, tmp_path, ["a0"])
    with pytest.raises(SystemExit) as exit_:
        main(["refine", str(imgs), "--scores", str(scs), "--out", str(tmp_path / "o"), "--dask", address])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_unreachable_dask_scheduler_is_a_message(rng, tmp_path, capsys):
    pytest.importorskip("dask.distributed")
    imgs, scs = scene_folders(rng, tmp_path, ["a0"])
    assert main(["refine", str(imgs), "--scores", str(scs), "--out", str(tmp_path / "o"), "--no-progress",
                 "--dask", "tcp://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Dask scheduler") and "Traceback" not in err


def test_ctrl_c_is_a_message_not_a_traceback(rng, tmp_path):
    imgs, scs = scene_folders(rng, tmp_path, [f"{i:02d}" for i in range(30)], h=160, w=200, n_lab=2)
    out = tmp_path / "o"
    argv = [sys.executable, "-m", "crfcore", "refine", str(imgs), "--scores", str(scs), "--out", str(out),
            "--no-progress", "--n-iter", "10"]
    proc = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len([f for f in os.listdir(out) if f.endswith(".png")] if out.exists()
                                          else []) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err, err


def test_alpha_is_not_a_colour(rng, tmp_path):
    from crfcore.refine import imageio

    image = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    rgba = np.concatenate([image, np.full((20, 30, 1), 255, np.uint8)], -1)
    tifffile.imwrite(tmp_path / "a.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "data.tif", rgba, photometric="rgb", extrasamples=["unspecified"])
    np.testing.assert_array_equal(imageio.read_image(str(tmp_path / "a.tif")), image)
    np.testing.assert_array_equal(imageio.read_image(str(tmp_path / "a.png")), image)
    assert imageio.read_image(str(tmp_path / "data.tif")).shape == (20, 30, 4)  # a fourth data channel stays


def test_small_images_go_to_meanfield_in_batches_with_the_results_of_one_at_a_time(rng, tmp_path, monkeypatch):
    """A folder of small images of two shapes with a bad file among them: the images of one shape go to meanfield
    as batches (side by side on the cores), each output (labels and probabilities) equals that image refined alone,
    the bad file is reported alone, and an image too large to read ahead (here: anything over 1 kB) is read when its
    turn comes, with the same result."""
    from crfcore.refine import job as refine_job

    imgs, scs = scene_folders(rng, tmp_path, [f"a{i}" for i in range(5)])
    for i in range(3):
        image, probs, _ = scene(rng, h=40, w=30)
        Image.fromarray(image).save(imgs / f"b{i}.png")
        np.save(scs / f"b{i}.npy", probs)
    image, probs, _ = scene(rng)
    probs[5, 5, 1] = np.nan
    Image.fromarray(image).save(imgs / "a2x.png")
    np.save(scs / "a2x.npy", probs)
    batches = []
    real = refine_job.meanfield
    monkeypatch.setattr(refine_job, "meanfield", lambda lg, im, **kw: batches.append(lg.shape) or real(lg, im, **kw))
    for ahead_bytes, out in ((refine_job.AHEAD_BYTES, tmp_path / "o1"), (1000, tmp_path / "o2")):
        monkeypatch.setattr(refine_job, "AHEAD_BYTES", ahead_bytes)
        batches.clear()
        summary = crfcore.refine_files(str(imgs), str(scs), str(out), save_probs=True, progress=False, **KW)
        assert summary.done == 8 and [f for f, _ in summary.failed] == [str(imgs / "a2x.png")]
        assert all(len(shape) == 4 and shape[0] >= 2 for shape in batches), batches  # only batches reach here
        assert sum(shape[0] for shape in batches) >= 6, batches  # most images went in batches
        for name in [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(3)]:
            image = np.asarray(Image.open(imgs / f"{name}.png"))
            probs = np.load(scs / f"{name}.npy")
            q = crfcore.meanfield(np.log(np.maximum(probs, 1e-8)).astype(np.float32), image, **KW)
            np.testing.assert_array_equal(read_labels(out / f"{name}.png")[1], q.argmax(-1))
            np.testing.assert_array_equal(np.load(out / f"{name}.npy"), q.astype(np.float16))


def test_a_full_disk_in_a_batch_keeps_what_was_written(rng, tmp_path, monkeypatch):
    """A write that fails (a full disk) in the middle of a batch stops the run; the outputs written before it are
    recorded, so a rerun skips them and does the rest."""
    from crfcore.refine import imageio

    imgs, scs = scene_folders(rng, tmp_path, [f"a{i}" for i in range(4)])
    out = tmp_path / "o"
    real, writes = imageio.write_labels, []

    def write_labels(path, labels, n_labels):
        if len(writes) == 2:
            raise imageio.WriteError(28, f"No space left on device: {path}")
        writes.append(path)
        return real(path, labels, n_labels)

    monkeypatch.setattr(imageio, "write_labels", write_labels)
    with pytest.raises(imageio.WriteError):
        crfcore.refine_files(str(imgs), str(scs), str(out), progress=False, **KW)
    monkeypatch.setattr(imageio, "write_labels", real)
    summary = crfcore.refine_files(str(imgs), str(scs), str(out), progress=False, **KW)
    assert (summary.skipped, summary.done) == (2, 2)
