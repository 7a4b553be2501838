"""An unwritable output folder and an absent device end in one line naming them and the fix, exit 1."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from udaseg.testing.fakedata import write_cityscapes, write_synthia
from udaseg.checkpoint import save_checkpoint
from udaseg.cli import app
from udaseg.commands.common import user_errors
from udaseg.config import load_config, to_toml
from udaseg.device import resolve_device
from udaseg.errors import UdasegError
from udaseg.model import build_model

runner = CliRunner()
TINY = ["model.backbone=light_resnet18", "model.init_weights=", "model.light_width=8", "model.head_channels=16",
        "experiment.name=t", "data.num_workers=0"]


def sets(*extra: str) -> list[str]:
    return [a for s in (*TINY, *extra) for a in ("--set", s)]


@pytest.fixture
def read_only(tmp_path) -> Path:
    """A folder path that cannot be created or written: under a 0555 folder for a normal user; as root
    (who ignores permission bits) under /sys, where mkdir fails with EPERM."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        yield locked / "runs"
        locked.chmod(0o755)
        return
    try:
        os.mkdir("/sys/udaseg-probe")
    except OSError:
        yield Path("/sys/udaseg-test-runs")
        return
    os.rmdir("/sys/udaseg-probe")
    pytest.skip("no read-only folder available to this user")


def one_error_line(result, *needles: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_fit_gmm_into_a_read_only_runs_root_is_one_line(tmp_path, read_only):
    write_synthia(tmp_path / "data" / "SYNTHIA-RAND-CITYSCAPES", n=2)
    result = runner.invoke(app, ["fit-gmm", "--data-root", str(tmp_path / "data"), "--runs-root", str(read_only),
                                 *sets()])
    one_error_line(result, f"{read_only}/t", "cannot write there", "--runs-root")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ckpt")
    write_cityscapes(tmp / "data" / "cityscapes", "val", n=1, size=(32, 16))
    cfg = load_config(None, TINY[:4])
    model = build_model("light_resnet18", 16, light_width=8, head_channels=16)
    path = tmp / "model.pt"
    save_checkpoint(path, {"format": "udaseg.checkpoint.v1", "stage": "stage1", "iteration": 1,
                           "protocol": "synthia2cityscapes16", "num_classes": 16, "backbone": "light_resnet18",
                           "widths": [8, 16], "model": model.state_dict(), "config_toml": to_toml(cfg)})
    return path


def test_eval_into_a_read_only_runs_root_or_out_is_one_line(checkpoint, read_only):
    data = str(checkpoint.parent / "data")
    result = runner.invoke(app, ["eval", "--checkpoint", str(checkpoint), "--data-root", data,
                                 "--runs-root", str(read_only), *sets("data.target_size=[32,16]")])
    one_error_line(result, f"{read_only}/t/eval", "--runs-root")
    result = runner.invoke(app, ["eval", "--checkpoint", str(checkpoint), "--data-root", data,
                                 "--out", str(read_only / "e"), *sets("data.target_size=[32,16]")])
    one_error_line(result, f"{read_only}/e", "--out")


def test_predict_and_synth_refuse_a_read_only_out(checkpoint, read_only, tmp_path):
    one_error_line(runner.invoke(app, ["predict", "--checkpoint", str(checkpoint), str(tmp_path),
                                       "--out", str(read_only / "p")]), f"{read_only}/p", "--out")
    one_error_line(runner.invoke(app, ["synth", str(read_only / "s")]), f"{read_only}/s", "OUT")


def test_a_late_write_failure_is_one_line_and_a_bug_keeps_its_traceback():
    @user_errors
    def full_disk():
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/t/train/checkpoint_latest.pt")

    @user_errors
    def bug():
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(typer.Exit) as exit_info:
        full_disk()
    assert exit_info.value.exit_code == 1
    with pytest.raises(OSError):
        bug()


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_cuda_without_a_gpu_is_one_line_in_train_eval_and_predict(tmp_path, checkpoint, no_gpu):
    result = runner.invoke(app, ["train", "--runs-root", str(tmp_path / "runs"), "--device", "cuda", *sets()])
    one_error_line(result, "--device cuda", "no CUDA GPU", "--device cpu")
    data = str(checkpoint.parent / "data")
    result = runner.invoke(app, ["eval", "--checkpoint", str(checkpoint), "--data-root", data, "--runs-root",
                                 str(tmp_path / "runs"), "--device", "cuda:0", *sets("data.target_size=[32,16]")])
    one_error_line(result, "--device cuda:0", "no CUDA GPU")
    assert not (tmp_path / "runs" / "t" / "eval" / "summary.json").exists()
    result = runner.invoke(app, ["predict", "--checkpoint", str(checkpoint), str(checkpoint.parent / "data"),
                                 "--out", str(tmp_path / "p"), "--device", "cuda"])
    one_error_line(result, "--device cuda", "no CUDA GPU", "--device cpu")  # through the Segmenter


def test_resolve_device_names_the_problem(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UdasegError, match="'gpu': not a device name; use cpu, cuda or cuda:N"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UdasegError, match=r"cuda:2: this machine has 2 CUDA GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu")
