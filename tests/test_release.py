"""`udaseg import-model`: the three releases' files, built here from their key names and shapes,
imported and checked against a forward pass written from the raw tensors.

Facts (read from the releases, not from udaseg): every release is DeepLab-v2's caffe ResNet-101
(`conv1`, `bn1`, `layer1..4` with [3, 4, 23, 3] bottlenecks, stride in the first 1×1 conv of
layer2, dilation 2 / 4 in layer3 / layer4, a projection shortcut `downsample.0/1` on every
layer's first block, BatchNorm with affine and running statistics, ceil-mode max-pool);
`layer6` = ASPP (3×3 convs, dilation = padding 6/12/18/24, summed) on layer4, `layer5` the
same on layer3 (ADVENT's multi-level). The authors' `DeepLabv2_depth`: `enc4_1..3` density,
`enc5_1..3` depth (1×1 2048→512, 3×3 512→512, 1×1 512→128, channel mean), `enc4_4` 128→16 and
`dec4` 128→2048 unused. DADA's: `enc4_1..3` depth, `dec4` fusion seg = layer6(x4 · relu(dec4(code))).
Discriminators: five 4×4 stride-2 convs `0,2,4,6,8` C→64→128→256→512→1, LeakyReLU 0.2.

The full-size network runs on tiny images, so every test here takes a few seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from udaseg.checkpoint import load_checkpoint, load_model
from udaseg.cli import app
from udaseg.config import load_config
from udaseg.errors import UdasegError
from udaseg.grid import output_grid
from udaseg.release import FORMATS, import_release, map_release_state
from udaseg.model import model_from_config

from release_files import (disc_state, ref_aspp, ref_bottleneck, ref_disc, ref_forward, ref_trunk, rel_err,
                           release_state)

STAGES = Path(__file__).resolve().parent.parent / "stages"
CITY16 = STAGES / "synthia2cityscapes16.toml"
CITY7 = STAGES / "synthia2cityscapes7.toml"
runner = CliRunner()

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def city16():
    return load_config(CITY16)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """format -> (state dict, its file written as the release wrote it), built on first use."""
    root = tmp_path_factory.mktemp("releases")
    cache: dict = {}

    def get(fmt: str):
        if fmt not in cache:
            sd = release_state(fmt, 16, seed=len(fmt))
            path = root / f"{fmt}.pth"
            # the authors' training saves {'model': ..., 'optimizer': ...}; ADVENT / DADA a bare state dict
            torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 2.5e-4}]}}
                       if fmt == "depth_distribution" else sd, path)
            cache[fmt] = (sd, path)
        return cache[fmt]

    return get


IMAGE = torch.Generator().manual_seed(7)
IMAGE_RGB = torch.randint(0, 256, (2, 3, 41, 57), generator=IMAGE).float()  # a tiny RGB image, 0..255
# the releases' input, written out here: BGR, minus their IMG_MEAN (the networks normalise their own input)
X = IMAGE_RGB.flip(1) - torch.tensor([104.00698793, 116.66876762, 122.67891434]).view(1, 3, 1, 1)


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_imported_network_reproduces_the_release_forward(fmt, released, city16, tmp_path):
    sd, path = released(fmt)
    out = tmp_path / "imported.pt"
    result = import_release(path, fmt, city16, out)
    state = load_checkpoint(out)
    assert state["stage"] == "imported" and state["architecture"] == FORMATS[fmt].architecture
    assert state["imported_from"]["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    assert state["imported_from"]["format"] == fmt and "optimizer" not in state
    assert result.dropped == (["dec4", "enc4_4"] if fmt == "depth_distribution" else [])
    model, info = load_model(out, city16, torch.device("cpu"))
    assert info["stage"] == "imported" and info["imported_from"]["file"] == path.name
    with torch.no_grad():
        got = model(IMAGE_RGB, heads=model.heads)
        want = ref_forward(fmt, sd, X)
    grid_w, grid_h = output_grid(57, 41)
    for head, ref in want.items():
        mine = getattr(got, head)
        assert mine.shape == ref.shape == (2, 16 if head in ("seg", "aux") else 1, grid_h, grid_w), head
        assert rel_err(mine, ref) < 1e-4, head
    assert set(want) == {h for h in ("seg", "depth", "density", "aux") if getattr(got, h) is not None}


def test_one_bottleneck_and_the_trunk_match_the_release_blocks(released, city16, tmp_path):
    sd, path = released("depth_distribution")
    import_release(path, "depth_distribution", city16, tmp_path / "m.pt")
    model, _ = load_model(tmp_path / "m.pt", city16, torch.device("cpu"))
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1024, 6, 8, generator=gen)
    with torch.no_grad():
        mine = model.backbone.layer4[0](x)  # stride 1, dilation 4, projection shortcut
        assert rel_err(mine, ref_bottleneck(x, sd, "layer4.0", 1, 4, True)) < 1e-4
        y = torch.randn(1, 256, 11, 15, generator=gen)
        assert rel_err(model.backbone.layer2[0](y), ref_bottleneck(y, sd, "layer2.0", 2, 1, True)) < 1e-4
        assert model.backbone.layer2[0](y).shape[-2:] == (6, 8)  # the stride sits in the 1×1 conv (caffe)


def test_discriminators_are_imported_for_continued_adversarial_training(released, city16, tmp_path):
    from udaseg.model import Discriminator
    from udaseg.model.advent import AdventDiscriminators

    d_main, d_aux = disc_state(16, 1), disc_state(16, 2)
    main_file, aux_file = tmp_path / "model_D_2000.pth", tmp_path / "model_2000_D_aux.pth"
    torch.save({"model": d_main, "optimizer": {"state": {}, "param_groups": []}}, main_file)
    torch.save(d_aux, aux_file)
    x = torch.rand(1, 16, 64, 96, generator=torch.Generator().manual_seed(5))
    _, path = released("depth_distribution")
    import_release(path, "depth_distribution", city16, tmp_path / "dd.pt", discriminator=main_file)
    disc = Discriminator(16)
    disc.load_state_dict(load_checkpoint(tmp_path / "dd.pt")["disc"])
    with torch.no_grad():
        assert rel_err(disc(x), ref_disc(x, d_main)) < 1e-5
    _, path = released("advent")
    result = import_release(path, "advent", city16, tmp_path / "ad.pt", discriminator=main_file, discriminator_aux=aux_file)
    assert result.discriminator == ["main", "aux"] and result.ablation == "advent"
    pair = AdventDiscriminators(16)
    pair.load_state_dict(load_checkpoint(tmp_path / "ad.pt")["disc"])
    with torch.no_grad():
        assert rel_err(pair(x, "aux"), ref_disc(x, d_aux)) < 1e-5 and rel_err(pair(x), ref_disc(x, d_main)) < 1e-5


def test_advent_file_without_multi_level_keeps_a_fresh_aux_head(city16, tmp_path):
    sd = release_state("advent", 16, seed=4, multi_level=False)  # DADA's repo trains AdvEnt with MULTI_LEVEL = False
    path = tmp_path / "advent_single.pth"
    torch.save(sd, path)
    result = import_release(path, "advent", city16, tmp_path / "a.pt")
    assert result.fresh == ["aux_head"]
    model, _ = load_model(tmp_path / "a.pt", city16, torch.device("cpu"))
    with torch.no_grad():
        assert rel_err(model(IMAGE_RGB, heads=("seg",)).seg, ref_aspp(ref_trunk(X, sd)[1], sd, "layer6")) < 1e-4


# ---------------------------------------------------------------- refusals


def _refusal(fmt, sd, config, path="release.pth"):
    net = model_from_config(config.model, 16 if "16" in config.experiment.protocol else 7,
                            architecture=FORMATS[fmt].architecture)
    with pytest.raises(UdasegError) as err:
        map_release_state(sd, FORMATS[fmt], net, Path(path), config)
    return str(err.value)


def test_refuses_missing_extra_and_misplaced_keys_naming_them(released, city16):
    sd, _ = released("depth_distribution")
    missing = {k: v for k, v in sd.items() if k != "layer3.17.bn2.running_var"}
    assert "no key 'layer3.17.bn2.running_var'" in _refusal("depth_distribution", missing, city16)
    extra = {**sd, "enc6_1.weight": torch.zeros(1)}
    assert "key 'enc6_1.weight' has no place" in _refusal("depth_distribution", extra, city16)
    dada_sd, _ = released("dada")
    msg = _refusal("depth_distribution", dada_sd, city16)
    assert "pass --from dada" in msg
    assert "pass --from depth_distribution" in _refusal("advent", sd, city16)
    no_enc4_4 = {k: v for k, v in sd.items() if not k.startswith("enc4_4")}  # leftovers may be absent too
    net = model_from_config(city16.model, 16)
    mapped, dropped, _ = map_release_state(no_enc4_4, FORMATS["depth_distribution"], net, Path("f"), city16)
    assert dropped == ["dec4"] and len(mapped) == len(sd) - 4  # enc4_4 and dec4: weight + bias each


def test_refuses_a_class_count_or_width_the_recipe_does_not_have(released, city16):
    sd, _ = released("depth_distribution")
    city7 = load_config(CITY7)
    msg = _refusal("depth_distribution", sd, city7)
    assert "'layer6.conv2d_list.0.weight' has 16 classes" in msg and "synthia2cityscapes7 has 7" in msg
    narrow = load_config(CITY16, ["model.head_channels=256"])
    assert "'enc5_1.weight' has shape (512, 2048, 1, 1)" in _refusal("depth_distribution", sd, narrow) or \
        "'enc4_1.weight' has shape (512, 2048, 1, 1)" in _refusal("depth_distribution", sd, narrow)


def test_cli_refusals_are_one_line_and_write_nothing(released, tmp_path):
    _, path = released("dada")
    out = tmp_path / "never.pt"
    cases = [
        ([str(path), "--from", "dada", "--config", str(CITY7)], "has 16 classes"),
        ([str(path), "--from", "dada", "--config", str(CITY16), "--set", "model.backbone=light_resnet18"],
         "model.backbone = deeplabv2_resnet101"),
        ([str(path), "--from", "caffe", "--config", str(CITY16)], "choose one of depth_distribution"),
    ]
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a zip at all")
    cases.append(([str(junk), "--from", "dada", "--config", str(CITY16)], "not a readable torch state dict"))
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    cases.append(([str(listed), "--from", "dada", "--config", str(CITY16)], "holds list, not a state dict"))
    d_bad = tmp_path / "d_bad.pth"
    torch.save(disc_state(7), d_bad)
    cases.append(([str(path), "--from", "dada", "--config", str(CITY16), "--discriminator", str(d_bad)],
                  "discriminator key '0.weight' has shape (64, 7, 4, 4)"))
    for args, expected in cases:
        result = runner.invoke(app, ["import-model", *args, "--out", str(out)])
        assert result.exit_code == 1, (args, result.output)
        text = " ".join(result.output.split())
        assert expected in text, (expected, text)
        assert not out.exists() and not list(tmp_path.glob(".never.pt.*"))


# ---------------------------------------------------------------- the evaluation each release ran


@pytest.fixture(scope="module")
def tiny_targets(tmp_path_factory):
    from PIL import Image

    from udaseg.testing.fakedata import write_cityscapes

    root = tmp_path_factory.mktemp("targets")
    write_cityscapes(root / "cityscapes", "val", 1, (128, 64))
    (root / "mapillary/validation/images").mkdir(parents=True)
    (root / "mapillary/validation/labels").mkdir(parents=True)
    rng = __import__("numpy").random.default_rng(0)
    # 10:9, narrower than every input size: letterboxing pads the right, DADA's labels get padded columns
    Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype="uint8")).save(root / "mapillary/validation/images/a.jpg")
    label = Image.fromarray(rng.choice([13, 27, 30, 55], (36, 40)).astype("uint8"), mode="P")
    label.putpalette(list(range(256)) * 3)
    label.save(root / "mapillary/validation/labels/a.png")
    return root


# recipe, overrides -> (input W×H, label W×H for a 128×64 Cityscapes / 40×36 Mapillary file). The releases'
# test scripts: the authors' (depth_distribution/main/scripts/test.py + configs): Cityscapes input
# TEST.INPUT_SIZE_TARGET (1280×760; 640×320 small), labels OUTPUT_SIZE 2048×1024 = native; Mapillary image
# and label resize_with_pad to the input size (scale_label=True). DADA's (dada/scripts/test.py + config.py):
# Cityscapes input 1024×512, native labels; Mapillary input 1024×768, labels pad_with_fixed_AS at native size.
def _aspect_pad(w, h, size):
    ratio = size[0] / size[1]
    return (int(ratio * h), h) if ratio * h > w else ((w, int(w / ratio)) if ratio * h < w else (w, h))


EVAL_CASES = [
    ("synthia2cityscapes16.toml", [], (1280, 760), (128, 64)),
    ("synthia2cityscapes7.toml", [], (1280, 760), (128, 64)),
    ("synthia2cityscapes7_low.toml", [], (640, 320), (128, 64)),
    ("synthia2mapillary7.toml", [], (1280, 760), (1280, 760)),
    ("synthia2mapillary7_low.toml", [], (640, 320), (640, 320)),
    ("synthia2cityscapes16.toml", ["data.target_size=[1024, 512]"], (1024, 512), (128, 64)),
    ("synthia2mapillary7.toml", ["data.target_size=[1024, 768]", "eval.letterbox_labels=native"], (1024, 768),
     _aspect_pad(40, 36, (1024, 768))),
]


@pytest.mark.parametrize("recipe, overrides, input_size, label_size", EVAL_CASES)
def test_shipped_recipes_score_at_the_release_test_scripts_sizes(recipe, overrides, input_size, label_size, tiny_targets):
    from udaseg.scoring import eval_data

    cfg = load_config(STAGES / recipe, overrides)
    sample = eval_data(cfg, cfg.data.target_val_split, tiny_targets).dataset[0]
    assert tuple(sample["image"].shape[-2:]) == (input_size[1], input_size[0])
    assert tuple(sample["label"].shape) == (label_size[1], label_size[0])
    if "eval.letterbox_labels=native" in overrides:  # DADA: the label at its own 40×36, padded right with ignore
        assert label_size == (48, 36) and (sample["label"][:, 40:] == 255).all() and (sample["label"][:, :40] != 255).all()


def test_native_letterbox_labels_need_the_top_left_letterbox():
    from udaseg.config import ConfigError

    with pytest.raises(ConfigError, match="letterbox_labels"):
        load_config(CITY16, ["eval.letterbox_labels=native"])
