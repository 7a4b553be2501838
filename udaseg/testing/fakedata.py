"""Tiny datasets in the real on-disk formats, written by the tests themselves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from udaseg.data.pngio import write_png

SYNTHIA_IDS = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 17, 19, 21, 22, 0])
CITYSCAPES_IDS = np.array([0, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 28, 32, 33])


def write_synthia(root: Path, n: int = 3, size=(40, 24), seed: int = 0, parsed: bool = False,
                  flat_depth: bool = False) -> dict:
    """SYNTHIA-RAND-CITYSCAPES files; returns the raw ids and centimetres written."""
    rng = np.random.default_rng(seed)
    w, h = size
    truth = {}
    for i in range(n):
        name = f"{i:07d}.png"
        write_png(root / "RGB" / name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        raw = rng.choice(SYNTHIA_IDS, (h, w)).astype(np.uint16)
        if parsed:
            write_png(root / "parsed_LABELS" / name, raw.astype(np.uint8))
        else:
            instance = rng.integers(0, 1000, (h, w), dtype=np.uint16)
            write_png(root / "GT" / "LABELS" / name, np.stack([raw, instance, np.zeros_like(raw)], -1))
        cm = rng.integers(100, 60000, (h, w), dtype=np.uint16)
        depth_dir = root / "Depth" if flat_depth else root / "Depth" / "Depth"
        write_png(depth_dir / name, np.repeat(cm[..., None], 3, -1))
        truth[f"{i:07d}"] = (raw, cm)
    return truth


def write_cityscapes(root: Path, split: str, n: int = 2, size=(32, 16), seed: int = 0,
                     city: str = "testcity", depth: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    w, h = size
    truth = {}
    for i in range(n):
        stem = f"{city}_{i:06d}_000019"
        write_png(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                  rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        ids = rng.choice(CITYSCAPES_IDS, (h, w)).astype(np.uint8)
        write_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
        if depth:
            p = rng.integers(0, 30000, (h, w), dtype=np.uint16)
            write_png(root / "disparity" / split / city / f"{stem}_disparity.png", p)
            camera = {"extrinsic": {"baseline": 0.209313, "pitch": 0.038, "roll": 0.0, "x": 1.7,
                                    "y": 0.0, "yaw": 0.0, "z": 1.22},
                      "intrinsic": {"fx": 2262.52, "fy": 2265.30, "u0": 1096.98, "v0": 513.137}}
            path = root / "camera" / split / city / f"{stem}_camera.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(camera))
            truth[stem] = (ids, p)
        else:
            truth[stem] = (ids, None)
    return truth


def interrupt_after(monkeypatch, step_class, iteration: int):
    """Make `step_class` send Ctrl-C (SIGINT) to this process at the end of step `iteration`;
    returns a function that restores the real step."""
    import os
    import signal

    real = step_class.__call__

    def step_then_ctrl_c(self, it):
        out = real(self, it)
        if it == iteration:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(step_class, "__call__", step_then_ctrl_c)
    return lambda: monkeypatch.setattr(step_class, "__call__", real)
