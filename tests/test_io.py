"""udaseg.io: the one atomic writer (all-or-nothing, the mode a new file gets under the user's umask)
and the one file digest."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from udaseg.testing.fakedata import write_cityscapes
from udaseg.checkpoint import save_checkpoint
from udaseg.cli import app
from udaseg.config import load_config, to_toml
from udaseg.data.pngio import write_png
from udaseg.io import atomic_path, atomic_write_bytes, sha256_file
from udaseg.model import build_model

MODES = [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)]


@contextlib.contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask,expected", MODES)
def test_atomic_files_get_the_mode_of_a_plain_new_file(tmp_path, mask, expected):
    with umask(mask):
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # the reference: what open() gives a new file under this umask
        atomic_write_bytes(tmp_path / "a.bin", b"abc")
        write_png(tmp_path / "a.png", np.zeros((2, 3), np.uint8))
        save_checkpoint(tmp_path / "c.pt", {"w": torch.ones(2)})
    assert mode(plain) == expected
    assert {mode(tmp_path / n) for n in ("a.bin", "a.png", "c.pt")} == {expected}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


def test_replacing_keeps_no_temporary_and_creates_the_folder(tmp_path):
    target = tmp_path / "new" / "deeper" / "f.txt"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]


def test_sha256_matches_hashlib_across_block_boundaries(tmp_path):
    data = os.urandom(3 * 1024 + 17)
    (tmp_path / "d").write_bytes(data)
    assert sha256_file(tmp_path / "d", chunk=1024) == hashlib.sha256(data).hexdigest()
    (tmp_path / "e").write_bytes(b"")
    assert sha256_file(tmp_path / "e") == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("mask,expected", MODES[:2])
def test_eval_artifacts_are_readable_as_the_umask_says(tmp_path, mask, expected):
    """A stage end to end: the checkpoint, and eval's config.toml, report.md, summary.json and PNGs."""
    write_cityscapes(tmp_path / "data" / "city", "val", n=2, size=(48, 24), seed=3)
    sets = ["model.backbone=light_resnet18", "model.init_weights=", "model.light_width=8", "model.head_channels=16",
            "experiment.name=t", "data.num_workers=0", "data.target_root=city", "data.target_size=[48,24]",
            "eval.batch_size=2", "eval.num_figure_samples=1"]
    torch.manual_seed(0)
    model = build_model("light_resnet18", 16, light_width=8, head_channels=16).eval()
    cfg = load_config(None, sets[:4])
    ckpt = tmp_path / "runs" / "t" / "train" / "checkpoint_final.pt"
    with umask(mask):
        save_checkpoint(ckpt, {"format": "udaseg.checkpoint.v1", "stage": "stage1", "iteration": 1,
                               "protocol": "synthia2cityscapes16", "num_classes": 16, "backbone": "light_resnet18",
                               "widths": [8, 16], "model": model.state_dict(), "config_toml": to_toml(cfg)})
        result = CliRunner().invoke(app, ["eval", "--data-root", str(tmp_path / "data"), "--runs-root",
                                          str(tmp_path / "runs"), "--checkpoint", str(ckpt),
                                          *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    out = tmp_path / "runs" / "t" / "eval"
    written = {p.name: mode(p) for p in out.iterdir()}
    assert {"config.toml", "report.md", "summary.json", "confusion.png", "samples.png"} <= set(written)
    assert set(written.values()) == {expected}, written
    assert mode(ckpt) == expected
