"""Loaders against files written in the real formats, and the real Cityscapes sample."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from udaseg.testing.fakedata import write_cityscapes, write_synthia
from udaseg.data.cityscapes import CityscapesDataset
from udaseg.data.folder import ImageFolderDataset
from udaseg.data.mapillary import MapillaryDataset
from udaseg.data.pngio import read_png_raw, write_png
from udaseg.data.protocols import PROTOCOLS
from udaseg.data.synthia import SynthiaDataset
from udaseg.data.transforms import resize_image, resize_nearest
from udaseg.errors import DataError

P16, P7, M7 = (PROTOCOLS[k] for k in ("synthia2cityscapes16", "synthia2cityscapes7", "synthia2mapillary7"))

# Cityscapes trainIds (cityscapesScripts) -> our classes: an independent route to the same labels.
TRAINID_TO_16 = {0: 0, 1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 7, 8: 8, 10: 9, 11: 10, 12: 11, 13: 12,
                 15: 13, 17: 14, 18: 15}
TRAINID_TO_7 = {0: 0, 1: 0, 2: 1, 3: 1, 4: 1, 5: 2, 6: 2, 7: 2, 8: 3, 9: 3, 10: 4, 11: 5, 12: 5,
                13: 6, 14: 6, 15: 6, 16: 6, 17: 6, 18: 6}


# cityscapesScripts labels.py: labelId -> trainId
LABELID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
                      25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def _map(table, array):
    out = np.full(array.shape, 255, np.uint8)
    for k, v in table.items():
        out[array == k] = v
    return out


@pytest.fixture
def real_cityscapes(tmp_path, cityscapes_sample):
    stem = "frankfurt_000000_000294"
    root = tmp_path / "cityscapes"
    (root / "leftImg8bit/val/frankfurt").mkdir(parents=True)
    (root / "gtFine/val/frankfurt").mkdir(parents=True)
    shutil.copy(cityscapes_sample / f"{stem}_leftImg8bit.png", root / "leftImg8bit/val/frankfurt")
    shutil.copy(cityscapes_sample / f"{stem}_gtFine_labelIds.png", root / "gtFine/val/frankfurt")
    train_ids = np.asarray(Image.open(cityscapes_sample / f"{stem}_gtFine_labelTrainIds.png"))
    return root, train_ids


@pytest.mark.parametrize("protocol, table", [(P16, TRAINID_TO_16), (P7, TRAINID_TO_7)], ids=["16", "7"])
def test_real_cityscapes_sample_maps_like_train_ids(real_cityscapes, protocol, table):
    root, train_ids = real_cityscapes
    ds = CityscapesDataset(root, "val", protocol, size=None, load_label=True)
    sample = ds[0]
    assert sample["name"] == "frankfurt_000000_000294"
    assert sample["image"].shape == (3, 128, 256) and sample["image"].dtype == torch.uint8
    label_ids = np.asarray(Image.open(root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"))
    expected = _map(table, _map(LABELID_TO_TRAINID, label_ids))
    np.testing.assert_array_equal(sample["label"].numpy(), expected)
    assert len(np.unique(expected)) >= 8  # the frame really exercises the table
    # the shipped trainIds file was downsampled on its own: it agrees except on a few edge pixels
    assert (sample["label"].numpy() == _map(table, train_ids)).mean() > 0.98


def test_synthia_round_trip_exact(tmp_path):
    truth = write_synthia(tmp_path, n=2, size=(40, 24))
    ds = SynthiaDataset(tmp_path, P16, size=None)
    assert len(ds) == 2
    for sample in (ds[0], ds[1]):
        raw, cm = truth[sample["name"]]
        np.testing.assert_array_equal(sample["label"].numpy(), P16.source_lut[raw])
        np.testing.assert_allclose(sample["depth"].numpy(), 65536.0 / (cm.astype(np.float64) + 1), rtol=1e-6)
        assert sample["depth"].dtype == torch.float32
    # the 16-bit 3-channel label is what is on disk
    raw_file = read_png_raw(tmp_path / "GT/LABELS/0000000.png")
    assert raw_file.dtype == torch.uint16 and raw_file.shape == (3, 24, 40)


def test_synthia_parsed_labels_and_flat_depth(tmp_path):
    truth = write_synthia(tmp_path, n=1, parsed=True, flat_depth=True)
    sample = SynthiaDataset(tmp_path, P7, size=None)[0]
    raw, cm = truth["0000000"]
    np.testing.assert_array_equal(sample["label"].numpy(), P7.source_lut[raw])


def test_synthia_resize_nearest_for_labels_bicubic_for_images(tmp_path):
    truth = write_synthia(tmp_path, n=1, size=(40, 24))
    sample = SynthiaDataset(tmp_path, P16, size=(20, 12))[0]
    raw, cm = truth["0000000"]
    # PIL's NEAREST samples at pixel centres, like ours
    pil = np.asarray(Image.fromarray(P16.source_lut[raw]).resize((20, 12), Image.NEAREST))
    np.testing.assert_array_equal(sample["label"].numpy(), pil)
    assert sample["image"].shape == (3, 12, 20) and sample["depth"].shape == (12, 20)
    pil_cm = np.asarray(Image.fromarray(cm.astype(np.int32)).resize((20, 12), Image.NEAREST))
    np.testing.assert_allclose(sample["depth"].numpy(), 65536.0 / (pil_cm + 1.0), rtol=1e-6)


def test_resize_image_close_to_pil_bicubic():
    rng = np.random.default_rng(0)
    smooth = np.asarray(Image.fromarray(rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)).resize((64, 32), Image.BICUBIC))
    ours = resize_image(torch.from_numpy(smooth.copy()).permute(2, 0, 1).contiguous(), (32, 16)).permute(1, 2, 0).numpy()
    pil = np.asarray(Image.fromarray(smooth).resize((32, 16), Image.BICUBIC))
    assert np.abs(ours.astype(int) - pil.astype(int)).mean() < 3.0


def test_grid_sized_labels_without_images(tmp_path):
    write_synthia(tmp_path, n=1, size=(40, 24))
    sample = SynthiaDataset(tmp_path, P16, size=(10, 6), load_image=False)[0]
    assert "image" not in sample and sample["label"].shape == (6, 10) and sample["depth"].shape == (6, 10)


def test_cityscapes_depth_from_disparity(tmp_path):
    truth = write_cityscapes(tmp_path, "train", n=1)
    sample = CityscapesDataset(tmp_path, "train", P16, size=None, load_label=True, load_depth=True)[0]
    ids, p = next(iter(truth.values()))
    disparity = (p.astype(np.float64) - 1) / 256
    with np.errstate(divide="ignore"):
        metres = np.where(p > 1, 0.209313 * 2262.52 / disparity, 0)
    expected = np.where(metres > 0, 65536 / (metres * 100 + 1), 0)
    np.testing.assert_allclose(sample["depth"].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sample["label"].numpy(), P16.target_lut[ids])


def test_mapillary_palette_letterbox(tmp_path):
    root = tmp_path / "mapillary"
    (root / "validation/images").mkdir(parents=True)
    (root / "validation/labels").mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / "validation/images/a.jpg")
    ids = rng.choice([13, 17, 27, 30, 55, 19, 45, 65], (30, 40)).astype(np.uint8)  # 4:3 image
    label = Image.fromarray(ids, mode="P")
    label.putpalette(list(range(256)) * 3)
    label.save(root / "validation/labels/a.png")
    ds = MapillaryDataset(root, "val", M7, size=(40, 20), fit="letterbox")
    sample = ds[0]
    # 40x30 fits 20 rows -> 27x20 centred with 6 padding columns left, 7 right
    assert sample["image"].shape == (3, 20, 40)
    assert sample["valid"][:, :6].sum() == 0 and sample["valid"][:, 6:33].all() and sample["valid"][:, 33:].sum() == 0
    assert (sample["label"][:, :6] == 255).all() and (sample["label"][:, 33:] == 255).all()
    expected = resize_nearest(torch.from_numpy(M7.target_lut[ids]), (27, 20))
    np.testing.assert_array_equal(sample["label"][:, 6:33].numpy(), expected.numpy())


def test_image_folder(tmp_path):
    write_png(tmp_path / "a" / "x.png", np.zeros((8, 8, 3), np.uint8))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "y.jpg")
    ds = ImageFolderDataset(tmp_path, size=(4, 4))
    assert [s["name"] for s in ds] == ["a__x", "y"] and ds[0]["image"].shape == (3, 4, 4)


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        SynthiaDataset(tmp_path / "nope", P16)
    write_synthia(tmp_path, n=1, size=(40, 24))
    write_png(tmp_path / "Depth/Depth/0000000.png", np.zeros((10, 10, 3), np.uint16))
    with pytest.raises(DataError, match="0000000.png: size 10x10 does not match"):
        SynthiaDataset(tmp_path, P16)[0]
    (tmp_path / "GT/LABELS/0000000.png").unlink()
    with pytest.raises(DataError, match="GT/LABELS"):
        SynthiaDataset(tmp_path, P16)
    other = tmp_path / "parsed"
    write_synthia(other, n=1, size=(8, 8), parsed=True)
    write_png(other / "parsed_LABELS/0000000.png", np.full((8, 8), 300, np.uint16))
    with pytest.raises(DataError, match="out of range"):
        SynthiaDataset(other, P16)[0]
    (other / "RGB/0000000.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot decode"):
        SynthiaDataset(other, P16, load_label=False, load_depth=False)[0]
