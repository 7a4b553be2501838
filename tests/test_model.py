"""Backbones, heads, discriminator, preprocessing and weight loading.

ResNet-101 is far too slow for real-size CPU forwards here: full-size shapes are checked on the
meta device (free), real values on tiny inputs or on the light backbone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from udaseg.errors import UdasegError
from udaseg.grid import output_grid
from udaseg.config import ConfigError
from udaseg.model import BACKBONES, Discriminator, backbone_spec, build_model
from udaseg.model.batchnorm import batchnorms
from udaseg.model.heads import ASPPClassifier, ScalarHead
from udaseg.model.light import LightResNet18
from udaseg.model.resnet import (
    CaffeResNet101,
    TorchvisionResNet101,
    load_deeplab_imagenet,
    load_torchvision,
    load_torchvision_resnet101,
)



@pytest.fixture(scope="module")
def caffe101() -> CaffeResNet101:
    torch.manual_seed(0)
    return CaffeResNet101()


def _shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------- architecture and grid


def test_caffe_resnet101_matches_torchvision_shapes_with_stride_in_1x1(caffe101: CaffeResNet101) -> None:
    with torch.device("meta"):
        ref = torchvision.models.resnet101(weights=None)
    expected = {k: v for k, v in _shapes(ref).items() if not k.startswith("fc.")}
    assert _shapes(caffe101) == expected  # same names and shapes -> ADVENT keys line up
    assert caffe101.maxpool.ceil_mode and caffe101.maxpool.padding == 1
    assert caffe101.layer2[0].conv1.stride == (2, 2) and caffe101.layer2[0].conv2.stride == (1, 1)
    assert caffe101.layer2[0].downsample[0].stride == (2, 2)
    for layer, rate in ((caffe101.layer1, 1), (caffe101.layer3, 2), (caffe101.layer4, 4)):
        for block in layer:
            assert block.conv2.dilation == (rate, rate) and block.conv2.padding == (rate, rate)
            assert block.conv1.stride == (1, 1)


def test_light_backbone_has_torchvision_resnet18_layout() -> None:
    with torch.device("meta"):
        ref = torchvision.models.resnet18(weights=None)
        light = LightResNet18(width=64)
    assert _shapes(light) == {k: v for k, v in _shapes(ref).items() if not k.startswith("fc.")}
    assert light.out_channels == 512 and light.maxpool.ceil_mode


@pytest.mark.parametrize("size", [(1280, 760), (640, 320), (1024, 512), (513, 257), (97, 61)])
def test_resnet101_grids_match_output_grid_on_meta(size: tuple[int, int]) -> None:
    w, h = size
    gw, gh = output_grid(w, h)
    with torch.device("meta"):
        for backbone in (CaffeResNet101(), TorchvisionResNet101()):
            assert tuple(backbone(torch.empty(1, 3, h, w)).shape) == (1, 2048, gh, gw)


def test_grid_constants() -> None:
    assert output_grid(1280, 760) == (161, 96) and output_grid(640, 320) == (81, 41)


def test_caffe_resnet101_real_forward_small_input(caffe101: CaffeResNet101) -> None:
    x = torch.randn(1, 3, 35, 67)
    with torch.no_grad():
        out = caffe101(x)
    gw, gh = output_grid(67, 35)
    assert out.shape == (1, 2048, gh, gw) and torch.isfinite(out).all() and (out >= 0).all()


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("size", [(1280, 760), (640, 320)])
def test_full_model_output_grid_on_meta(backbone: str, size: tuple[int, int]) -> None:
    w, h = size
    gw, gh = output_grid(w, h)
    spec = backbone_spec(backbone)
    with torch.device("meta"):
        model = build_model(backbone, 16, None, light_width=8)
        out = model(torch.empty(2, 3, h, w))
        features = model.backbone(torch.empty(2, 3, h, w))
    # the spec's out_channels and stride are what the trunk gives (udaseg.grid assumes stride 8)
    assert spec.output_stride == 8 and features.shape == (2, spec.out_channels(8), gh, gw)
    assert out.seg.shape == (2, 16, gh, gw)
    assert out.depth.shape == (2, 1, gh, gw) and out.density.shape == (2, 1, gh, gw)


@pytest.mark.parametrize("size,grid", [((1280, 760), (161, 96)), ((640, 320), (81, 41))])
def test_light_backbone_real_forward_full_size(size: tuple[int, int], grid: tuple[int, int]) -> None:
    w, h = size
    net = LightResNet18(width=4).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, h, w))
    assert out.shape == (1, 32, grid[1], grid[0]) and grid == output_grid(w, h)


def test_light_model_forward_small_and_head_skipping() -> None:
    torch.manual_seed(0)
    model = build_model("light_resnet18", 7, None, light_width=8).eval()
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        full = model(x)
        seg_only = model(x, heads=("seg",))
    gw, gh = output_grid(128, 64)
    assert full.seg.shape == (2, 7, gh, gw) and full.depth.shape == (2, 1, gh, gw)
    assert seg_only.depth is None and seg_only.density is None
    assert torch.equal(seg_only.seg, full.seg)
    assert not torch.allclose(full.depth, full.density)  # separate weights
    with pytest.raises(ValueError, match="unknown heads"):
        model(x, heads=("segmentation",))


# ---------------------------------------------------------------- heads


def test_aspp_is_sum_of_four_dilated_convs() -> None:
    torch.manual_seed(0)
    head = ASPPClassifier(6, 3)
    for conv in head.conv2d_list:  # non-zero biases so they are checked too
        nn.init.normal_(conv.bias)
    x = torch.randn(1, 6, 30, 31)
    ref = sum(
        F.conv2d(x, c.weight, c.bias, padding=r, dilation=r)
        for c, r in zip(head.conv2d_list, (6, 12, 18, 24))
    )
    assert torch.allclose(head(x), ref, atol=1e-6)
    assert [c.dilation for c in head.conv2d_list] == [(r, r) for r in (6, 12, 18, 24)]


def test_scalar_head_is_channel_mean_of_three_convs() -> None:
    torch.manual_seed(0)
    head = ScalarHead(8)
    x = torch.randn(2, 8, 5, 6)
    w1, w2, w3 = (c.weight.detach().numpy() for c in (head.conv1, head.conv2, head.conv3))
    b1, b2, b3 = (c.bias.detach().numpy() for c in (head.conv1, head.conv2, head.conv3))
    xn = x.numpy().astype(np.float64)
    a = np.maximum(np.einsum("oi,bihw->bohw", w1[:, :, 0, 0], xn) + b1[None, :, None, None], 0)
    pad = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = sum(
        np.einsum("oi,bihw->bohw", w2[:, :, dy, dx], pad[:, :, dy : dy + 5, dx : dx + 6])
        for dy in range(3)
        for dx in range(3)
    )
    a = np.maximum(conv + b2[None, :, None, None], 0)
    a = np.einsum("oi,bihw->bohw", w3[:, :, 0, 0], a) + b3[None, :, None, None]
    assert a.shape[1] == 128
    assert np.allclose(head(x).detach().numpy(), a.mean(axis=1, keepdims=True), atol=1e-6)


def test_new_layers_init_normal_std_001() -> None:
    torch.manual_seed(0)
    model = build_model("light_resnet18", 16, None)  # heads read 512 channels, as the spec's shapes
    model_heads = [model.seg_head, model.depth_head, model.density_head]
    convs = [m for h in model_heads for m in h.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 + 3 + 3
    for conv in convs:
        w = conv.weight.detach()
        assert abs(w.std().item() - 0.01) < 0.0015 and abs(w.mean().item()) < 0.002
        assert (conv.bias == 0).all()
    big = torch.cat([model.depth_head.conv2.weight.detach().flatten(),
                     model.seg_head.conv2d_list[0].weight.detach().flatten()])
    assert big.std().item() == pytest.approx(0.01, rel=0.01)


# ---------------------------------------------------------------- BatchNorm, parameter groups


def test_bn_stays_frozen_after_train(caffe101: CaffeResNet101) -> None:
    model = build_model("light_resnet18", 5, None, light_width=4)
    model.backbone = caffe101
    model.train()
    bns = batchnorms(model.backbone)
    assert len(bns) == 1 + 3 * (3 + 4 + 23 + 3) + 4
    assert all(not bn.training for bn in bns)
    assert all(not p.requires_grad for bn in bns for p in bn.parameters())
    assert model.seg_head.training and model.backbone.layer1[0].conv1.weight.requires_grad
    before = [bn.running_mean.clone() for bn in bns[:5]]
    model.backbone(torch.randn(1, 3, 33, 33) * 50)
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns[:5]))


def test_light_backbone_bn_trains_from_scratch() -> None:
    net = LightResNet18(width=4).train()
    net(torch.randn(2, 3, 32, 32) + 3)
    assert net.bn1.training and net.bn1.running_mean.abs().sum() > 0


def test_param_groups_split_backbone_and_heads_at_10x() -> None:
    model = build_model("light_resnet18", 5, None, light_width=4)
    for bn in batchnorms(model.backbone):  # as after loading ImageNet weights
        for p in bn.parameters():
            p.requires_grad_(False)
    groups = model.param_groups(2.5e-4, head_lr_mult=10.0)
    assert [g["lr"] for g in groups] == pytest.approx([2.5e-4, 2.5e-3])
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert not ids[0] & ids[1]
    assert ids[0] | ids[1] == {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in model.seg_head.parameters()} <= ids[1]
    assert id(model.backbone.conv1.weight) in ids[0]
    torch.optim.SGD(groups, lr=2.5e-4, momentum=0.9)  # accepted as is


# ---------------------------------------------------------------- weight files


def test_load_deeplab_imagenet_advent_layout(caffe101: CaffeResNet101, tmp_path) -> None:
    g = torch.Generator().manual_seed(5)
    state = {
        f"Scale.{k}": torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        for k, v in caffe101.state_dict().items()
        if not k.endswith("num_batches_tracked")  # the 2017 file predates this buffer
    }
    state["Scale.layer5.conv2d_list.0.weight"] = torch.randn(21, 2048, 3, 3, generator=g)
    state["Scale.layer5.conv2d_list.0.bias"] = torch.randn(21, generator=g)
    path = tmp_path / "DeepLab_resnet_pretrained_imagenet.pth"
    torch.save(state, path)
    model = build_model("deeplabv2_resnet101", 16, str(path))
    loaded = model.backbone.state_dict()
    for key, value in state.items():
        if not key.startswith("Scale.layer5"):
            assert torch.equal(loaded[key.removeprefix("Scale.")], value), key
    seg_before = model.seg_head.conv2d_list[0].weight.clone()
    load_deeplab_imagenet(model, path)  # whole model accepted; heads untouched
    assert torch.equal(model.seg_head.conv2d_list[0].weight, seg_before)


def test_load_deeplab_imagenet_reports_bad_keys(caffe101: CaffeResNet101, tmp_path) -> None:
    path = tmp_path / "bad.pth"
    torch.save({"Scale.conv1.weight": torch.zeros(64, 3, 3, 3), "Scale.extra.weight": torch.zeros(1)}, path)
    with pytest.raises(UdasegError) as info:
        load_deeplab_imagenet(caffe101, path)
    msg = str(info.value)
    assert "bad.pth" in msg and "\n" not in msg
    assert "conv1.weight (64, 3, 3, 3)!=(64, 3, 7, 7)" in msg and "extra.weight" in msg
    n_missing = len([k for k in caffe101.state_dict() if not k.endswith("num_batches_tracked")]) - 1
    assert f"({n_missing} in all)" in msg and "bn1.weight" in msg


def test_missing_weight_file_is_a_user_error(tmp_path) -> None:
    for build in (lambda: build_model("deeplabv2_resnet101", 16, str(tmp_path / "nope.pth")),
                  lambda: load_torchvision_resnet101(LightResNet18(width=2), tmp_path / "nope.pth")):
        with pytest.raises(UdasegError, match="nope.pth"):
            build()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(UdasegError, match="junk.pth"):
        load_deeplab_imagenet(LightResNet18(width=2), junk)


def test_load_torchvision_resnet18_into_light_and_single_missing_key(tmp_path) -> None:
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        ref.bn1.running_mean.uniform_()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)  # includes fc.*, which is dropped
    model = build_model("light_resnet18", 4, str(path))
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k
    assert not model.backbone.bn1.training  # pretrained statistics are kept frozen
    state = ref.state_dict()
    del state["layer4.1.bn2.running_var"]
    torch.save(state, path)
    with pytest.raises(UdasegError, match=r"missing layer4\.1\.bn2\.running_var \(1\)"):
        load_torchvision(LightResNet18(), path, "torchvision ResNet-18")


def test_torchvision_resnet101_loads_its_own_file(tmp_path) -> None:
    torch.manual_seed(2)
    backbone = TorchvisionResNet101()
    state = {k: torch.rand_like(v) if v.is_floating_point() else v for k, v in backbone.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    path = tmp_path / "resnet101.pth"
    torch.save(state, path)
    fresh = TorchvisionResNet101()
    load_torchvision_resnet101(fresh, path)
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())


# ---------------------------------------------------------------- discriminator, preprocessing


def test_discriminator_shape_and_values() -> None:
    torch.manual_seed(0)
    disc = Discriminator(16)
    x = torch.randn(2, 16, 64, 128)
    out = disc(x)
    assert out.shape == (2, 1, 2, 4)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(16, 64), (64, 128), (128, 256), (256, 512), (512, 1)]
    ref = x
    for i, c in enumerate(convs):
        ref = F.conv2d(ref, c.weight, c.bias, stride=2, padding=1)
        if i < 4:
            ref = torch.where(ref > 0, ref, 0.2 * ref)
    assert torch.allclose(out, ref, atol=1e-5)


def test_normalize_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(2, 3, 4, 5), dtype=np.uint8)
    t = torch.from_numpy(img)
    with torch.device("meta"):  # only the normalisation runs for real (on the CPU tensor)
        nets = {b: build_model(b, 2, None) for b in BACKBONES}
    caffe = nets["deeplabv2_resnet101"].normalize(t).numpy()
    ref = img[:, ::-1].astype(np.float64) - np.array([104.00699, 116.66877, 122.67891])[None, :, None, None]
    assert caffe.dtype == np.float32 and np.allclose(caffe, ref, atol=1e-4)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    ref = (img / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
    for backbone in ("torchvision_resnet101", "light_resnet18"):
        assert np.allclose(nets[backbone].normalize(t).numpy(), ref, atol=1e-5)
    assert backbone_spec("deeplabv2_resnet101").normalization.channel_order == (2, 1, 0)
    with pytest.raises(ConfigError, match=r"^model.backbone = 'vgg16': unknown backbone; choose one of "
                                          r"deeplabv2_resnet101, torchvision_resnet101, light_resnet18$"):
        backbone_spec("vgg16")


def test_the_network_normalises_its_own_input() -> None:
    """Callers pass RGB uint8; forward applies the backbone spec's normalisation exactly once."""
    torch.manual_seed(0)
    model = build_model("light_resnet18", 3, None, light_width=4).eval()
    images = torch.randint(0, 256, (1, 3, 24, 32), dtype=torch.uint8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    reference = (images.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.seg_head(model.backbone(reference))
        assert torch.allclose(model(images, heads=("seg",)).seg, expected, atol=1e-5)


def test_untrainable_init_is_refused_at_start_naming_the_cause() -> None:
    """Random ResNet-101 weights with frozen identity BN statistics explode (~1e7 at layer4).
    (The default, BatchNorm in train mode as the release, is accepted: tests/test_fidelity.py.)"""
    from udaseg.config import load_config
    from udaseg.errors import UdasegError
    from udaseg.model import model_from_config
    from udaseg.model.health import MAX_FEATURE, check_trainable, probe_features

    cfg = load_config(None, ["model.init_weights=", "model.batchnorm=frozen"])
    torch.manual_seed(0)
    model = model_from_config(cfg.model, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert probe_features(model, torch.device("cpu")) > 1e6
    with pytest.raises(UdasegError, match=r"model.backbone=deeplabv2_resnet101 with model.init_weights='' \(random\) "
                                          r"and model.batchnorm='frozen' cannot train.*model.batchnorm=\"train\""):
        check_trainable(model, cfg, torch.device("cpu"))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the probe leaves no trace (BN buffers)
    # a light backbone from scratch trains its BN statistics: accepted
    light = load_config(None, ["model.backbone=light_resnet18", "model.init_weights=", "model.light_width=8"])
    small = model_from_config(light.model, 16)
    assert probe_features(small, torch.device("cpu")) < MAX_FEATURE
    check_trainable(small, light, torch.device("cpu"))


def test_fan_in_head_init_keeps_activations_where_normal_001_starves_them() -> None:
    """On a narrow backbone (128 channels, hidden 32) N(0, 0.01) shrinks the head's activations
    layer by layer; the fan-in init keeps conv2's output at the input's scale."""
    from udaseg.model.heads import ScalarHead

    torch.manual_seed(0)
    x = torch.randn(2, 128, 15, 25)
    paper, fan_in = ScalarHead(128, hidden=32), ScalarHead(128, hidden=32)
    fan_in.fan_in_init()

    def hidden_std(head):
        return float(head.relu(head.conv2(head.relu(head.conv1(x)))).std())

    assert hidden_std(paper) < 0.02 * float(x.std())  # ~100x smaller than its input
    assert 0.3 < hidden_std(fan_in) / float(x.std()) < 3.0
    assert torch.count_nonzero(fan_in.conv1.bias) == 0 and torch.count_nonzero(fan_in.conv3.bias) == 0
    # the switch reaches the network through the recipe
    from udaseg.config import load_config
    from udaseg.model import model_from_config

    cfg = load_config(None, ["model.backbone=light_resnet18", "model.light_width=16", "model.head_channels=32",
                             'model.head_init="fan_in"'])
    net = model_from_config(cfg.model, 7)
    assert float(net.depth_head.conv1.weight.std()) == pytest.approx((2 / 128) ** 0.5, rel=0.1)
    assert float(net.seg_head.conv2d_list[0].weight.std()) == pytest.approx(0.01, rel=0.1)  # seg head untouched


def test_output_scale_multiplies_the_head_and_starts_it_where_asked() -> None:
    from udaseg.model.heads import ScalarHead

    head = ScalarHead(8, hidden=4)
    x = torch.randn(1, 8, 3, 5)
    base = head(x)
    head.set_output_scale(40.0, start=40.0)
    out = head(x)
    assert float(head.out_scale) == 40.0 and "out_scale" in head.state_dict()
    torch.testing.assert_close(out, 40.0 * (base + 1.0), rtol=1e-5, atol=1e-4)  # conv3 bias = start / scale = 1
