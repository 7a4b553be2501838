"""`udaseg synth`: formats, determinism, pinhole geometry, the domain-shift options, and the loaders."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from udaseg.data.pngio import read_png_raw
from udaseg.data.protocols import PROTOCOLS
from udaseg.errors import UdasegError
from udaseg.synth import CameraConfig, ObjectRates, StyleConfig, SynthConfig
from udaseg.synth.generate import generate, item_paths, render_item

SYNTHIA_IDS = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 15, 16, 17, 19, 21, 22}
CITYSCAPES_IDS = {0, 7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 28, 32, 33}
TINY = SynthConfig(seed=3, source_size=(64, 40), target_size=(64, 32), num_source=3, num_target_train=3,
                   num_target_val=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "bench"
    generate(out, TINY, workers=1, progress=False)
    return out


def png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) straight from the IHDR chunk."""
    data = path.read_bytes()[:29]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ formats and names


def test_source_files_have_synthia_format(tiny: Path) -> None:
    for i in range(TINY.num_source):
        name = f"{i:07d}.png"
        rgb, lab, dep = (tiny / "source" / "RGB" / name, tiny / "source" / "GT" / "LABELS" / name,
                         tiny / "source" / "Depth" / "Depth" / name)
        assert png_header(rgb) == (64, 40, 8, 2)
        assert png_header(lab) == (64, 40, 16, 2)
        assert png_header(dep) == (64, 40, 16, 2)
        label, depth = read_png_raw(lab).numpy(), read_png_raw(dep).numpy()
        assert label.shape == (3, 40, 64) and label.dtype == np.uint16
        assert set(np.unique(label[0]).tolist()) <= SYNTHIA_IDS
        assert (label[2] == 0).all()
        stuff = np.isin(label[0], [1, 3, 4, 22])  # sky, road, sidewalk, lanemarking carry no instance
        assert (label[1][stuff] == 0).all()
        assert (label[1][label[0] == 8] > 0).all()  # every car pixel belongs to a car instance
        assert (depth[0] == depth[1]).all() and (depth[1] == depth[2]).all()
        assert (depth[0][label[0] == 1] == 65535).all()  # sky at the far value


def test_target_files_have_cityscapes_format(tiny: Path) -> None:
    for split, n, cities in (("train", 3, TINY.train_cities), ("val", 2, TINY.val_cities)):
        for i in range(n):
            city = cities[i % len(cities)]
            stem = f"{city}_{i:06d}_000019"
            base = tiny / "target"
            rgb = base / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            lab = base / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            disp = base / "disparity" / split / city / f"{stem}_disparity.png"
            cam = json.loads((base / "camera" / split / city / f"{stem}_camera.json").read_text())
            assert png_header(rgb) == (64, 32, 8, 2)
            assert png_header(lab) == (64, 32, 8, 0)
            assert png_header(disp) == (64, 32, 16, 0)
            assert set(np.unique(read_png_raw(lab).numpy()).tolist()) <= CITYSCAPES_IDS
            assert set(cam) == {"extrinsic", "intrinsic"}
            assert set(cam["extrinsic"]) == {"baseline", "pitch", "roll", "x", "y", "yaw", "z"}
            assert set(cam["intrinsic"]) == {"fx", "fy", "u0", "v0"}
            # fx in pixels of the written image, from the horizontal field of view
            assert cam["intrinsic"]["fx"] == pytest.approx(32.0 / np.tan(np.radians(TINY.target_camera.hfov / 2)))
            assert TINY.target_camera.height[0] <= cam["extrinsic"]["z"] <= TINY.target_camera.height[1]
    assert (tiny / "contact_sheet.png").is_file()
    meta = json.loads((tiny / "synth.json").read_text())
    assert meta["complete"] and SynthConfig.from_dict(meta["config"]) == TINY


def test_contact_sheet_titles_each_half_and_shows_a_class_legend(tiny: Path) -> None:
    """Title text over the source half and over the target half (which starts after the wide white
    gap between the halves), and a swatch of every class colour below the images."""
    from udaseg.data.palette import palette_for
    from udaseg.data.pngio import read_rgb
    from udaseg.synth.generate import TITLE_HEIGHT

    sheet = read_rgb(tiny / "contact_sheet.png").permute(1, 2, 0).numpy().astype(int)
    pairs = min(4, TINY.num_source, TINY.num_target_train)
    body = sheet[TITLE_HEIGHT:TITLE_HEIGHT + 128]  # the first pair of rows (128 px high)
    white_cols = (body == 255).all(axis=(0, 2))
    runs, start = [], None  # runs of all-white columns: 4 px between panels, wider between the halves
    for x, white in enumerate([*white_cols, False]):
        if white and start is None:
            start = x
        elif not white and start is not None:
            runs.append((start, x))
            start = None
    split = max(runs, key=lambda r: r[1] - r[0])
    assert split[1] - split[0] > 4
    title_ink = (sheet[:TITLE_HEIGHT].max(axis=2) < 100).any(axis=0)  # dark text pixels per column
    assert title_ink[:40].any() and not title_ink[split[0] - 4:split[1]].any() and title_ink[split[1]:split[1] + 40].any()
    below = sheet[TITLE_HEIGHT + pairs * 132:].reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(below, axis=0)}
    for i, name in enumerate(PROTOCOLS["synthia2cityscapes16"].classes):
        assert tuple(int(v) for v in palette_for(16)[i]) in colours, name


# ------------------------------------------------------------------ determinism and the folder policy


def test_same_seed_same_bytes_other_seed_differs(tiny: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again", TINY, workers=2, progress=False)  # parallel must equal serial
    assert all_files(tmp_path / "again") == all_files(tiny)
    other = dataclasses.replace(TINY, seed=4, num_source=1, num_target_train=1, num_target_val=0)
    generate(tmp_path / "other", other, workers=1, progress=False)
    for rel in ("source/RGB/0000000.png", "source/GT/LABELS/0000000.png", "source/Depth/Depth/0000000.png"):
        assert (tmp_path / "other" / rel).read_bytes() != (tiny / rel).read_bytes()


def test_output_folder_policy(tiny: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UdasegError, match="not a `udaseg synth` output"):
        generate(foreign, TINY, progress=False)
    out = tmp_path / "resume"
    small = dataclasses.replace(TINY, num_source=2, num_target_train=1, num_target_val=1)
    generate(out, small, workers=1, progress=False)
    (out / "source" / "RGB" / "0000001.png").unlink()  # an interrupted run
    meta = generate(out, small, workers=1, progress=False)
    assert meta["resumed"] and meta["written"] == 1
    with pytest.raises(UdasegError, match="different parameters"):
        generate(out, dataclasses.replace(small, seed=9), progress=False)
    meta = generate(out, dataclasses.replace(small, seed=9, num_source=1), progress=False, overwrite=True)
    assert meta["written"] == 3 and not (out / "source" / "RGB" / "0000001.png").exists()


# ------------------------------------------------------------------ depth encodings and geometry


def test_disparity_and_centimetres_match_rendered_depth(tiny: Path) -> None:
    for i in range(TINY.num_target_val):
        frame = render_item(TINY, "target-val", i)
        paths = item_paths(tiny, TINY, "target-val", i)
        p = read_png_raw(paths["disparity"])[0].numpy().astype(np.float64)
        cam = json.loads(paths["camera"].read_text())
        bf = cam["extrinsic"]["baseline"] * cam["intrinsic"]["fx"]
        label = read_png_raw(paths["label"])[0].numpy()
        assert ((p == 0) == (label == 23)).all()  # invalid disparity exactly on sky
        valid = p > 0
        disparity = (p[valid] - 1) / 256.0
        np.testing.assert_array_less(np.abs(disparity - bf / frame.depth[valid].astype(np.float64)), 0.5 / 256 + 1e-9)
        near = valid & (frame.depth < 30)
        recovered = bf / ((p[near] - 1) / 256.0)
        # depth error from half a disparity step: dZ = Z^2 / (bf) * 0.5/256
        bound = frame.depth[near] ** 2 / bf * (0.5 / 256) * 1.01 + 1e-6
        assert (np.abs(recovered - frame.depth[near]) <= bound).all()
    for i in range(TINY.num_source):
        frame = render_item(TINY, "source", i)
        cm = read_png_raw(item_paths(tiny, TINY, "source", i)["depth"])[0].numpy().astype(np.float64)
        assert np.abs(cm / 100.0 - frame.depth).max() <= 0.005 + 1e-6


def level_camera() -> SynthConfig:
    cam = CameraConfig(height=(1.4, 1.4), pitch=(0.0, 0.0), hfov=60.0, yaw=0.0)
    return dataclasses.replace(TINY, target_size=(192, 96), target_camera=cam)


def test_pinhole_geometry_of_road_sky_and_cars() -> None:
    cfg = level_camera()
    cars_checked = 0
    for i in range(4):
        f = render_item(cfg, "target-train", i)
        cam = f.camera
        rows = np.arange(f.label.shape[0], dtype=np.float64)[:, None] * np.ones_like(f.depth)
        # every road pixel lies on the plane Y = 0: Z = fy * h / (v - v0)
        road = np.isin(f.label, [3, 22])
        np.testing.assert_allclose(f.depth[road], cam.fy * 1.4 / (rows[road] - cam.v0), rtol=1e-4)
        h = f.label.shape[0]
        assert road[h // 2:].mean() > 0.2 and not road[: h // 2].any()  # road below the horizon only
        sky = f.label == 1
        assert not sky[h // 2:].any() and sky[: h // 4].mean() > 0.0  # sky above the horizon
        # a car stands on the road: its lowest pixel is the ground contact, v = v0 + fy * h / Z
        for inst in np.unique(f.inst[f.label == 8]):
            vs, us = np.nonzero((f.inst == inst) & (f.label == 8))
            bottom = vs.max()
            if bottom >= h - 1 or (vs == bottom).sum() < 2:
                continue  # cut by the image border
            if not np.isin(f.label[bottom + 1, us[vs == bottom]], [3, 22]).all():
                continue  # bottom hidden behind something nearer
            z = float(np.median(f.depth[bottom, us[vs == bottom]]))
            expected = cam.v0 + cam.fy * 1.4 / z
            assert abs(bottom - expected) <= 1.0 + cam.fy * 0.1 / z, (inst, bottom, expected)
            cars_checked += 1
    assert cars_checked >= 5


def test_both_domains_contain_most_classes() -> None:
    cfg = dataclasses.replace(TINY, source_size=(160, 95), target_size=(160, 80))
    proto = PROTOCOLS["synthia2cityscapes16"]
    for domain in ("source", "target-train"):
        seen: set[int] = set()
        for i in range(6):
            seen |= set(np.unique(proto.source_lut[render_item(cfg, domain, i).label]).tolist())
        seen.discard(255)
        assert len(seen) >= 14, (domain, sorted(set(range(16)) - seen))


# ------------------------------------------------------------------ the domain-shift options


def test_style_changes_appearance_not_geometry() -> None:
    plain = dataclasses.replace(TINY, target_style=StyleConfig("cityscapes", noise=0.0, blur=0.0))
    other = dataclasses.replace(TINY, target_style=StyleConfig("synthia"))
    a, b, c = (render_item(cfg, "target-train", 0) for cfg in (TINY, plain, other))
    assert (a.label == b.label).all() and (a.label == c.label).all() and (a.depth == c.depth).all()
    assert np.abs(a.rgb.astype(int) - b.rgb.astype(int)).mean() > 1.0  # noise + blur off
    assert np.abs(a.rgb.astype(int) - c.rgb.astype(int)).mean() > 10.0  # another palette and lighting


def test_domains_differ_in_appearance() -> None:
    """Same street, the two presets: the target preset is darker and less saturated."""
    cfg = dataclasses.replace(TINY, target_style=StyleConfig("synthia"))
    src_look = [render_item(cfg, "target-train", i).rgb.astype(float) / 255 for i in range(3)]
    tgt_look = [render_item(TINY, "target-train", i).rgb.astype(float) / 255 for i in range(3)]

    def saturation(x: np.ndarray) -> float:
        return float((x.max(-1) - x.min(-1)).mean())

    assert np.mean([saturation(x) for x in tgt_look]) < 0.8 * np.mean([saturation(x) for x in src_look])


def test_camera_options_change_geometry() -> None:
    base = level_camera()
    high = dataclasses.replace(base, target_camera=dataclasses.replace(base.target_camera, height=(2.8, 2.8)))
    wide = dataclasses.replace(base, target_camera=dataclasses.replace(base.target_camera, hfov=90.0))
    f0, f1, f2 = (render_item(c, "target-train", 1) for c in (base, high, wide))
    assert f2.camera.fx == pytest.approx(96.0 / np.tan(np.radians(45.0)))
    assert f0.camera.fx == pytest.approx(96.0 / np.tan(np.radians(30.0)))
    row = f0.label.shape[0] - 1
    road0, road1 = np.isin(f0.label[row], [3, 22]), np.isin(f1.label[row], [3, 22])
    # same bottom row, camera twice as high -> the road there is twice as far
    np.testing.assert_allclose(f1.depth[row][road0 & road1], 2.0 * f0.depth[row][road0 & road1], rtol=1e-4)


def test_object_rates_control_frequencies() -> None:
    none = dataclasses.replace(TINY, source_objects=ObjectRates(persons=0.0, riders=0.0, cars=0.0, buses=0.0))
    many = dataclasses.replace(TINY, source_objects=ObjectRates(persons=4.0))
    few_px = sum(int(np.isin(render_item(none, "source", i).label, [8, 10, 17, 19]).sum()) for i in range(3))
    many_px = sum(int((render_item(many, "source", i).label == 10).sum()) for i in range(3))
    assert few_px == 0 and many_px > 0


# ------------------------------------------------------------------ the loaders and the command


def test_project_loaders_read_generated_files(tiny: Path) -> None:
    synthia = pytest.importorskip("udaseg.data.synthia")
    cityscapes = pytest.importorskip("udaseg.data.cityscapes")
    proto = PROTOCOLS["synthia2cityscapes16"]
    src = synthia.SynthiaDataset(tiny / "source", proto)
    assert len(src) == TINY.num_source
    s = src[0]
    raw = read_png_raw(tiny / "source" / "GT" / "LABELS" / "0000000.png")[0].numpy()
    np.testing.assert_array_equal(s["label"].numpy(), proto.source_lut[raw])
    cm = read_png_raw(tiny / "source" / "Depth" / "Depth" / "0000000.png")[0].numpy().astype(np.float64)
    np.testing.assert_allclose(s["depth"].numpy(), 65536.0 / (cm + 1.0), rtol=1e-5)
    tgt = cityscapes.CityscapesDataset(tiny / "target", "val", proto, load_depth=True)
    assert len(tgt) == TINY.num_target_val
    t = tgt[0]
    frame = render_item(TINY, "target-val", int(t["name"].split("_")[1]))
    np.testing.assert_array_equal(t["label"].numpy(), proto.target_lut[read_png_raw(
        item_paths(tiny, TINY, "target-val", int(t["name"].split("_")[1]))["label"])[0].numpy()])
    near = (frame.depth < 20) & ~frame.sky
    inv = 65536.0 / (frame.depth[near] * 100.0 + 1.0)
    np.testing.assert_allclose(t["depth"].numpy()[near], inv, rtol=0.05)
    assert (t["depth"].numpy()[frame.sky] == 0).all()


def test_command_writes_and_prints_next_step(tmp_path: Path) -> None:
    from udaseg.cli import app

    out = tmp_path / "cli"
    args = ["synth", str(out), "--source-size", "48x32", "--target-size", "48x24", "--num-source", "1",
            "--num-target-train", "1", "--num-target-val", "1", "--workers", "1", "--no-progress",
            "--target-hfov", "70", "--source-objects", "persons=3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = SynthConfig.from_dict(json.loads((out / "synth.json").read_text())["config"])
    assert cfg.target_camera.hfov == 70.0 and cfg.source_objects.persons == 3.0 and cfg.source_size == (48, 32)
    assert png_header(out / "source" / "RGB" / "0000000.png")[:2] == (48, 32)
    bad = CliRunner().invoke(app, ["synth", str(out), "--seed", "5", "--no-progress"])
    assert bad.exit_code == 1
