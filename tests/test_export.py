"""`udaseg export`: TorchScript and ONNX files that reproduce PyTorch on the real Cityscapes sample, with
dynamic batch and size, a complete sidecar, used without udaseg; a mismatch fails loudly and writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import udaseg.pipeline.export as export_mod
from test_predict import INPUT, make_checkpoint
from udaseg.checkpoint import load_model
from udaseg.cli import app
from udaseg.data.pngio import read_rgb
from udaseg.data.protocols import get_protocol
from udaseg.data.transforms import resize_image
from udaseg.inference import InferenceNet
from udaseg.model import upsample

runner = CliRunner()
IMAGE = "frankfurt_000000_000294_leftImg8bit.png"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "checkpoint.pt"
    return path, make_checkpoint(path, "synthia2cityscapes7", seed=2)


def export(ckpt_path, fmt, out, image, *extra):
    return runner.invoke(app, ["export", "--checkpoint", str(ckpt_path), "--format", fmt, "--out", str(out),
                               "--verify-image", str(image), *extra])


def torch_reference(cfg, ckpt_path, x: torch.Tensor):
    """Logits at the input size and depth in metres, from the udaseg network itself."""
    model, _ = load_model(ckpt_path, cfg, torch.device("cpu"))
    with torch.no_grad():
        out = model(x.round().to(torch.uint8), heads=("seg", "depth"))
    hw = tuple(x.shape[-2:])
    inv = upsample(out.depth, hw)
    return upsample(out.seg, hw).numpy(), torch.where(inv > 0, (65536 / inv.clamp_min(1e-6) - 1) / 100, 0).numpy()


def sample_batch(cityscapes_sample, size):
    image = read_rgb(cityscapes_sample / IMAGE)
    x = resize_image(image, size)
    return torch.stack([x, x.flip(1)]).float()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_matches_pytorch_on_the_cityscapes_sample(fmt, ckpt, cityscapes_sample, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnx")
    ckpt_path, cfg = ckpt
    out = tmp_path / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    result = export(ckpt_path, fmt, out, cityscapes_sample / IMAGE, "--depth")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / f"{out.name}.json").read_text())
    proto = get_protocol("synthia2cityscapes7")
    assert meta["classes"] == list(proto.classes) and meta["protocol"] == proto.name
    assert len(meta["palette"]) == 7 and meta["input"]["size"] == list(INPUT)
    assert meta["normalisation"]["applied_inside"] and meta["normalisation"]["channel_order"] == "RGB"
    assert set(meta["outputs"]) == {"logits", "depth"} and meta["model_format"] == fmt
    checks = meta["verification"]["checks"]
    assert [c["input"] for c in checks] == [f"batch 2 at {INPUT[0]}x{INPUT[1]}", "batch 1 at 256x128"]
    assert all(c["ok"] and c["logits"]["relative"] <= 1e-4 and c["argmax_agreement"] >= 0.999 for c in checks)

    # dynamic batch and size, run the way a user would, against the udaseg network
    x = sample_batch(cityscapes_sample, (80, 40))
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        logits, depth = session.run(["logits", "depth"], {"image": x.numpy()})
    else:
        logits, depth = (t.numpy() for t in torch.jit.load(str(out))(x))
    ref_logits, ref_depth = torch_reference(cfg, ckpt_path, x)
    assert logits.shape == (2, 7, 40, 80) and depth.shape == (2, 1, 40, 80)
    assert np.abs(logits - ref_logits).max() <= 1e-4 * np.abs(ref_logits).max()
    inv = lambda m: np.where(m > 0, 65536 / (100 * m + 1), 0)  # noqa: E731
    assert np.abs(inv(depth) - inv(ref_depth)).max() <= 1e-4 * inv(ref_depth).max()


def test_onnx_file_runs_without_udaseg(ckpt, cityscapes_sample, tmp_path):
    """The README's example, in a fresh interpreter that cannot import udaseg."""
    pytest.importorskip("onnxruntime")
    ckpt_path, cfg = ckpt
    out = tmp_path / "model.onnx"
    assert export(ckpt_path, "onnx", out, cityscapes_sample / IMAGE).exit_code == 0
    script = f"""
import sys; sys.modules['udaseg'] = None  # prove it is not needed
import json, numpy as np, onnxruntime as ort
from PIL import Image
meta = json.load(open({str(out) + '.json'!r}))
w, h = meta["input"]["size"]
image = Image.open({str(cityscapes_sample / IMAGE)!r}).convert("RGB")
x = np.asarray(image.resize((w, h), Image.BICUBIC), np.float32).transpose(2, 0, 1)[None]
logits = ort.InferenceSession({str(out)!r}).run(["logits"], {{"image": x}})[0]
labels = logits[0].argmax(0).astype(np.uint8)
palette = np.array(meta["palette"], np.uint8)
Image.fromarray(palette[labels]).resize(image.size, Image.NEAREST).save({str(tmp_path / 'colour.png')!r})
np.save({str(tmp_path / 'labels.npy')!r}, labels)
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    labels = np.load(tmp_path / "labels.npy")
    net = InferenceNet(load_model(ckpt_path, cfg, torch.device("cpu"))[0]).eval()
    from PIL import Image

    image = Image.open(cityscapes_sample / IMAGE).convert("RGB").resize(INPUT, Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, np.float32).transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        expect = net(x)[0].argmax(0).numpy()
    assert labels.shape == (INPUT[1], INPUT[0]) and (labels == expect).mean() > 0.999
    assert (tmp_path / "colour.png").is_file()


def test_a_mismatch_fails_loudly_and_writes_nothing(ckpt, cityscapes_sample, tmp_path, monkeypatch):
    ckpt_path, _ = ckpt
    out = tmp_path / "model.torchscript.pt"
    out.write_bytes(b"an earlier export")
    real = export_mod._Runner.__call__

    def perturbed(self, x):
        outputs = real(self, x)
        outputs[0] = outputs[0] + 1e-2 * np.abs(outputs[0]).max()
        return outputs

    monkeypatch.setattr(export_mod._Runner, "__call__", perturbed)
    result = export(ckpt_path, "torchscript", out, cityscapes_sample / IMAGE)
    assert result.exit_code == 1
    assert "does not match PyTorch" in result.output and "nothing was written" in result.output
    assert out.read_bytes() == b"an earlier export" and not (tmp_path / "model.torchscript.pt.json").exists()
    assert not list(tmp_path.glob(".*tmp"))


def test_export_errors_name_the_fix(ckpt, tmp_path, monkeypatch):
    ckpt_path, _ = ckpt
    result = export(ckpt_path, "tflite", tmp_path / "m", tmp_path / "none.png")
    assert result.exit_code == 1 and "choose one of torchscript, onnx" in result.output
    result = export(ckpt_path, "torchscript", tmp_path / "m.pt", tmp_path / "none.png")
    assert result.exit_code == 1 and "none.png: verification image not found" in result.output
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = export(ckpt_path, "onnx", tmp_path / "m.onnx", tmp_path / "none.png")
    assert result.exit_code == 1 and "pip install 'udaseg[export]'" in result.output
