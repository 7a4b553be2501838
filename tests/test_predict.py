"""`udaseg predict` on folders of mixed sizes with a corrupt file, resume, same-name files, label ids,
depth, confidence, the spatial prior and video; values checked against the network run directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fakedata import write_synthia
from udaseg.checkpoint import checkpoint_dict, load_model, save_checkpoint
from udaseg.cli import app
from udaseg.config import load_config
from udaseg.data.palette import palette_for
from udaseg.data.pngio import read_png_raw, read_rgb, write_png
from udaseg.data.protocols import IGNORE, get_protocol
from udaseg.data.transforms import resize_image
from udaseg.inference import labelid_table
from udaseg.model import model_from_config, normalize, upsample
from udaseg.pipeline.predict import PredictOptions, collect_inputs, run_predict

INPUT = (48, 32)  # the recipe's data.target_size: every image is resized to it
OVERRIDES = {"experiment.name": "pred", "experiment.protocol": "synthia2cityscapes16", "model.backbone": "light_resnet18",
             "model.light_width": 8, "model.head_channels": 16, "data.target_size": list(INPUT),
             "data.source_size": list(INPUT), "data.source_root": "syn", "data.num_workers": 0,
             "train.amp": False, "gmm.points_per_class": 500}
runner = CliRunner()


def make_checkpoint(path, protocol="synthia2cityscapes16", seed=0):
    """A light network with non-trivial BatchNorm statistics (a few train-mode passes), saved as a checkpoint."""
    cfg = load_config(None, {**OVERRIDES, "experiment.protocol": protocol})
    torch.manual_seed(seed)
    model = model_from_config(cfg.model, get_protocol(protocol).num_classes).train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 3, INPUT[1], INPUT[0]) * 2)
    save_checkpoint(path, checkpoint_dict(cfg, "stage1", 1, model.eval()))
    return cfg


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_ckpt")
    cfg = make_checkpoint(root / "train" / "checkpoint_final.pt")
    return root / "train" / "checkpoint_final.pt", cfg


@pytest.fixture
def images(tmp_path):
    """Mixed sizes, nested folders, a JPEG, two files named x.png in different folders, a corrupt
    and a truncated PNG."""
    rng = np.random.default_rng(1)
    root = tmp_path / "in"
    sizes = {"a/x.png": (70, 40), "b/x.png": (33, 25), "b/deep/y.png": INPUT, "c.png": (64, 96)}
    for rel, (w, h) in sizes.items():
        write_png(root / rel, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)).save(root / "a" / "z.jpg", quality=95)
    (root / "b" / "corrupt.png").write_bytes(b"this is not a png")
    data = (root / "c.png").read_bytes()
    (root / "b" / "truncated.png").write_bytes(data[: len(data) // 2])
    return root


def reference(cfg, ckpt_path, path):
    """The prediction computed directly: resize to the input size, forward, upsample, argmax."""
    model, _ = load_model(ckpt_path, cfg, torch.device("cpu"))
    image = read_rgb(path)
    with torch.no_grad():
        out = model(normalize(resize_image(image, INPUT)[None], cfg.model.backbone), heads=("seg", "depth"))
    hw = tuple(image.shape[-2:])
    probs = torch.softmax(upsample(out.seg, hw), 1)
    conf, labels = probs.max(1)
    return image, labels[0].numpy().astype(np.uint8), conf[0].numpy(), upsample(out.depth, hw)[0, 0].numpy()


def png(path) -> np.ndarray:
    t = read_png_raw(path)
    return (t.to(torch.int32) if t.dtype == torch.uint16 else t).permute(1, 2, 0).numpy().squeeze(-1) \
        if t.shape[0] == 1 else t.permute(1, 2, 0).numpy()


def test_folder_of_mixed_sizes_with_corrupt_files_and_resume(ckpt, images, tmp_path):
    ckpt_path, cfg = ckpt
    out = tmp_path / "out"
    args = ["predict", str(images), "--checkpoint", str(ckpt_path), "--out", str(out), "--workers", "0",
            "--batch-size", "3"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "predicted 5 image(s), skipped 0 already written, 2 failed" in result.output
    failures = [line for line in result.output.splitlines() if line.startswith("failed:")]
    assert len(failures) == 2 and all("cannot decode image" in f and "re-download" in f for f in failures), failures
    assert "corrupt.png" in failures[0] and "truncated.png" in failures[1]
    palette = palette_for(get_protocol("synthia2cityscapes16"))
    for key, src in (("a/x", "a/x.png"), ("b/x", "b/x.png"), ("b/deep/y", "b/deep/y.png"), ("c", "c.png"),
                     ("a/z", "a/z.jpg")):
        image, labels, _, _ = reference(cfg, ckpt_path, images / src)
        got = png(out / "labels" / f"{key}.png")
        assert got.shape == image.shape[1:], key  # the image's own resolution
        assert (got == labels).mean() > 0.999, key  # batched in threes = one by one (ties aside)
        colour = png(out / "color" / f"{key}.png")
        np.testing.assert_array_equal(colour, palette[got])
        blend = png(out / "overlay" / f"{key}.png").astype(int)
        expect = np.round(image.permute(1, 2, 0).numpy() * 0.5 + palette[got] * 0.5)
        assert np.abs(blend - expect).max() <= 1
    record = json.loads((out / "predict.json").read_text())
    assert record["last_call"]["written"] == 5 and len(record["last_call"]["failed"]) == 2
    assert record["classes"][0] == "road"
    assert not (out / "labels" / "b" / "corrupt.png").exists()

    # resume: nothing is redone, files untouched; a missing output is redone alone
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    (out / "color" / "c.png").unlink()
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "predicted 1 image(s), skipped 4 already written, 2 failed" in result.output
    assert (out / "color" / "c.png").is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p.name != "c.png" or "color" not in p.parts)
    # --overwrite redoes everything; without the broken files the exit code is 0
    (images / "b" / "corrupt.png").unlink()
    (images / "b" / "truncated.png").unlink()
    result = runner.invoke(app, args + ["--overwrite", "--no-color"])
    assert result.exit_code == 0 and "predicted 5 image(s), skipped 0" in result.output


def test_inputs_files_globs_and_collisions(tmp_path):
    for rel in ("one/x.png", "two/x.png", "two/x.jpg", "two/sub/w.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    items, problems = collect_inputs([str(tmp_path / "one" / "x.png"), str(tmp_path / "two"),
                                      str(tmp_path / "two" / "**" / "*.png"), str(tmp_path / "nope")])
    keys = sorted(i.key for i in items)
    assert keys == ["one/x", "two/sub/w", "two/x_jpg", "two/x_png"]  # unique; duplicates of the glob dropped
    assert problems == [(str(tmp_path / "nope"), "no such file or folder")]
    result = runner.invoke(app, ["predict", str(tmp_path / "nope"), "--checkpoint", str(tmp_path / "c.pt"),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "c.pt: checkpoint not found" in result.output


@pytest.mark.parametrize("protocol", ["synthia2cityscapes16", "synthia2cityscapes7"])
def test_labelids_round_trip_through_the_cityscapes_protocol(protocol, cityscapes_sample, tmp_path):
    proto = get_protocol(protocol)
    table = labelid_table(proto)
    # every class -> a raw id of that class; ignore -> 0 (Cityscapes 'unlabeled')
    assert [int(proto.target_lut[table[c]]) for c in range(proto.num_classes)] == list(range(proto.num_classes))
    assert table[IGNORE] == 0
    gt = read_png_raw(cityscapes_sample / "frankfurt_000000_000294_gtFine_labelIds.png")[0].numpy()
    classes = proto.target_lut[gt]
    np.testing.assert_array_equal(proto.target_lut[table[classes]], classes)  # raw -> class -> raw -> class

    ckpt = tmp_path / "ckpt.pt"
    make_checkpoint(ckpt, protocol)
    image = cityscapes_sample / "frankfurt_000000_000294_leftImg8bit.png"
    result = runner.invoke(app, ["predict", str(image), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                                 "--labelids", "--workers", "0"])
    assert result.exit_code == 0, result.output
    labels = png(tmp_path / "o" / "labels" / "frankfurt_000000_000294_leftImg8bit.png")
    ids = png(tmp_path / "o" / "labelids" / "frankfurt_000000_000294_leftImg8bit.png")
    assert ids.shape == gt.shape == labels.shape  # 256x128, the label's own resolution
    assert set(np.unique(ids)) <= set(np.flatnonzero(proto.target_lut != IGNORE))
    np.testing.assert_array_equal(proto.target_lut[ids], labels)


def test_depth_and_confidence_maps(ckpt, tmp_path):
    ckpt_path, cfg = ckpt
    rng = np.random.default_rng(3)
    write_png(tmp_path / "in" / "p.png", rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    result = run_predict(cfg, ckpt_path, [str(tmp_path / "in")], tmp_path / "o",
                         PredictOptions(depth=True, confidence=True, color=False, progress=False))
    assert result.ok and result.written == 1
    image, labels, conf, inv = reference(cfg, ckpt_path, tmp_path / "in" / "p.png")
    depth = read_png_raw(tmp_path / "o" / "depth" / "p.png")
    assert depth.dtype == torch.uint16 and depth.shape == (1, 40, 56)
    metres = np.where(inv > 0, (65536.0 / np.maximum(inv, 1e-6) - 1) / 100, 0)
    expect_cm = np.clip(np.round(metres * 100), 0, 65535)
    assert np.abs(depth[0].to(torch.int32).numpy() - expect_cm).max() <= 1
    confidence = read_png_raw(tmp_path / "o" / "confidence" / "p.png")[0].to(torch.int32).numpy() / 65535
    assert np.abs(confidence - conf).max() < 1e-4
    assert png(tmp_path / "o" / "depth_color" / "p.png").shape == (40, 56, 3)
    assert not (tmp_path / "o" / "color").exists()


def test_refine_applies_the_spatial_prior_with_rescaled_thresholds(ckpt, tmp_path):
    ckpt_path, cfg = ckpt
    data = tmp_path / "data"
    write_synthia(data / "syn", 3, (48, 32))
    from udaseg.pipeline.fit_gmm import run_fit_gmm

    run_fit_gmm(cfg, data, tmp_path / "runs", plots=False, progress=False)
    gmm = tmp_path / "runs" / "pred" / "gmm" / "gmm.h5"
    rng = np.random.default_rng(4)
    write_png(tmp_path / "in" / "q.png", rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))
    base = ["predict", str(tmp_path / "in"), "--checkpoint", str(ckpt_path), "--workers", "0", "--no-color", "--gmm", str(gmm)]
    plain = runner.invoke(app, base + ["--out", str(tmp_path / "plain")])
    refined = runner.invoke(app, base + ["--out", str(tmp_path / "ref"), "--refine", "--set", "pseudolabel.conf_threshold=0.0",
                                         "--set", "pseudolabel.n_b0=0", "--set", "pseudolabel.n_b1=0"])
    assert plain.exit_code == 0 and refined.exit_code == 0, refined.output
    # thresholds 0 and no confidence floor: the prior keeps every pixel
    np.testing.assert_array_equal(png(tmp_path / "plain" / "labels" / "q.png"), png(tmp_path / "ref" / "labels" / "q.png"))
    # a region threshold larger than the image (rescaled from 1280x760 to 48x32 it is still > 48*32): all dropped
    big = runner.invoke(app, base + ["--out", str(tmp_path / "big"), "--refine", "--set", "pseudolabel.conf_threshold=0.0",
                                     "--set", "pseudolabel.n_b0=1e6"])
    assert big.exit_code == 0
    assert (png(tmp_path / "big" / "labels" / "q.png") == IGNORE).all()
    _, labels, conf, _ = reference(cfg, ckpt_path, tmp_path / "in" / "q.png")
    thr = float(np.quantile(conf, 0.5))
    half = runner.invoke(app, base + ["--out", str(tmp_path / "half"), "--refine", "--set", f"pseudolabel.conf_threshold={thr}",
                                      "--set", "pseudolabel.n_b0=0", "--set", "pseudolabel.n_b1=0"])
    assert half.exit_code == 0
    got = png(tmp_path / "half" / "labels" / "q.png")
    np.testing.assert_array_equal(got[conf < thr - 1e-6], IGNORE)
    np.testing.assert_array_equal(got[conf > thr + 1e-6], labels[conf > thr + 1e-6])
    missing = runner.invoke(app, ["predict", str(tmp_path / "in"), "--checkpoint", str(ckpt_path), "--refine",
                                  "--out", str(tmp_path / "x"), "--runs-root", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "--gmm" in missing.output


def test_video_input_gives_one_png_set_per_frame_and_an_mp4(ckpt, tmp_path):
    av = pytest.importorskip("av")
    ckpt_path, _ = ckpt
    clip = tmp_path / "in" / "clip.mp4"
    clip.parent.mkdir(parents=True)
    container = av.open(str(clip), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    rng = np.random.default_rng(5)
    for _ in range(6):
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    out = tmp_path / "o"
    args = ["predict", str(clip), "--checkpoint", str(ckpt_path), "--out", str(out), "--video-out", "--workers", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    frames = sorted((out / "labels" / "clip").glob("*.png"))
    assert [f.name for f in frames] == [f"{i:06d}.png" for i in range(6)]
    assert png(frames[0]).shape == (48, 64)
    with av.open(str(out / "video" / "clip.mp4")) as written:
        decoded = [f.to_ndarray(format="rgb24") for f in written.decode(video=0)]
    assert len(decoded) == 6 and decoded[0].shape == (48, 64, 3)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "skipped 1 already written" in again.output


def test_a_letterboxed_target_is_predicted_letterboxed(ckpt, tmp_path):
    """data.target_fit = letterbox (the Mapillary recipes): the image is padded to the input size as
    in training, and only its own part of the logits is resized back to it."""
    from udaseg.data.transforms import letterbox_geometry, pad_to

    ckpt_path, cfg = ckpt
    rng = np.random.default_rng(6)
    write_png(tmp_path / "in" / "wide.png", rng.integers(0, 256, (20, 80, 3), dtype=np.uint8))
    result = runner.invoke(app, ["predict", str(tmp_path / "in"), "--checkpoint", str(ckpt_path), "--out",
                                 str(tmp_path / "o"), "--workers", "0", "--no-color",
                                 "--set", 'data.target_fit="letterbox_top_left"'])
    assert result.exit_code == 0, result.output
    model, _ = load_model(ckpt_path, cfg, torch.device("cpu"))
    image = read_rgb(tmp_path / "in" / "wide.png")
    inner, offset = letterbox_geometry((80, 20), INPUT, "top_left")
    assert offset == (0, 0) and inner == (48, 12)
    x = pad_to(resize_image(image, inner), INPUT, offset, 0)
    with torch.no_grad():
        seg = upsample(model(normalize(x[None], cfg.model.backbone), heads=("seg",)).seg, (INPUT[1], INPUT[0]))
    expect = upsample(seg[..., :12, :48], (20, 80)).argmax(1)[0].numpy()
    assert (png(tmp_path / "o" / "labels" / "wide.png") == expect).mean() > 0.999


def _tree(root, names, seed=7):
    rng = np.random.default_rng(seed)
    for name in names:
        write_png(root / name, rng.integers(0, 256, (24, 36, 3), dtype=np.uint8))
    return root


@pytest.mark.parametrize("inside", [False, True])
def test_out_in_an_input_folder_never_reads_its_own_outputs(ckpt, tmp_path, inside):
    """--out equal to (or inside) the input folder: the second call finds its own labels/, color/,
    overlay/ PNGs there and must neither predict them nor key anything after them."""
    ckpt_path, _ = ckpt
    images = _tree(tmp_path / "in", ["a.png", "sub/b.png"])
    out = images / "preds" if inside else images
    args = ["predict", str(images), "--checkpoint", str(ckpt_path), "--out", str(out), "--workers", "0", "--confidence"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0 and "predicted 2 image(s), skipped 0" in first.output, first.output
    files = {p: p.stat().st_mtime_ns for p in images.rglob("*") if p.is_file() and p.name != "predict.json"}
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "predicted 0 image(s), skipped 2 already written, 0 failed" in second.output, second.output
    glob_call = runner.invoke(app, ["predict", str(images / "**" / "*.png"), "--checkpoint", str(ckpt_path), "--out",
                                    str(out), "--workers", "0", "--confidence"])
    assert glob_call.exit_code == 0 and "predicted 0 image(s), skipped 2" in glob_call.output, glob_call.output
    assert {p: p.stat().st_mtime_ns for p in images.rglob("*") if p.is_file() and p.name != "predict.json"} == files  # no file new or touched
    for kind in ("labels", "color", "overlay", "confidence"):
        assert sorted(p.relative_to(out / kind).as_posix() for p in (out / kind).rglob("*.png")) == ["a.png", "sub/b.png"]
    record = json.loads((out / "predict.json").read_text())
    assert sorted(record["predictions"]) == ["a", "sub/b"]
    named = runner.invoke(app, ["predict", str(out / "color" / "a.png"), "--checkpoint", str(ckpt_path), "--out", str(out)])
    assert named.exit_code == 1 and "color/a.png: is one of predict's own outputs in --out" in named.output


def test_predict_json_describes_every_output_of_its_folder_across_calls(ckpt, tmp_path):
    ckpt_path, _ = ckpt
    out = tmp_path / "out"
    one = _tree(tmp_path / "one", ["a.png"], seed=8)
    two = _tree(tmp_path / "two", ["b.png", "c.png"], seed=9)
    base = ["--checkpoint", str(ckpt_path), "--out", str(out), "--workers", "0"]
    assert runner.invoke(app, ["predict", str(one), *base]).exit_code == 0
    assert runner.invoke(app, ["predict", str(two / "b.png"), str(two / "c.png"), *base, "--no-color", "--depth"]).exit_code == 0
    record = json.loads((out / "predict.json").read_text())
    assert record["format"] == "udaseg.predict.v2" and record["protocol"] == "synthia2cityscapes16"
    predictions = record["predictions"]
    assert sorted(predictions) == ["a", "b", "c"]
    assert predictions["a"]["input"] == str((one / "a.png").resolve())
    assert predictions["b"]["input"] == str((two / "b.png").resolve())
    assert predictions["a"]["outputs"] == {k: f"{k}/a.png" for k in ("labels", "color", "overlay")}
    assert predictions["c"]["outputs"] == {k: f"{k}/c.png" for k in ("labels", "depth", "depth_color")}
    # every PNG in the folder is listed, and every listed file exists
    listed = sorted(path for entry in predictions.values() for path in entry["outputs"].values())
    assert listed == sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert {e["checkpoint"] for e in predictions.values()} == {str(ckpt_path.resolve())}
    assert record["checkpoints"][str(ckpt_path.resolve())]["stage"] == "stage1"
    assert predictions["a"]["input_size"] == list(INPUT) and predictions["a"]["refine"] is False
    assert record["last_call"] == {"written": 2, "skipped": 0, "videos": 0, "failed": []}

    # another image under a key the folder already holds: refused, nothing written
    clash = _tree(tmp_path / "three", ["a.png"], seed=10)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    refused = runner.invoke(app, ["predict", str(clash), *base])
    assert refused.exit_code == 1 and "hold the prediction of" in refused.output and "--overwrite" in refused.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # a checkpoint of another protocol into this folder: refused, nothing written
    other = tmp_path / "c7.pt"
    make_checkpoint(other, "synthia2cityscapes7")
    refused = runner.invoke(app, ["predict", str(tmp_path / "three"), "--checkpoint", str(other), "--out", str(out)])
    assert refused.exit_code == 1, refused.output
    assert "predict.json: this folder holds synthia2cityscapes16 predictions" in refused.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    # an unreadable record is not replaced
    (out / "predict.json").write_text("{not json")
    refused = runner.invoke(app, ["predict", str(clash), *base, "--overwrite"])
    assert refused.exit_code == 1 and "predict.json: not a readable predict record" in refused.output
    assert (out / "predict.json").read_text() == "{not json"


def test_an_interrupted_call_records_what_it_wrote(ckpt, tmp_path, monkeypatch):
    """Ctrl-C after the first batch: the finished images are in predict.json, so a rerun (which
    skips them) still lists them with their checkpoint."""
    import udaseg.pipeline.predict as predict_module

    ckpt_path, cfg = ckpt
    images = _tree(tmp_path / "in", ["a.png", "b.png", "c.png"], seed=12)
    real = predict_module.OutputWriter.add
    calls = []

    def add_then_interrupt(self, prepared, pred):
        real(self, prepared, pred)
        calls.append(prepared.tag.item.key)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(predict_module.OutputWriter, "add", add_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_predict(cfg, ckpt_path, [str(images)], tmp_path / "o", PredictOptions(progress=False, batch_size=1))
    record = json.loads((tmp_path / "o" / "predict.json").read_text())
    assert sorted(record["predictions"]) == ["a", "b"]
    monkeypatch.setattr(predict_module.OutputWriter, "add", real)
    result = run_predict(cfg, ckpt_path, [str(images)], tmp_path / "o", PredictOptions(progress=False))
    assert result.written == 1 and result.skipped == 2
    record = json.loads((tmp_path / "o" / "predict.json").read_text())
    assert {k: e["checkpoint"] for k, e in record["predictions"].items()} == {k: str(ckpt_path.resolve()) for k in "abc"}
