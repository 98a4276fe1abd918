"""The pipeline's data loader: masks read by value, images by bit depth, and every bad folder or manifest a clear
error naming the files (nothing silently wrong), in small folders written by the tests."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from unet import data

tifffile = pytest.importorskip("tifffile")


def write_pair(root, stem, image, mask, image_ext=".png", mask_ext=".png"):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    ipath = os.path.join(root, "images", stem + image_ext)
    if image_ext in (".tif", ".tiff"):
        tifffile.imwrite(ipath, image)
    else:
        Image.fromarray(image).save(ipath)
    mpath = os.path.join(root, "masks", stem + mask_ext)
    if mask_ext in (".tif", ".tiff"):
        tifffile.imwrite(mpath, mask)
    else:
        Image.fromarray(mask).save(mpath)
    return ipath, mpath


def square_mask(h=20, w=24):
    m = np.zeros((h, w), np.uint8)
    m[4:14, 6:18] = 1
    return m


@pytest.mark.parametrize("value", [1, 2, 3, 127, 200, 255])
def test_masks_read_by_value(tmp_path, value):
    m = square_mask()
    write_pair(str(tmp_path), "a", np.zeros((20, 24, 3), np.uint8), m * value)
    ds = data.load_folder(str(tmp_path), size=None)
    np.testing.assert_array_equal(ds.masks[0], m)


def test_palette_mask_read_by_index(tmp_path):
    m = square_mask()
    root = str(tmp_path)
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(os.path.join(root, "images", "a.png"))
    pal = Image.new("P", (24, 20))
    pal.putdata(m.ravel().tolist())
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)  # index 1 drawn red
    pal.save(os.path.join(root, "masks", "a.png"))
    assert Image.open(os.path.join(root, "masks", "a.png")).mode == "P"
    np.testing.assert_array_equal(data.load_folder(root, size=None).masks[0], m)


def test_mask_with_more_than_two_values_names_the_file(tmp_path):
    m = square_mask()
    m[0, 0] = 2
    _, mpath = write_pair(str(tmp_path), "a", np.zeros((20, 24, 3), np.uint8), m * 100)
    with pytest.raises(ValueError, match=rf"{mpath}.*3 values \(0, 100, 200\)"):
        data.load_folder(str(tmp_path))


def test_jpeg_mask_is_refused_with_a_hint(tmp_path):
    m = square_mask() * 255
    m[::3, ::5] = 128  # compression-like noise, as lossy masks carry
    write_pair(str(tmp_path), "a", np.zeros((20, 24, 3), np.uint8), m, mask_ext=".jpg")
    with pytest.raises(ValueError, match="save masks as PNG"):
        data.load_folder(str(tmp_path))


def test_sixteen_bit_images_scaled_by_their_depth(tmp_path):
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65536, size=(20, 24), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, size=(20, 24, 3), dtype=np.uint16)
    write_pair(str(tmp_path), "a", grey16, square_mask())  # PNG, PIL mode I;16
    write_pair(str(tmp_path), "b", rgb16, square_mask(), image_ext=".tif")
    ds = data.load_folder(str(tmp_path), size=None)
    np.testing.assert_allclose(ds.images[0][..., 0], grey16 / 65535.0, atol=1e-6)
    np.testing.assert_allclose(ds.images[1], rgb16 / 65535.0, atol=1e-6)
    assert np.mean(ds.images == 1.0) < 0.01  # nothing saturates


@pytest.mark.parametrize("mask_shape, hint", [((20, 25), ""), ((24, 20), "transposed")])
def test_mask_of_another_size_names_both_files(tmp_path, mask_shape, hint):
    ipath, mpath = write_pair(str(tmp_path), "a", np.zeros((20, 24, 3), np.uint8), np.zeros(mask_shape, np.uint8))
    with pytest.raises(ValueError, match=rf"{mpath}.*{ipath}.*{hint}"):
        data.load_folder(str(tmp_path))


def test_duplicate_stems_are_refused(tmp_path):
    write_pair(str(tmp_path), "a", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "a.jpg")
    with pytest.raises(ValueError, match="share the stem 'a'"):
        data.load_folder(str(tmp_path))


def test_truncated_image_names_its_file(tmp_path):
    ipath, _ = write_pair(str(tmp_path), "a", np.full((40, 40, 3), 100, np.uint8), np.zeros((40, 40), np.uint8),
                          image_ext=".jpg")
    with open(ipath, "rb") as f:
        head = f.read()[:200]
    with open(ipath, "wb") as f:
        f.write(head)
    with pytest.raises(ValueError, match=f"cannot read image {ipath!r}"):
        data.load_folder(str(tmp_path))


def folder(tmp_path, n=6):
    for i in range(n):
        write_pair(str(tmp_path), f"im{i}", np.full((8, 8, 3), 10 * i, np.uint8), np.zeros((8, 8), np.uint8))
    return data.load_folder(str(tmp_path), size=16)


def manifest(tmp_path, text):
    with open(tmp_path / "manifest.csv", "w") as f:
        f.write(text)


def test_manifest_split_names_and_columns(tmp_path):
    ds = folder(tmp_path)
    manifest(tmp_path, " Filename , Split \n" + "".join(f"im{i}.png,{s}\n" for i, s in
                                                          enumerate(["train", "Train", "val", "VALID", "test",
                                                                     "validation"])))
    parts = data.split(ds, str(tmp_path))
    assert parts["train"].names == ["im0", "im1"] and parts["dev"].names == ["im2", "im3", "im5"]
    assert parts["test"].names == ["im4"]


def test_manifest_without_test_rows_tests_on_dev(tmp_path):
    ds = folder(tmp_path)
    manifest(tmp_path, "id,split\n" + "".join(f"im{i},{'train' if i < 4 else 'val'}\n" for i in range(6)))
    with pytest.warns(UserWarning, match="no test rows"):
        parts = data.split(ds, str(tmp_path))
    assert parts["test"].names == parts["dev"].names == ["im4", "im5"]


def test_manifest_errors_and_warnings_name_rows(tmp_path):
    ds = folder(tmp_path)
    manifest(tmp_path, "id,split\nim0,train\nim1,holdout\nim2,extra\n")
    with pytest.raises(ValueError, match=r"unknown split name\(s\) \['extra', 'holdout'\].*lines \[3, 4\]"):
        data.split(ds, str(tmp_path))
    manifest(tmp_path, "id,split\nim0,train\nim9,test\n")
    with pytest.raises(ValueError, match="line 3: 'im9'"):
        data.split(ds, str(tmp_path))
    manifest(tmp_path, "id,split\nim0,train\nim1,test\n")
    with pytest.warns(UserWarning, match=r"does not list 4 image\(s\), left out: \['im2'"):
        data.split(ds, str(tmp_path))
    manifest(tmp_path, "id,split\nim0,test\nim1,test\n")
    with pytest.raises(ValueError, match="no train rows"), pytest.warns(UserWarning):
        data.split(ds, str(tmp_path))
    manifest(tmp_path, "id,split\nim0,train\nim0,test\n")
    with pytest.raises(ValueError, match="listed twice"):
        data.split(ds, str(tmp_path))


@settings(max_examples=30)
@given(
    encoding=st.sampled_from(["L", "P", "I;16", "RGB", "tif8", "tif16"]),
    value=st.integers(1, 255),
    depth=st.sampled_from([8, 16]),
    channels=st.sampled_from([1, 3, 4]),
    seed=st.integers(0, 2**16),
)
def test_loader_property(tmp_path_factory, encoding, value, depth, channels, seed):
    rng = np.random.default_rng(seed)
    root = str(tmp_path_factory.mktemp("prop"))
    h, w = 12, 15
    truth = rng.uniform(size=(h, w)) < 0.4
    truth[0, 0], truth[1, 1] = True, False  # both values present
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    mpath = os.path.join(root, "masks", "x" + (".tif" if encoding.startswith("tif") else ".png"))
    if encoding == "L":
        Image.fromarray((truth * value).astype(np.uint8)).save(mpath)
    elif encoding == "P":
        im = Image.new("P", (w, h))
        im.putdata((truth * (value % 7 + 1)).astype(np.uint8).ravel().tolist())
        im.putpalette(list(rng.integers(0, 256, 768)))
        im.save(mpath)
    elif encoding == "I;16":
        Image.fromarray((truth * value * 257).astype(np.uint16)).save(mpath)
    elif encoding == "RGB":
        colour = rng.integers(1, 256, 3).astype(np.uint8)
        Image.fromarray((truth[..., None] * colour).astype(np.uint8)).save(mpath)
    else:
        tifffile.imwrite(mpath, (truth * value * (257 if encoding == "tif16" else 1)).astype(
            np.uint16 if encoding == "tif16" else np.uint8))
    dtype = np.uint8 if depth == 8 else np.uint16
    top = 255 if depth == 8 else 65535
    pixels = rng.integers(0, top + 1, size=(h, w, channels), dtype=np.int64).astype(dtype)
    ipath = os.path.join(root, "images", "x.tif")
    tifffile.imwrite(ipath, pixels[..., 0] if channels == 1 else pixels)
    ds = data.load_folder(root, size=None)
    np.testing.assert_array_equal(ds.masks[0], truth.astype(np.uint8))
    expected = pixels[..., :3] / top if channels > 1 else np.repeat(pixels / top, 3, -1)
    np.testing.assert_allclose(ds.images[0], expected, atol=1e-6)
