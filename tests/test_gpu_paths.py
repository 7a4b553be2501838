"""The GPU paths proven as far as a CPU can: every Triton kernel compiled to sm_80 and sm_90
machine code, refine's fallback to the torch path when the kernel fails, pseudolabel's first-batch
check of the kernel against the torch path, and stage 1 (M2, both domains) plus eval under the bf16
autocast a CUDA run uses."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

import udaseg.model.ops as ops
import udaseg.refine as refine_mod
from udaseg.testing.fakedata import write_cityscapes, write_synthia
from udaseg.testing.refine_cases import adversarial, scipy_refine
from udaseg.config import load_config
from udaseg.distributed import DistEnv
from udaseg.loop import read_log
from udaseg.errors import UdasegError
from udaseg.layout import RunLayout
from udaseg.refine import refine

pytestmark = pytest.mark.usefixtures("single_threaded")


# ----------------------------------------------------------------------------- (a) compile


@pytest.mark.slow
@pytest.mark.parametrize("capability", [80, 90])
def test_every_triton_kernel_compiles_for_the_gpu(capability):
    """Triton's front end, LLVM lowering and the wheel's ptxas, to a cubin, with no GPU: a type
    or lowering error in any of the four kernels (either connectivity) fails here."""
    pytest.importorskip("triton")
    from udaseg.refine_triton import compile_kernels

    start = time.process_time()
    lines = compile_kernels(capability, width=256, dtypes=((torch.uint8, torch.float32),))
    names = [line.split()[1].split("(")[0] for line in lines]
    assert sorted(names) == ["_count", "_finalize", "_init", "_merge", "_merge"], lines
    assert all(line.startswith(f"sm_{capability} ") for line in lines)
    print(f"sm_{capability}: {len(lines)} kernels in {time.process_time() - start:.1f} s CPU")


@pytest.mark.slow
def test_the_kernels_compile_for_the_other_input_dtypes():
    """predict under amp hands refine fp16 / bf16 confidences; library callers int64 labels."""
    pytest.importorskip("triton")
    from udaseg.refine_triton import compile_kernels

    lines = compile_kernels(90, width=256, dtypes=((torch.uint8, torch.bfloat16), (torch.int64, torch.float16)),
                            connectivities=(8,))
    assert any("_init(*u8, *bf16" in line for line in lines) and any("_init(*i64, *fp16" in line for line in lines)
    assert any("_finalize(*i32, *i32, *i32, *fp64, *i64" in line for line in lines)


# ----------------------------------------------------------------------------- (b) fallback


def _maps(connectivity: int = 8):
    rng = np.random.default_rng(connectivity)
    lab = np.stack([adversarial(name, 19, 23, connectivity, rng) for name in ("spiral", "maze")])
    conf = np.where(rng.random(lab.shape) < 0.05, 0.5, 0.95).astype(np.float32)
    thr = np.array([3.0, 40.0, 0.0, 100.0, 7.0, 19 * 23 + 1.0])
    return torch.from_numpy(lab).to(torch.uint8), torch.from_numpy(conf), thr


@pytest.fixture
def kernel_on_cpu(monkeypatch):
    """'auto' choosing the Triton kernel for these CPU tensors, as it does for CUDA ones, with no
    failure remembered from another test."""
    monkeypatch.setattr(refine_mod, "_TRITON_FAILURE", None)
    monkeypatch.delenv("UDASEG_REFINE_BACKEND", raising=False)
    monkeypatch.setattr(refine_mod, "_on_gpu", lambda labels: True)
    return monkeypatch


def test_a_kernel_that_cannot_launch_falls_back_to_torch_with_one_warning(kernel_on_cpu, capsys):
    """The real kernel launched on CPU tensors without a GPU fails (no CUDA driver) like a broken
    kernel on a user's GPU: the result is the torch path's, and one line says so, once."""
    pytest.importorskip("triton")
    lab, conf, thr = _maps()
    want = scipy_refine(lab.numpy(), conf.numpy(), thr, 0.9, 8)
    for _ in range(3):
        np.testing.assert_array_equal(refine(lab, conf, thr).numpy(), want)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: refine's Triton kernel failed (") and \
        "using the torch path" in err[0]
    assert refine_mod._TRITON_FAILURE is not None


def test_a_kernel_that_fails_to_compile_falls_back_and_an_explicit_backend_raises(kernel_on_cpu, capsys):
    import udaseg.refine_triton as rt

    class Broken:  # the first launch raises as triton.compile does on a lowering error
        def __getitem__(self, grid):
            raise rt.triton.compiler.errors.CompilationError("kernel.py", None, "atomic_add does not support uint8")

    kernel_on_cpu.setattr(rt, "_init", Broken())
    lab, conf, thr = _maps(4)
    np.testing.assert_array_equal(refine(lab, conf, thr, connectivity=4).numpy(),
                                  scipy_refine(lab.numpy(), conf.numpy(), thr, 0.9, 4))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CompilationError" in err
    kernel_on_cpu.setattr(refine_mod, "_TRITON_FAILURE", None)
    with pytest.raises(rt.triton.compiler.errors.CompilationError):
        refine(lab, conf, thr, backend="triton")  # asked for by name: no silent fallback


# ----------------------------------------------------------------------------- (c) first-batch check


def test_verify_refuses_a_kernel_that_differs_from_the_torch_path(kernel_on_cpu):
    import udaseg.refine_triton as rt

    lab, conf, thr = _maps()
    want, _ = refine_mod._refine_torch(lab, conf, torch.as_tensor(thr), 0.9, 8)
    kernel_on_cpu.setattr(rt, "refine_triton", lambda *a: want.clone())
    assert torch.equal(refine(lab, conf, thr, verify=True), want)  # agrees: accepted

    def one_pixel_off(*a):
        out = want.clone()
        out[1, 5, 7] = 255 if out[1, 5, 7] != 255 else 0
        return out

    kernel_on_cpu.setattr(rt, "refine_triton", one_pixel_off)
    assert not torch.equal(refine(lab, conf, thr), want)  # unchecked, the wrong result passes
    with pytest.raises(UdasegError, match=r"differs from the torch path on 1 of 874 pixels; set UDASEG_REFINE_BACKEND=torch"):
        refine(lab, conf, thr, verify=True)


# ----------------------------------------------------------------------------- (d) bf16 autocast

SIZE = (64, 32)
BASE = {
    "experiment.name": "t", "data.source_root": "syn", "data.target_root": "city", "data.source_size": list(SIZE),
    "data.target_size": list(SIZE), "data.num_workers": 0, "model.backbone": "light_resnet18",
    "model.init_weights": "", "model.light_width": 8, "model.head_channels": 16, "gmm.points_per_class": 2000,
    "train.iterations": 2, "train.batch_size_source": 1, "train.batch_size_target": 1, "train.checkpoint_every": 100,
    "train.log_every": 1, "train.amp": True, "train.ablation": "m2", "train.head_targets": "normalized",
    "train.eval_every": 0, "train.select": "final", "eval.batch_size": 2, "eval.num_figure_samples": 1, "pseudolabel.refine_size": list(SIZE),
    "inference.batch_size": 2, "pseudolabel.conf_threshold": 0.0,
}


def test_stage1_m2_and_eval_run_under_bf16_autocast(tmp_path, monkeypatch):
    """The precision a CUDA run uses (bf16 activations under autocast, fp32 losses and targets),
    on the CPU: a dtype mismatch in the density targets, the losses or the scoring fails here."""
    import udaseg.pipeline.train as stage1
    from udaseg.pipeline.evaluate import evaluate_checkpoint
    from udaseg.pipeline.fit_gmm import run_fit_gmm

    root = tmp_path / "data"
    write_synthia(root / "syn", 2, SIZE)
    write_cityscapes(root / "city", "train", 2, SIZE)
    write_cityscapes(root / "city", "val", 2, SIZE, seed=1)
    config = load_config(None, BASE)
    run_fit_gmm(config, root, tmp_path / "runs", plots=False, progress=False)

    monkeypatch.setattr(ops, "AUTOCAST_DEVICES", ("cuda", "cpu"))
    from udaseg.model import SegDepthNet

    seen: list[tuple] = []  # the network's head outputs per forward (the discriminator runs in fp32 by design)

    def conv_dtypes(module, args, output):
        if isinstance(module, SegDepthNet):
            seen.append(tuple(t.dtype for t in (output.seg, output.depth, output.density) if t is not None))

    handle = torch.nn.modules.module.register_module_forward_hook(conv_dtypes)
    try:
        final = stage1.run_train(config, DistEnv(), root, tmp_path / "runs", progress=False, workers=0)
        trained = len(seen)
        run = evaluate_checkpoint(config, final, tmp_path / "eval", root=root, device="cpu", progress=False)
    finally:
        handle.remove()
    # 2 iterations × (source + target) forwards with all three heads (and any logging forward),
    # then eval's: every head output in bf16
    assert seen[:trained].count((torch.bfloat16,) * 3) >= 4
    assert len(seen) > trained and {d for heads in seen for d in heads} == {torch.bfloat16}
    log = read_log(RunLayout.for_config(config, tmp_path / "runs").train.log)
    assert [r["iteration"] for r in log] == [1, 2]
    for key in ("seg", "depth", "density_src", "density_tgt", "adv", "disc"):
        assert all(math.isfinite(r[key]) for r in log), key
    s = run.summary
    assert 0.0 <= s["miou"] <= 1.0 and math.isfinite(s["depth"]["abs_rel"])
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["num_images"] == 2
    assert (tmp_path / "eval" / "samples.png").is_file()


def test_pseudolabel_refuses_a_kernel_that_differs_on_the_first_batch(tmp_path, kernel_on_cpu):
    """With the kernel path taken (as on CUDA) and a kernel one pixel off, pseudolabel stops on its
    first batch with one line and writes no label; pseudolabel.verify_first_batch = false lets it run."""
    import udaseg.refine_triton as rt
    from udaseg.checkpoint import checkpoint_dict, save_checkpoint
    from udaseg.data.protocols import get_protocol
    from udaseg.model import model_from_config
    from udaseg.pipeline.fit_gmm import run_fit_gmm
    from udaseg.pipeline.pseudolabel import run_pseudolabel

    root = tmp_path / "data"
    write_synthia(root / "syn", 2, SIZE)
    write_cityscapes(root / "city", "train", 3, SIZE)
    config = load_config(None, {**BASE, "train.amp": False, "pseudolabel.conf_threshold": 0.0})
    runs = tmp_path / "runs"
    run_fit_gmm(config, root, runs, plots=False, progress=False)
    torch.manual_seed(0)
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, checkpoint_dict(config, "stage1", 0, model_from_config(
        config.model, get_protocol(config.experiment.protocol).num_classes)))

    def one_pixel_off(labels, confidence, thresholds, conf_threshold, connectivity):
        out, _ = refine_mod._refine_torch(labels, confidence, thresholds.cpu(), conf_threshold, connectivity)
        out.view(-1)[0] = 255 if out.view(-1)[0] != 255 else 0
        return out

    kernel_on_cpu.setattr(rt, "refine_triton", one_pixel_off)
    labels_dir = RunLayout.for_config(config, runs).pseudo_labels_dir
    with pytest.raises(UdasegError, match="differs from the torch path on 1 of"):
        run_pseudolabel(config, DistEnv(), ckpt, root, runs, do_refine=True, progress=False, workers=0)
    assert not list(labels_dir.glob("*.png"))
    unchecked = load_config(None, {**BASE, "train.amp": False, "pseudolabel.conf_threshold": 0.0,
                                   "pseudolabel.verify_first_batch": False})
    run_pseudolabel(unchecked, DistEnv(), ckpt, root, runs, do_refine=True, progress=False, workers=0)
    assert len(list(labels_dir.glob("*.png"))) == 3
