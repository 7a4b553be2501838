"""The Python inference API: `Segmenter` gives the pixels `udaseg predict` writes, on numpy arrays,
PIL images, tensors and paths of any size, batched; density only where the checkpoint trained it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from test_predict import INPUT, OVERRIDES, make_checkpoint, png
from udaseg.checkpoint import checkpoint_dict, load_model, save_checkpoint
from udaseg.cli import app
from udaseg.config import load_config
from udaseg.data.depth import invdepth_to_metres
from udaseg.data.pngio import write_png
from udaseg.data.protocols import get_protocol
from udaseg.data.transforms import resize_image
from udaseg.errors import UdasegError
from udaseg.model import model_from_config, upsample
from udaseg.segmenter import Prediction, Segmenter

runner = CliRunner()
SIZES = {"a.png": (70, 40), "b.png": (33, 25), "c.png": INPUT, "d.png": (64, 96), "e.png": (21, 50)}  # (w, h)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("segmenter_ckpt")
    make_checkpoint(root / "checkpoint_final.pt")
    return root / "checkpoint_final.pt"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("segmenter_in")
    for name, (w, h) in SIZES.items():
        write_png(root / name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return root


def arrays(folder) -> list[np.ndarray]:
    """The images as a user holds them: numpy HxWx3 uint8, decoded by PIL (not udaseg's reader)."""
    return [np.asarray(Image.open(folder / name).convert("RGB")) for name in sorted(SIZES)]


def test_the_api_gives_predicts_files_pixel_for_pixel(ckpt, folder, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(folder), "--checkpoint", str(ckpt), "--out", str(out), "--depth",
                                 "--confidence", "--labelids", "--batch-size", "2", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    preds = seg(arrays(folder), batch_size=2)  # predict's order and batches: a/b, c/d, e
    assert len(preds) == len(SIZES) and all(isinstance(p, Prediction) for p in preds)
    for name, pred in zip(sorted(SIZES), preds):
        key = name[:-4]
        w, h = SIZES[name]
        assert pred.labels.shape == pred.confidence.shape == pred.depth.shape == (h, w)
        np.testing.assert_array_equal(pred.labels, png(out / "labels" / f"{key}.png"))
        np.testing.assert_array_equal(seg.palette[pred.labels], png(out / "color" / f"{key}.png"))
        np.testing.assert_array_equal(np.round(pred.confidence * 65535), png(out / "confidence" / f"{key}.png"))
        np.testing.assert_array_equal(np.clip(np.round(pred.depth * 100), 0, 65535), png(out / "depth" / f"{key}.png"))
        from udaseg.inference import labelid_table

        np.testing.assert_array_equal(labelid_table(seg.protocol)[pred.labels], png(out / "labelids" / f"{key}.png"))


def test_numpy_pil_tensor_and_path_inputs_agree_and_any_batch_works(ckpt, folder):
    seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    images = arrays(folder)
    by_numpy = seg(images, batch_size=5)  # five sizes in one forward pass
    by_pil = seg([Image.fromarray(a) for a in images], batch_size=5)
    by_tensor = seg([torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in images], batch_size=5)
    by_path = seg([folder / name for name in sorted(SIZES)], batch_size=5)
    for n, p, t, f in zip(by_numpy, by_pil, by_tensor, by_path):
        for other in (p, t, f):
            np.testing.assert_array_equal(n.labels, other.labels)
            np.testing.assert_array_equal(n.depth, other.depth)
    # one at a time (batch of 1, a single image in -> a single Prediction out) = batched, ties aside
    for image, batched in zip(images, by_numpy):
        single = seg(image)
        assert isinstance(single, Prediction)
        assert (single.labels == batched.labels).mean() > 0.999
        np.testing.assert_allclose(single.confidence, batched.confidence, atol=1e-5)
    stacked = seg(torch.stack([by_tensor_input(images[2]), by_tensor_input(images[2])]))  # [B, 3, H, W]: a batch
    assert len(stacked) == 2 and all((p.labels == by_numpy[2].labels).mean() > 0.999 for p in stacked)
    grey = seg(images[0][:, :, 0])  # HxW grey: the channel repeated
    np.testing.assert_array_equal(grey.labels, seg(np.repeat(images[0][:, :, :1], 3, axis=2)).labels)


def by_tensor_input(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).contiguous()


def test_values_match_the_network_run_directly(ckpt, folder):
    """An independent reference: resize to the input size, forward, upsample each map to the image."""
    cfg = load_config(None, OVERRIDES)
    model, _ = load_model(ckpt, cfg, torch.device("cpu"))
    seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    for image, pred in zip(arrays(folder), seg(arrays(folder), batch_size=3)):
        x = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        with torch.no_grad():
            out = model(resize_image(x, INPUT)[None], heads=("seg", "depth", "density"))
        hw = image.shape[:2]
        conf, labels = torch.softmax(upsample(out.seg, hw), 1).max(1)
        assert (pred.labels == labels[0].numpy()).mean() > 0.999
        np.testing.assert_allclose(pred.confidence, conf[0].numpy(), atol=1e-5)
        inv = upsample(out.depth, hw)
        np.testing.assert_allclose(pred.inverse_depth, inv[0, 0].numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(pred.depth, invdepth_to_metres(inv)[0, 0].numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(pred.density, upsample(out.density, hw)[0, 0].numpy(), rtol=1e-4, atol=1e-4)


def _checkpoint(path, stage: str, ablation: str):
    cfg = load_config(None, {**OVERRIDES, "train.ablation": ablation})
    torch.manual_seed(0)
    model = model_from_config(cfg.model, get_protocol("synthia2cityscapes16").num_classes).eval()
    save_checkpoint(path, checkpoint_dict(cfg, stage, 1, model))
    return path


@pytest.mark.parametrize("stage,ablation,has", [("train", "m2", True), ("stage1", "m2", True), ("stage1", "m1", False),
                                                ("stage1", "advent_entropy", False), ("self_train", "m2", False),
                                                ("imported", "m2", True)])
def test_density_only_where_the_checkpoint_trained_it(stage, ablation, has, tmp_path):
    seg = Segmenter.from_checkpoint(_checkpoint(tmp_path / "c.pt", stage, ablation), device="cpu")
    image = np.zeros((20, 30, 3), np.uint8)
    pred = seg(image)
    assert seg.has_density is has
    assert (pred.density is not None) is has
    if has:
        assert pred.density.shape == (20, 30) and pred.density.dtype == np.float32
    assert seg(image, depth=False, density=False).depth is None
    assert seg(image, density=False).density is None


def test_bad_inputs_are_one_line_errors_naming_the_image(ckpt, tmp_path):
    seg = Segmenter.from_checkpoint(ckpt, device="cpu")
    good = np.zeros((8, 8, 3), np.uint8)
    cases = [([good, good.astype(np.float32)], "image 1: an array must be uint8"),
             ([good, np.zeros((8, 8, 2), np.uint8)], "image 1: an array must be HxWx3"),
             (torch.zeros(3, 8, 8), "image: a tensor must be RGB uint8 [3, H, W]"),
             ([torch.zeros(8, 8, 3, dtype=torch.uint8)], "image 0: a tensor must be RGB uint8"),
             ([good, "x"], "x: file not found")]
    for images, message in cases:
        with pytest.raises(UdasegError) as err:
            seg(images)
        assert message in str(err.value) and "\n" not in str(err.value), str(err.value)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(UdasegError, match=f"{bad}: cannot decode image .*re-download"):
        seg([good, bad])
    with pytest.raises(UdasegError, match="image 0: expected a numpy array"):
        seg([3])


def test_a_missing_gpu_is_a_one_line_error(ckpt, folder, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(UdasegError, match="--device cuda: no CUDA GPU is available here .*; run with --device cpu"):
        Segmenter.from_checkpoint(ckpt, device="cuda")
    result = runner.invoke(app, ["predict", str(folder / "a.png"), "--checkpoint", str(ckpt), "--out",
                                 str(tmp_path / "o"), "--device", "cuda:0"])
    assert result.exit_code == 1 and "--device cuda:0: no CUDA GPU is available here" in result.output
    assert not (tmp_path / "o").exists()


def test_the_readme_snippet_runs_as_written(ckpt, folder, tmp_path, monkeypatch):
    """The README's Python API block, with only its checkpoint path replaced, in a folder holding
    the two images it names."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### Python API: `Segmenter`"):]
    code = section[section.index("```python\n") + len("```python\n"):section.index("\n```\n")]
    assert "runs/demo/self_train/checkpoint_final.pt" in code
    Image.fromarray(arrays(folder)[0]).save(tmp_path / "photo.jpg", quality=95)
    Image.fromarray(arrays(folder)[3]).save(tmp_path / "street.png")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(code.replace("runs/demo/self_train/checkpoint_final.pt", str(ckpt)), scope)
    h, w = arrays(folder)[0].shape[:2]
    assert scope["pred"].labels.shape == (h, w) and len(scope["preds"]) == 2
    assert scope["colour"].shape == (*arrays(folder)[3].shape[:2], 3)
    np.testing.assert_array_equal(scope["preds"][0].labels, scope["pred"].labels)
