"""crfcore refine under hostile use: a full disk, decompression bombs, 16-bit colour PNGs, two runs into one folder,
warnings, tiles smaller than their margin, label counts that disagree. Real files, real kernels."""

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
tifffile = pytest.importorskip("tifffile")

from PIL import Image  # noqa: E402
from test_refine import KW, ROOT, scene, scene_folders  # noqa: E402

import crfcore  # noqa: E402
from crfcore.cli import main  # noqa: E402
from crfcore.refine import imageio  # noqa: E402

#: Pillow's own default, which refine must leave as it is
PILLOW_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)


def png(width, height, depth, colour, raw):
    """A PNG written by hand (Pillow writes neither 16-bit colour nor a header that lies): IHDR, one IDAT of
    ``raw`` (filter bytes included) and IEND."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def png16(array, colour):
    """A 16-bit PNG of ``array`` (H, W, C) uint16: colour type 2 (RGB), 4 (grey + alpha) or 6 (RGBA)."""
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in array)
    return png(array.shape[1], array.shape[0], 16, colour, rows)


def bomb(colour=2):
    """A ~5 KB PNG whose header says 100000 x 100000 pixels (its data stops after a few rows)."""
    bands = {0: 1, 2: 3}[colour]
    return png(100_000, 100_000, 8, colour, bytes((1 + bands * 100_000) * 16))


def failures(out):
    with open(out / "failures.csv") as f:
        return f.read()


def test_a_decompression_bomb_is_a_failure_of_its_file(rng, tmp_path, capsys, monkeypatch):
    imgs, scs = scene_folders(rng, tmp_path, ["a0", "a1", "map"])
    (imgs / "bomb.png").write_bytes(bomb())
    assert (imgs / "bomb.png").stat().st_size < 10_000
    np.save(scs / "bomb.npy", scene(rng)[1])
    os.remove(scs / "map.npy")
    (scs / "map.png").write_bytes(bomb(colour=0))  # a label map that is a bomb: skipped by the pre-pass too
    out = tmp_path / "out"
    code = main(["refine", str(imgs), "--scores", str(scs), "--out", str(out), "--max-memory", "2G",
                 "--theta-alpha", "20", "--no-progress"])
    assert code == 1
    assert "refined 2 image(s)" in capsys.readouterr().out
    text = failures(out)
    assert "bomb.png" in text and "is 100000x100000 pixels: reading it needs about" in text, text
    assert "map.png" in text and "label map" in text, text
    assert sorted(f for f in os.listdir(out) if f.endswith(".png")) == ["a0.png", "a1.png"]
    assert Image.MAX_IMAGE_PIXELS == PILLOW_MAX_PIXELS  # Pillow's process-wide state is untouched
    # and Pillow's own limit is not what bounds refine: its gigapixel images are refused by --max-memory only
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert imageio.read_image(str(imgs / "a0.png")).shape == (48, 64, 3)


def test_16_bit_colour_pngs_are_refused_not_truncated(rng, tmp_path):
    imgs, scs = scene_folders(rng, tmp_path, ["a0"])
    deep = rng.integers(0, 57892, size=(48, 64, 3), dtype=np.uint16)
    deep[0, 0, 0] = 57891
    (imgs / "rgb48.png").write_bytes(png16(deep, 2))
    (imgs / "greyalpha.png").write_bytes(png16(deep[..., :2], 4))
    Image.fromarray(deep[..., 0]).save(imgs / "grey16.png")  # 16-bit grey: read at 16 bits
    for name in ("rgb48", "greyalpha", "grey16"):
        np.save(scs / f"{name}.npy", scene(rng)[1])
    summary = crfcore.refine_files(str(imgs), str(scs), str(tmp_path / "out"), progress=False,
                                   **dict(KW, theta_beta=13.0 * 257))
    assert summary.done == 2, summary.failed
    why = dict(summary.failed)
    assert "is a 16-bit RGB PNG, which Pillow reads as 8 bits" in why[str(imgs / "rgb48.png")], why
    assert "is a 16-bit grey with alpha PNG" in why[str(imgs / "greyalpha.png")], why
    grey = imageio.read_image(str(imgs / "grey16.png"))
    assert grey.dtype.itemsize == 2 and grey.max() == 57891
    with pytest.raises(imageio.UnsupportedImage, match="save it as a 16-bit TIFF"):
        imageio.read_image(str(imgs / "rgb48.png"))


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a disk that really fills up. Mounting needs root (as CI runs); skipped where it cannot."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a small disk is a tmpfs mount here, which needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_stops_with_its_error_and_loses_nothing(rng, tmp_path, small_disk):
    """``--save-probs`` writes through a memory map: on a full disk that was a SIGBUS (exit 135, nothing said, a
    partial file left). Now the run stops with the error, keeps what it finished, and a rerun with room continues."""
    imgs, scs = scene_folders(rng, tmp_path, [f"{i}" for i in range(8)], h=160, w=200)  # 188 KiB of probs each
    out = small_disk / "out"
    argv = [sys.executable, "-m", "crfcore", "refine", str(imgs), "--scores", str(scs), "--out", str(out),
            "--save-probs", "--no-progress", "--theta-alpha", "20"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    full = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 2, (full.returncode, full.stderr[-2000:])
    assert "No space left on device" in full.stderr and "rerun the same command" in full.stderr, full.stderr
    assert "Traceback" not in full.stderr
    assert not [f for f in os.listdir(out) if "partial" in f]
    finished = [f for f in os.listdir(out) if f.endswith(".png")]
    assert 1 <= len(finished) < 8
    subprocess.run(["mount", "-o", "remount,size=8M", str(small_disk)], check=True)
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    skipped = int(again.stdout.split(" already done")[0].rsplit(" ", 1)[1])
    assert skipped >= len(finished) - 1, again.stdout  # the last one may have lost only its record
    for i in range(8):
        probs = np.load(out / f"{i}.npy")
        with Image.open(out / f"{i}.png") as im:
            np.testing.assert_array_equal(np.asarray(im), probs.argmax(-1))


def test_a_second_run_into_the_same_folder_is_refused(rng, tmp_path, capsys):
    imgs, scs = scene_folders(rng, tmp_path, [f"{i:02d}" for i in range(6)])
    out = tmp_path / "out"
    argv = ["refine", str(imgs), "--scores", str(scs), "--out", str(out), "--theta-alpha", "20", "--no-progress"]
    first = subprocess.Popen([sys.executable, "-m", "crfcore", *argv], env=dict(os.environ, PYTHONPATH=ROOT))
    lock = out / ".crfcore-refine.lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().startswith("pid")):
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)  # holds the folder, stopped: the second run meets it for sure
    try:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"`out` {str(out)!r} is being written by another crfcore refine (pid {first.pid} on" in err, err
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=120) == 0
    assert main(argv) == 0  # the lock went with the process: the next run goes ahead
    assert "6 already done" in capsys.readouterr().out


def test_warnings_are_one_line_messages(rng, tmp_path):
    image, probs, _ = scene(rng)
    (tmp_path / "i").mkdir()
    (tmp_path / "s").mkdir()
    tifffile.imwrite(tmp_path / "i" / "a.tif", image.astype(np.uint16) * 257)  # 16-bit, theta_beta for 8-bit
    np.save(tmp_path / "s" / "a.npy", probs)
    proc = subprocess.run([sys.executable, "-m", "crfcore", "refine", str(tmp_path / "i"), "--scores",
                           str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--no-progress"],
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: `image` values reach 65535 (16-bit?)"), proc.stderr


def test_tiles_smaller_than_their_margin_are_refused(rng, tmp_path, capsys):
    imgs, scs = scene_folders(rng, tmp_path, ["a0"])
    assert main(["refine", str(imgs), "--scores", str(scs), "--out", str(tmp_path / "o"), "--tile", "1",
                 "--no-progress"]) == 2
    assert "`tile` (--tile) 1 is smaller than its margin `overlap` (--overlap) 128" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="smaller than its margin"):
        crfcore.refine_files(str(imgs), str(scs), str(tmp_path / "o"), tile=16, overlap=32, progress=False)


def test_a_label_count_mismatch_says_where_the_count_came_from(rng, tmp_path):
    imgs, scs = scene_folders(rng, tmp_path, ["arrays", "map"])  # 3 labels each
    os.remove(scs / "map.npy")
    Image.fromarray(np.full((48, 64), 4, np.uint8)).save(scs / "map.png")  # labels 0..4: L = 5 for the run
    summary = crfcore.refine_files(str(imgs), str(scs), str(tmp_path / "out"), progress=False, **KW)
    assert summary.done == 1 and len(summary.failed) == 1
    assert "have 3 labels, expected 5 (from the run's label maps: the largest label is 4 in map.png)" in \
        summary.failed[0][1], summary.failed
