import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion
from typer.testing import CliRunner

from udaseg.testing.fakedata import write_cityscapes, write_synthia
from udaseg.cli import app
from udaseg.config import load_config, to_toml
from udaseg.data.pngio import read_rgb, write_png
from udaseg.data.protocols import PROTOCOLS
from udaseg.data.transforms import resize_nearest
from udaseg.checkpoint import save_checkpoint
from udaseg.metrics import iou_from_confusion, mean_iou
from udaseg.model import SegDepthNet, SegDepthOutput, build_model
from udaseg.report import PAPER_7, PAPER_16

P16, M7 = PROTOCOLS["synthia2cityscapes16"], PROTOCOLS["synthia2mapillary7"]
runner = CliRunner()


def common(tmp: Path, *extra: str) -> list[str]:
    sets = ["model.backbone=light_resnet18", "model.init_weights=", "model.light_width=16", "model.head_channels=64",
            "experiment.name=t", "data.num_workers=0", "inference.workers=0",
            "eval.batch_size=2", "eval.num_figure_samples=2", *extra]
    return ["--data-root", str(tmp / "data"), "--runs-root", str(tmp / "runs"), *[a for s in sets for a in ("--set", s)]]


def cli(*args: str):
    result = runner.invoke(app, ["eval", *args])
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A random light model as a stage-1 checkpoint, and a tiny Cityscapes val split with depth."""
    tmp = tmp_path_factory.mktemp("eval")
    truth = write_cityscapes(tmp / "data" / "city", "val", n=3, size=(64, 32), seed=5)
    torch.manual_seed(0)
    model = build_model("light_resnet18", 16, light_width=16, head_channels=64).eval()
    cfg = load_config(None, ["model.backbone=light_resnet18", "model.light_width=16", "model.head_channels=64"])
    path = tmp / "runs" / "t" / "train" / "checkpoint_final.pt"
    save_checkpoint(path, {"format": "udaseg.checkpoint.v1", "stage": "stage1", "iteration": 7,
                           "protocol": "synthia2cityscapes16", "num_classes": 16, "backbone": "light_resnet18",
                           "widths": [16, 64], "model": model.state_dict(), "config_toml": to_toml(cfg)})
    return tmp, model, truth, path


def _numpy_depth(pred_m, gt_m):
    m = (gt_m >= 0.01) & (gt_m <= 655.35)
    p, g = pred_m[m].astype(np.float64), gt_m[m].astype(np.float64)
    t = np.maximum(p / g, g / p)
    return [np.mean(np.abs(p - g) / g), np.mean((p - g) ** 2 / g), np.sqrt(np.mean((p - g) ** 2)),
            np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)), np.mean(t < 1.25), np.mean(t < 1.25 ** 2), np.mean(t < 1.25 ** 3)]


def test_eval_files_and_numbers_match_an_independent_pass(trained):
    tmp, model, truth, ckpt = trained
    result = cli(*common(tmp, "data.target_root=city", "data.target_size=[32,16]"))
    assert result.exit_code == 0, result.output
    out = tmp / "runs" / "t" / "eval"
    for name in ("summary.json", "report.md", "confusion.png", "samples.png", "config.toml"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    cm = np.array(s["confusion_matrix"])

    # independent pass: logits bilinear (align_corners) to the native 64x32 labels, sklearn confusion
    preds, gts, depth_rows = [], [], []
    city = tmp / "data" / "city"
    for stem, (ids, disp) in sorted(truth.items()):
        image = read_rgb(city / "leftImg8bit" / "val" / "testcity" / f"{stem}_leftImg8bit.png")
        small = F.interpolate(image[None].float(), size=(16, 32), mode="bicubic", align_corners=False,
                              antialias=True).round().clamp(0, 255).to(torch.uint8)
        with torch.no_grad():
            o = model(small)
        logits = F.interpolate(o.seg, size=(32, 64), mode="bilinear", align_corners=True)
        preds.append(logits.argmax(1)[0].numpy().ravel())
        gts.append(P16.target_lut[ids].ravel())
        inv = F.interpolate(o.depth, size=(32, 64), mode="bilinear", align_corners=True)[0, 0].numpy().astype(np.float64)
        inv = np.maximum(inv, 65536 / (655.35 * 100 + 1))
        pred_m = np.clip((65536 / inv - 1) / 100, 0.01, 655.35)
        with np.errstate(divide="ignore"):
            gt_m = np.where(disp > 1, 0.209313 * 2262.52 / ((disp.astype(np.float64) - 1) / 256), 0)
        gt_inv = np.where(gt_m > 0, (65536 / (gt_m * 100 + 1)).astype(np.float32), 0)  # the loader's float32 encoding
        gt_m = np.where(gt_inv > 0, (65536 / np.maximum(gt_inv, 1e-6) - 1) / 100, 0)
        depth_rows.append(_numpy_depth(pred_m, gt_m))
    g, p = np.concatenate(gts), np.concatenate(preds)
    keep = g != 255
    np.testing.assert_array_equal(cm, sk_confusion(g[keep], p[keep], labels=list(range(16))))
    assert cm.sum() == keep.sum()  # full native resolution, ignore dropped

    iou = iou_from_confusion(cm)
    assert s["miou"] == pytest.approx(mean_iou(iou))
    assert s["miou_star"] == pytest.approx(np.nanmean(iou[list(P16.miou_star)]))
    assert s["pixel_accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    for c, v in zip(P16.classes, iou):
        assert (s["iou"][c] is None) if np.isnan(v) else s["iou"][c] == pytest.approx(v)
    assert s["num_images"] == 3 and s["label_resolution"] == "native"
    assert s["checkpoint"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert s["checkpoint"]["iteration"] == 7 and s["config"]["data"]["target_size"] == [32, 16]
    expected_depth = np.mean(depth_rows, axis=0)
    got = [s["depth"][k] for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")]
    np.testing.assert_allclose(got, expected_depth, rtol=2e-4, atol=1e-6)
    report = (out / "report.md").read_text()
    assert f"**{100 * s['miou']:.1f}**" in report and "| Ours (paper) | 85.3 |" in report and "| 48.2 | 55.5 |" in report
    images = re.findall(r"^!\[[^]]+\]\(([^)]+)\)$", report, flags=re.M)  # the figures, shown, beside report.md
    assert sorted(images) == ["confusion.png", "samples.png"] and all((out / f).is_file() for f in images)
    assert "mIoU" in result.output and "summary.json" in result.output


def _encode_class_in_image(root: Path, n: int = 2, size=(48, 24), seed: int = 2) -> None:
    """Cityscapes files whose red channel is 10 * (16-class index): a model can read the truth off the image."""
    rng = np.random.default_rng(seed)
    w, h = size
    ids_pool = np.array([7, 8, 11, 21, 23, 24, 26, 0])  # a few classes plus ignore
    for i in range(n):
        stem = f"testcity_{i:06d}_000019"
        ids = rng.choice(ids_pool, (h, w)).astype(np.uint8)
        cls = P16.target_lut[ids]
        image = np.zeros((h, w, 3), np.uint8)
        image[..., 0] = np.where(cls == 255, 250, cls.astype(np.int32) * 10)
        write_png(root / "leftImg8bit" / "val" / "testcity" / f"{stem}_leftImg8bit.png", image)
        write_png(root / "gtFine" / "val" / "testcity" / f"{stem}_gtFine_labelIds.png", ids)


def test_a_perfect_model_scores_100(trained, monkeypatch):
    tmp, *_ = trained
    _encode_class_in_image(tmp / "data" / "oracle")
    def oracle(self, x, heads=("seg", "depth", "density")):
        red = x[:, 0].float()  # the network's input is the RGB image
        cls = (red / 10).round().long().clamp(0, self.num_classes - 1)
        seg = F.one_hot(cls, self.num_classes).permute(0, 3, 1, 2).float() * 20
        ones = torch.ones_like(seg[:, :1])
        return SegDepthOutput(seg, ones if "depth" in heads else None, ones if "density" in heads else None)

    monkeypatch.setattr(SegDepthNet, "forward", oracle)
    result = cli(*common(tmp, "data.target_root=oracle", "data.target_size=[48,24]"), "--name", "oracle")
    assert result.exit_code == 0, result.output
    s = json.loads((tmp / "runs" / "t" / "eval" / "oracle" / "summary.json").read_text())
    assert s["miou"] == pytest.approx(1.0) and s["pixel_accuracy"] == pytest.approx(1.0)
    present = {"road", "sidewalk", "building", "vegetation", "sky", "person", "car"}
    assert {c for c, v in s["iou"].items() if v is not None} == present  # absent classes: null, out of the mean
    assert s["depth"] is None and s["name"] == "oracle"


def test_mapillary_letterbox_protocol(trained):
    """The release's geometry (data.target_fit = letterbox_top_left): padding right / bottom, scored at the input size."""
    tmp, model, _, _ = trained
    root = tmp / "data" / "mapillary"
    (root / "validation/images").mkdir(parents=True)
    (root / "validation/labels").mkdir(parents=True)
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)  # 4:3, not 2:1
    Image.fromarray(rgb).save(root / "validation/images/a.png")
    ids = rng.choice([13, 17, 27, 30, 55, 19, 45, 65], (30, 40)).astype(np.uint8)
    label = Image.fromarray(ids, mode="P")
    label.putpalette(list(range(256)) * 3)
    label.save(root / "validation/labels/a.png")
    # a 7-class checkpoint for the Mapillary protocol
    torch.manual_seed(1)
    m7 = build_model("light_resnet18", 7, light_width=16, head_channels=64).eval()
    ckpt = tmp / "m7.pt"
    save_checkpoint(ckpt, {"stage": "stage1", "iteration": 1, "protocol": "synthia2mapillary7", "num_classes": 7,
                           "backbone": "light_resnet18", "model": m7.state_dict()})
    result = cli(*common(tmp, "data.target_root=mapillary", "data.target_format=mapillary", "data.target_size=[40,20]",
                         "data.target_fit=letterbox_top_left", "experiment.protocol=synthia2mapillary7"),
                 "--checkpoint", str(ckpt), "--name", "map")
    assert result.exit_code == 0, result.output
    s = json.loads((tmp / "runs" / "t" / "eval" / "map" / "summary.json").read_text())
    assert s["label_resolution"] == "letterbox_top_left 40x20"
    # expected: 40x30 -> 26x20 (height fills, width int(40·20/30) = 26) at the left, 14 padding columns right, ignore
    inner = resize_nearest(torch.from_numpy(M7.target_lut[ids]), (26, 20)).numpy()
    gt = np.full((20, 40), 255, np.uint8)
    gt[:, :26] = inner
    image = torch.zeros(1, 3, 20, 40, dtype=torch.uint8)
    small = F.interpolate(torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), size=(20, 26), mode="bicubic",
                          align_corners=False, antialias=True).round().clamp(0, 255).to(torch.uint8)
    image[..., :26] = small
    with torch.no_grad():
        logits = m7(image).seg
    pred = F.interpolate(logits, size=(20, 40), mode="bilinear", align_corners=True).argmax(1)[0].numpy()
    keep = gt != 255
    expected = sk_confusion(gt[keep], pred[keep], labels=list(range(7)))
    np.testing.assert_array_equal(np.array(s["confusion_matrix"]), expected)
    assert "Table 2(b)" in (tmp / "runs" / "t" / "eval" / "map" / "report.md").read_text()
    assert s["miou_star"] is None


def test_source_eval_scores_synthia_depth(trained):
    tmp, model, _, _ = trained
    truth = write_synthia(tmp / "data" / "syn", n=2, size=(40, 24), seed=3)
    result = cli(*common(tmp, "data.source_root=syn", "data.source_size=[40,24]", "eval.num_figure_samples=0"),
                 "--source", "--name", "source")
    assert result.exit_code == 0, result.output
    s = json.loads((tmp / "runs" / "t" / "eval" / "source" / "summary.json").read_text())
    rows = []
    for stem, (raw, cm_) in sorted(truth.items()):
        image = read_rgb(tmp / "data" / "syn" / "RGB" / f"{stem}.png")
        with torch.no_grad():
            inv = model(image[None]).depth
        inv = F.interpolate(inv, size=(24, 40), mode="bilinear", align_corners=True)[0, 0].numpy().astype(np.float64)
        pred_m = np.clip((65536 / np.maximum(inv, 65536 / (655.35 * 100 + 1)) - 1) / 100, 0.01, 655.35)
        gt_inv = (65536 / (cm_.astype(np.float64) + 1)).astype(np.float32)  # the loader's encoding
        rows.append(_numpy_depth(pred_m, (65536 / gt_inv.astype(np.float64) - 1) / 100))
    got = [s["depth"][k] for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")]
    np.testing.assert_allclose(got, np.mean(rows, axis=0), rtol=2e-4, atol=1e-6)
    assert s["dataset"] == "synthia" and s["depth"]["num_images"] == 2
    assert np.array(s["confusion_matrix"]).sum() == sum((P16.source_lut[r] != 255).sum() for r, _ in truth.values())


def test_refuses_a_checkpoint_of_another_class_count(trained):
    tmp, *_ = trained
    result = cli(*common(tmp, "data.target_root=city", "data.target_size=[32,16]",
                         "experiment.protocol=synthia2cityscapes7"), "--out", str(tmp / "x"))
    assert result.exit_code == 1
    assert "16 classes" in result.output and "wants 7" in result.output
    assert "Traceback" not in result.output and not (tmp / "x" / "summary.json").exists()


def test_stage1_checkpoint_beside_self_training_goes_to_eval_stage1(trained, tmp_path):
    tmp, *_ = trained
    runs = tmp_path / "runs"
    (runs / "t" / "train").mkdir(parents=True)
    (runs / "t" / "self_train").mkdir(parents=True)
    src = tmp / "runs" / "t" / "train" / "checkpoint_final.pt"
    for d in ("train", "self_train"):
        (runs / "t" / d / "checkpoint_final.pt").symlink_to(src)
    args = common(tmp, "data.target_root=city", "data.target_size=[32,16]", "eval.num_figure_samples=0")
    args[3] = str(runs)
    result = cli(*args, "--checkpoint", str(runs / "t" / "train" / "checkpoint_final.pt"), "--max-images", "1")
    assert result.exit_code == 0, result.output
    s = json.loads((runs / "t" / "eval" / "stage1" / "summary.json").read_text())
    assert s["num_images"] == 1 and s["name"] == "stage1"
    assert not (runs / "t" / "eval" / "summary.json").exists()


def _summary(path: Path, experiment: str, iou: list, label: str | None = None) -> Path:
    iou = np.array(iou, dtype=float)
    s = {"format": "udaseg.eval.v1", "experiment": experiment, "label": label, "name": None,
         "protocol": "synthia2cityscapes16", "classes": list(P16.classes),
         "iou": {c: (None if np.isnan(v) else v) for c, v in zip(P16.classes, iou)},
         "miou": float(np.nanmean(iou)), "miou_star": float(np.nanmean(iou[list(P16.miou_star)]))}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(s))
    return path


def test_compare_gives_mean_and_std_over_seeds(tmp_path):
    rng = np.random.default_rng(0)
    ious = rng.uniform(0.1, 0.9, (4, 16))
    files = [_summary(tmp_path / f"s{i}" / "summary.json", f"m2_seed{i}", ious[i]) for i in range(3)]
    files.append(_summary(tmp_path / "other.json", "whatever", ious[3], label="M1"))
    out = tmp_path / "cmp.md"
    result = runner.invoke(app, ["compare", *map(str, files), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| m2 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "3"
    seeds = 100 * ious[:3]
    for k in (0, 9, 15):
        assert cells[2 + k] == f"{seeds[:, k].mean():.1f} ± {seeds[:, k].std(ddof=1):.1f}"
    mious = seeds.mean(1)
    assert cells[18] == f"{mious.mean():.1f} ± {mious.std(ddof=1):.1f}"
    stars = seeds[:, list(P16.miou_star)].mean(1)
    assert cells[19] == f"{stars.mean():.1f} ± {stars.std(ddof=1):.1f}"
    m1 = next(line for line in text.splitlines() if line.startswith("| M1 |"))
    assert f"| {100 * ious[3].mean():.1f} |" in m1 and "±" not in m1


def test_compare_refuses_mixed_protocols(tmp_path):
    a = _summary(tmp_path / "a.json", "a", np.full(16, 0.5))
    b = json.loads(a.read_text())
    b["protocol"] = "synthia2cityscapes7"
    (tmp_path / "b.json").write_text(json.dumps(b))
    result = runner.invoke(app, ["compare", str(a), str(tmp_path / "b.json")])
    assert result.exit_code == 1 and "different protocols" in result.output


def test_paper_rows_reproduce_their_printed_means():
    for name, values, miou, star in PAPER_16:
        assert np.mean(values) == pytest.approx(miou, abs=0.1), name
        assert np.mean(np.array(values)[list(P16.miou_star)]) == pytest.approx(star, abs=0.1), name
    for key, rows in PAPER_7.items():
        for name, values, miou, _ in rows:
            if key == ("synthia2cityscapes7", "full") and name.startswith("DADA"):
                # printed as-is: the published per-class values average 69.2, the printed mIoU is 70.4
                assert np.mean(values) == pytest.approx(69.2, abs=0.05) and miou == 70.4
                continue
            assert len(values) == 7 and np.mean(values) == pytest.approx(miou, abs=0.1), (key, name)


def test_depth_is_scored_beside_the_constant_source_median(trained, tmp_path):
    """With the run's gmm.h5 beside the checkpoint, eval scores the source median inverse depth
    everywhere as a baseline (checked against numpy) and the report says which one is better."""
    import shutil

    from udaseg.gmm import ClassGMM, DepthGMM, write_gmm

    tmp, model, truth, ckpt = trained
    run = tmp_path / "runs" / "t"
    shutil.copytree(ckpt.parent, run / "train")
    median_inv = 65536.0 / (25.0 * 100 + 1)  # 25 m
    gmms = [ClassGMM(np.ones(1), np.array([[1.0, 1.0, 50.0]]), np.eye(3)[None]) for _ in range(16)]
    write_gmm(run / "gmm" / "gmm.h5", DepthGMM("synthia2cityscapes16", tuple(P16.classes), gmms, "diag", (4, 2),
                                              (32, 16), np.ones(16, dtype=np.int64), invdepth_median=median_inv))
    args = common(tmp, "data.target_root=city", "data.target_size=[32,16]")
    args[args.index("--runs-root") + 1] = str(tmp_path / "runs")
    result = cli(*args)
    assert result.exit_code == 0, result.output
    s = json.loads((run / "eval" / "summary.json").read_text())
    rows = []
    for stem, (ids, disp) in sorted(truth.items()):
        with np.errstate(divide="ignore"):
            gt_m = np.where(disp > 1, 0.209313 * 2262.52 / ((disp.astype(np.float64) - 1) / 256), 0)
        gt_inv = np.where(gt_m > 0, (65536 / (gt_m * 100 + 1)).astype(np.float32), 0)
        gt_m = np.where(gt_inv > 0, (65536 / np.maximum(gt_inv, 1e-6) - 1) / 100, 0)
        rows.append(_numpy_depth(np.full_like(gt_m, 25.0), gt_m))
    base = s["depth_baseline"]
    assert base["metres"] == pytest.approx(25.0, rel=1e-5)
    got = [base[k] for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")]
    np.testing.assert_allclose(got, np.mean(rows, axis=0), rtol=2e-4, atol=1e-6)
    report = (run / "eval" / "report.md").read_text()
    assert "| constant 25.0 m (source median) |" in report
    gain = 1 - s["depth"]["abs_rel"] / base["abs_rel"]
    word = "below" if gain > 0 else "above"
    assert f"The depth head's AbsRel is {abs(gain):.0%} {word} the constant baseline's" in report


def test_compare_writes_setting_seed_results_json(tmp_path):
    rng = np.random.default_rng(1)
    ious = rng.uniform(0.1, 0.9, (3, 16))
    files = [_summary(tmp_path / f"m2_s{i}" / "summary.json", f"m2_s{i}", ious[i]) for i in range(2)]
    files.append(_summary(tmp_path / "adv_s0" / "summary.json", "advent_s0", ious[2], label="advent"))
    data = json.loads(files[0].read_text())
    data["checkpoint"] = {"path": "/runs/m2_s0/train/checkpoint_best.pt", "stage": "stage1", "iteration": 600}
    data["depth"] = {"abs_rel": 0.4, "num_images": 3}
    files[0].write_text(json.dumps(data))
    out = tmp_path / "results.json"
    result = runner.invoke(app, ["compare", *map(str, files), "--json", str(out)])
    assert result.exit_code == 0, result.output
    r = json.loads(out.read_text())
    assert set(r["settings"]) == {"m2", "advent"} and r["protocol"] == "synthia2cityscapes16"
    m2 = r["settings"]["m2"]
    assert m2["n"] == 2 and set(m2["seeds"]) == {"0", "1"}
    assert m2["seeds"]["0"]["checkpoint"] == {"kind": "best", "stage": "train", "iteration": 600}  # an older tag, today's name
    assert m2["seeds"]["1"]["checkpoint"]["kind"] == "other" and m2["seeds"]["0"]["depth"]["abs_rel"] == 0.4
    assert m2["seeds"]["1"]["miou"] == pytest.approx(np.mean(ious[1]))
    mean, std = m2["mean"]["miou"]
    mious = 100 * ious[:2].mean(1)
    assert mean == pytest.approx(mious.mean()) and std == pytest.approx(mious.std(ddof=1))
    assert m2["mean"]["iou"]["road"][0] == pytest.approx(100 * ious[:2, 0].mean())
    assert r["settings"]["advent"]["seeds"]["0"]["miou"] == pytest.approx(np.mean(ious[2]))


def test_compare_json_keeps_every_seed_when_evals_share_one_recipe_seed(tmp_path):
    """`make ablation` evals every seed's run with the recipe's experiment.seed (0): the JSON must
    take the seed from the checkpoint (or the name's suffix), not from the eval's recipe, and must
    refuse two summaries of one setting that claim the same seed rather than keep one of them."""
    rng = np.random.default_rng(2)
    ious = rng.uniform(0.1, 0.9, (4, 16))
    files = []
    for i in range(3):
        path = _summary(tmp_path / f"m2_s{i}" / "summary.json", f"m2_s{i}", ious[i])
        data = json.loads(path.read_text())
        data["config"] = {"experiment": {"seed": 0}}
        if i == 2:  # a newer summary: the checkpoint names its training seed, whatever the name says
            data["experiment"], data["checkpoint"] = "m2_final", {"seed": 2, "kind": "final"}
            data["label"] = "m2"
        path.write_text(json.dumps(data))
        files.append(path)
    out = tmp_path / "results.json"
    result = runner.invoke(app, ["compare", *map(str, files), "--json", str(out)])
    assert result.exit_code == 0, result.output
    m2 = json.loads(out.read_text())["settings"]["m2"]
    assert m2["n"] == 3 and sorted(m2["seeds"]) == ["0", "1", "2"]
    for i in range(3):
        assert m2["seeds"][str(i)]["miou"] == pytest.approx(np.mean(ious[i]))

    dup = _summary(tmp_path / "again" / "summary.json", "m2_seed1", ious[3])
    table, out2 = tmp_path / "t.md", tmp_path / "r2.json"
    result = runner.invoke(app, ["compare", *map(str, files), str(dup), "--out", str(table), "--json", str(out2)])
    assert result.exit_code != 0
    assert "both seed 1 of 'm2'" in result.output and str(dup) in result.output
    assert not table.exists() and not out2.exists()  # refused before writing anything


def test_checkpoint_knows_its_training_seed():
    from udaseg.checkpoint import training_seed
    from udaseg.config import Config, to_toml

    config = Config().with_overrides({"experiment.seed": 7})
    assert training_seed({"config_toml": to_toml(config)}) == 7
    assert training_seed({"config_toml": "not = [toml"}) is None and training_seed({}) is None
