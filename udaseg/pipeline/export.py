"""`udaseg export`: a trained model as one self-contained file for deployment, verified.

Formats: TorchScript (`torch.jit.trace`, loadable with `torch.jit.load` and no udaseg) and ONNX
(opset 17, the optional `export` extra: onnx + onnxruntime). The exported network
(`udaseg.inference.InferenceNet`) takes float32 RGB in 0..255, [B, 3, H, W], normalises it
itself, and returns `logits` [B, C, H, W] at the input's size (and `depth` [B, 1, H, W] in
metres with --depth). Batch, height and width are dynamic in both formats.

A JSON sidecar `<file>.json` holds what a user needs besides the file: class names, palette,
protocol, input size, normalisation, output names and encodings, and the verification result.

Verification runs on every export, on a real image: the exported file is loaded back and its
outputs are compared with PyTorch's (fp32, CPU) at the training input size in a batch of two
(the image and its mirror: the dynamic batch) and at a second size (the dynamic height and
width). Every element must satisfy |exported − torch| ≤ tolerance · max|torch| (tolerance 1e-4
by default, i.e. relative to the output's range), and the argmax classes must agree on ≥ 99.9 %
of the pixels; otherwise the export fails loudly and nothing is written.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from udaseg.checkpoint import load_model
from udaseg.config import Config
from udaseg.data.palette import palette_for
from udaseg.data.pngio import read_rgb
from udaseg.data.protocols import IGNORE
from udaseg.data.recipe_protocol import protocol_of
from udaseg.data.transforms import resize_image
from udaseg.errors import UdasegError
from udaseg.io import atomic_path, atomic_write_bytes, sha256_file
from udaseg.inference import InferenceNet, labelid_table
from udaseg.model import backbone_spec

FORMATS = ("torchscript", "onnx")
OPSET = 17
DEFAULT_TOLERANCE = 1e-4
MIN_ARGMAX_AGREEMENT = 0.999
SIDECAR_FORMAT = "udaseg.export.v1"


class ExportVerificationError(UdasegError):
    """The exported file does not reproduce PyTorch's outputs within the tolerance."""


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    verification: dict


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UdasegError("ONNX export needs the optional extra: pip install 'udaseg[export]' (onnx, onnxruntime)") from None
    return onnx, onnxruntime


def _export_torchscript(net: torch.nn.Module, example: torch.Tensor, path: str) -> None:
    with warnings.catch_warnings():  # trace's deprecation notice and shape-as-tensor warnings
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, example, check_trace=False)
        torch.jit.save(traced, path)


def _export_onnx(net: torch.nn.Module, example: torch.Tensor, path: str, with_depth: bool) -> None:
    onnx, _ = _require_onnx()
    outputs = ["logits", "depth"] if with_depth else ["logits"]
    axes = {"image": {0: "batch", 2: "height", 3: "width"}}
    axes.update({name: {0: "batch", 2: "height", 3: "width"} for name in outputs})
    with warnings.catch_warnings():  # the TorchScript-based exporter announces its deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), path, dynamo=False, input_names=["image"], output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, do_constant_folding=True)
    onnx.checker.check_model(onnx.load(path))


class _Runner:
    """Runs an exported file the way a user would: TorchScript via torch.jit.load, ONNX via onnxruntime."""

    def __init__(self, fmt: str, path: str):
        self.fmt = fmt
        if fmt == "torchscript":
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice
                warnings.simplefilter("ignore")
                self.module = torch.jit.load(path, map_location="cpu").eval()
        else:
            _, ort = _require_onnx()
            self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> list[np.ndarray]:
        if self.fmt == "torchscript":
            with torch.inference_mode():
                out = self.module(x)
            return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]
        return list(self.session.run(None, {"image": x.numpy()}))


def verification_inputs(image_path: Path, input_size: tuple[int, int]) -> list[tuple[str, torch.Tensor]]:
    """(description, float RGB batch): the image and its mirror at the input size (batch 2), and
    the image alone at a second size (its own when that differs, else 3/4 of the input size)."""
    image = read_rgb(image_path)
    w, h = input_size
    at_input = resize_image(image, (w, h))
    batch = torch.stack([at_input, at_input.flip(-1)]).float()
    native = (image.shape[-1], image.shape[-2])
    second = native if native != (w, h) else (max(16, (3 * w) // 4), max(16, (3 * h) // 4))
    if max(second) > 1024:  # a full-size frame: verify at a size the CPU runs quickly
        scale = 1024 / max(second)
        second = (max(16, round(second[0] * scale)), max(16, round(second[1] * scale)))
    other = resize_image(image, second)[None].float()
    return [(f"batch 2 at {w}x{h}", batch), (f"batch 1 at {second[0]}x{second[1]}", other)]


def _metres_to_inverse(metres: np.ndarray) -> np.ndarray:
    m = metres.astype(np.float64)
    return np.where(m > 0, 65536.0 / (100.0 * np.maximum(m, 0) + 1.0), 0.0)


def compare_outputs(reference: list[np.ndarray], exported: list[np.ndarray], names: list[str], tolerance: float) -> dict:
    """Max differences, relative to each reference output's range, and the argmax agreement.

    Depth is compared as the network predicts it, inverse depth 65536/(cm + 1): metres = 65536/inv
    magnifies float32 rounding without bound where the inverse depth is near 0 (the far sky)."""
    report = {}
    for name, ref, got in zip(names, reference, exported):
        if ref.shape != got.shape:
            raise ExportVerificationError(f"exported output {name!r} has shape {got.shape}, PyTorch gives {ref.shape}")
        if name == "depth":
            ref, got = _metres_to_inverse(ref), _metres_to_inverse(got)
        scale = float(np.abs(ref).max()) or 1.0
        diff = float(np.abs(ref.astype(np.float64) - got.astype(np.float64)).max())
        report[name] = {"max_abs_diff": diff, "max_abs_reference": scale, "relative": diff / scale,
                        "ok": bool(diff <= tolerance * scale and np.isfinite(got).all())}
    agree = float((reference[0].argmax(1) == exported[0].argmax(1)).mean())
    report["argmax_agreement"] = agree
    report["ok"] = all(v["ok"] for k, v in report.items() if isinstance(v, dict)) and agree >= MIN_ARGMAX_AGREEMENT
    return report


def run_export(config: Config, checkpoint: Path, fmt: str, out: Path, verify_image: Path, *, with_depth: bool = False,
               tolerance: float = DEFAULT_TOLERANCE, input_size: tuple[int, int] | None = None) -> ExportResult:
    """Export, verify, then move the file and its sidecar into place (never before verification)."""
    if fmt not in FORMATS:
        raise UdasegError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _require_onnx()
    if not Path(verify_image).is_file():
        raise UdasegError(f"{verify_image}: verification image not found; pass --verify-image with a real photo "
                          "(e.g. a Cityscapes frame)")
    out = Path(out)
    protocol = protocol_of(config)
    size = tuple(input_size or config.data.target_size)
    torch_threads = torch.get_num_threads()
    model, info = load_model(checkpoint, config, torch.device("cpu"))
    net = InferenceNet(model, with_depth=with_depth).eval().requires_grad_(False)
    names = ["logits", "depth"] if with_depth else ["logits"]
    example = torch.zeros(1, 3, size[1], size[0])
    try:
        with atomic_path(out) as tmp:
            with torch.inference_mode(False), torch.no_grad():
                if fmt == "torchscript":
                    _export_torchscript(net, example, tmp)
                else:
                    _export_onnx(net, example, tmp, with_depth)
            runner = _Runner(fmt, tmp)
            checks = []
            for what, x in verification_inputs(Path(verify_image), size):
                with torch.inference_mode():
                    out_ref = net(x)
                reference = [t.numpy() for t in (out_ref if isinstance(out_ref, tuple) else (out_ref,))]
                report = compare_outputs(reference, runner(x), names, tolerance)
                report["input"] = what
                checks.append(report)
                if not report["ok"]:
                    worst = max((v for v in report.values() if isinstance(v, dict)), key=lambda v: v["relative"])
                    raise ExportVerificationError(
                        f"{fmt} export of {checkpoint} does not match PyTorch on {verify_image} ({what}): max |diff| "
                        f"{worst['max_abs_diff']:.3g} = {worst['relative']:.2e} of the output range (tolerance {tolerance:g}), "
                        f"argmax agreement {report['argmax_agreement']:.4%}; nothing was written")
            verification = {"image": str(verify_image), "tolerance": tolerance,
                            "rule": "|exported - torch| <= tolerance * max|torch| per output; argmax agreement >= "
                                    f"{MIN_ARGMAX_AGREEMENT}", "device": "cpu", "precision": "float32", "checks": checks}
    finally:
        torch.set_num_threads(torch_threads)
    sidecar = sidecar_path(out)
    meta = sidecar_dict(config, protocol, fmt, out, checkpoint, info, size, with_depth, verification)
    atomic_write_bytes(sidecar, json.dumps(meta, indent=2).encode())
    return ExportResult(out, sidecar, verification)


def sidecar_dict(config: Config, protocol, fmt: str, out: Path, checkpoint: Path, info: dict, size, with_depth: bool,
                 verification: dict) -> dict:
    norm = backbone_spec(config.model.backbone).normalization
    order = "".join("RGB"[i] for i in norm.channel_order)
    outputs = {"logits": {"shape": ["batch", len(protocol.classes), "height", "width"], "dtype": "float32",
                          "meaning": "class scores at the input's size (bilinear, align_corners=True); argmax over dim 1 = class index"}}
    if with_depth:
        outputs["depth"] = {"shape": ["batch", 1, "height", "width"], "dtype": "float32",
                            "meaning": "metric depth in metres; 0 = no prediction"}
    return {
        "format": SIDECAR_FORMAT,
        "model_format": fmt,
        "file": out.name,
        "sha256": sha256_file(out),
        "opset": OPSET if fmt == "onnx" else None,
        "protocol": protocol.name,
        "classes": list(protocol.classes),
        "palette": palette_for(protocol)[:protocol.num_classes].tolist(),
        "ignore_index": IGNORE,
        "miou_star_classes": [protocol.classes[i] for i in protocol.miou_star] if protocol.miou_star else None,
        "target_label_ids": labelid_table(protocol)[:protocol.num_classes].tolist(),
        "input": {"name": "image", "shape": ["batch", 3, "height", "width"], "dtype": "float32",
                  "channels": "RGB", "range": [0, 255], "size": list(size),
                  "size_meaning": "(width, height) the model was trained at: resize images to it for the trained behaviour",
                  "dynamic": ["batch", "height", "width"]},
        "normalisation": {"applied_inside": True, "backbone": config.model.backbone, "channel_order": order,
                          "scale": norm.scale, "mean": list(norm.mean), "std": list(norm.std),
                          "formula": "x = (image[channel_order] * scale - mean) / std"},
        "outputs": outputs,
        "checkpoint": {"path": str(checkpoint), **info},
        "verification": verification,
    }
