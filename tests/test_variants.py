"""The published baselines' networks (ADVENT's multi-level classifier, DADA's depth-feature fusion)
on any backbone, and the training values their ablation rows take from their papers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from udaseg.baselines import BASELINE_VALUES, with_baseline_values
from udaseg.config import load_config
from udaseg.engine import build_sgd
from udaseg.grid import output_grid
from udaseg.model import AdventNet, DadaNet, architecture_for, build_model

RATES = (6, 12, 18, 24)


def aspp(x, head):
    return sum(F.conv2d(x, c.weight, c.bias, padding=r, dilation=r) for c, r in zip(head.conv2d_list, RATES))


def light_stages(backbone, x):
    """layer3 and layer4 of the light ResNet, block by block."""
    x = F.max_pool2d(F.relu(backbone.bn1(backbone.conv1(x))), 3, 2, 1, ceil_mode=True)
    for layer in (backbone.layer1, backbone.layer2, backbone.layer3):
        x = layer(x)
    return x, backbone.layer4(x)


@pytest.mark.parametrize("width", [4, 8])
def test_advent_net_scores_layer4_and_adds_a_layer3_classifier(width):
    torch.manual_seed(0)
    net = build_model("light_resnet18", 5, light_width=width, architecture="advent").eval()
    assert isinstance(net, AdventNet) and net.aux_head.conv2d_list[0].in_channels == 4 * width
    x = torch.randn(2, 3, 45, 70)
    with torch.no_grad():
        out = net(x)
        c3, c4 = light_stages(net.backbone, x)
        torch.testing.assert_close(out.seg, aspp(c4, net.seg_head), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out.aux, aspp(c3, net.aux_head), rtol=1e-4, atol=1e-5)
        assert out.depth is None and out.density is None
        assert net(x, heads=("seg", "depth")).depth is None  # a head it lacks: None, not an error
        assert net(x, heads=("seg",)).aux is None
    w, h = output_grid(70, 45)
    assert out.seg.shape == out.aux.shape == (2, 5, h, w)
    groups = net.param_groups(1.0, 10.0)
    heads = {id(p) for p in groups[1]["params"]}
    assert heads == {id(p) for m in (net.seg_head, net.aux_head) for p in m.parameters()}


def test_dada_net_gates_the_features_with_its_depth_code():
    torch.manual_seed(1)
    net = build_model("light_resnet18", 7, light_width=8, head_channels=16, architecture="dada").eval()
    assert isinstance(net, DadaNet)
    x = torch.randn(1, 3, 41, 57)
    d = net.depth_head
    with torch.no_grad():
        f = net.backbone(x)
        code = d.conv3(F.relu(d.conv2(F.relu(d.conv1(f)))))
        gate = F.relu(F.conv2d(code, net.fusion.weight, net.fusion.bias))
        out = net(x)
        torch.testing.assert_close(out.depth, code.mean(1, keepdim=True), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.seg, aspp(f * gate, net.seg_head), rtol=1e-4, atol=1e-5)
        assert out.density is None
        net.fusion.bias.add_(1.0)  # the segmentation reads the fused features, so the gate changes it
        assert not torch.allclose(net(x).seg, out.seg)
    assert net.fusion.in_channels == 128 and net.fusion.out_channels == net.backbone.out_channels
    heads = {id(p) for p in net.param_groups(1.0, 10.0)[1]["params"]}
    assert {id(p) for p in net.fusion.parameters()} <= heads and {id(p) for p in d.parameters()} <= heads


def test_ablation_rows_pick_their_network():
    for row, arch in (("advent", "advent"), ("dada", "dada"), ("advent_entropy", "segdepth"),
                      ("dada_simple", "segdepth"), ("m2", "segdepth")):
        assert architecture_for(load_config(None, {"train.ablation": row})) == arch


def test_baseline_rows_take_their_papers_values_unless_told_otherwise():
    demo = load_config("stages/demo.toml")
    dada = with_baseline_values(load_config("stages/demo.toml", {"train.ablation": "dada"}))
    t = dada.train
    assert (t.lambda_adv, t.lambda_dep, t.lr_disc, t.head_lr_mult, t.aux_head_lr_mult, t.class_weights) == \
        (0.001, 0.001, 1e-4, 10.0, 1.0, "none")
    assert t.lr == demo.train.lr and dada.data == demo.data and dada.model == demo.model  # the recipe's otherwise
    advent = with_baseline_values(load_config("stages/demo.toml", {"train.ablation": "advent"})).train
    assert (advent.lambda_seg_aux, advent.lambda_adv, advent.lambda_adv_aux, advent.lr_disc) == (0.1, 0.001, 0.0002, 1e-4)
    own = with_baseline_values(load_config("stages/demo.toml", {"train.ablation": "dada",
                                                                "train.baseline_values": "recipe"}))
    assert own.train.lambda_adv == demo.train.lambda_adv and own.train.lr_disc == demo.train.lr_disc
    m2 = load_config("stages/demo.toml")
    assert with_baseline_values(m2) is m2
    assert set(BASELINE_VALUES) == {"advent", "dada"}


def test_dadas_depth_layers_train_at_the_classifiers_ten_times():
    cfg = with_baseline_values(load_config("stages/demo.toml", {"train.ablation": "dada"}))
    net = build_model("light_resnet18", 7, light_width=4, head_channels=8, architecture="dada")
    opt = build_sgd(net, cfg.train)
    by_id = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    base = cfg.train.lr
    assert all(by_id[id(p)] == pytest.approx(10 * base) for m in (net.seg_head, net.depth_head, net.fusion)
               for p in m.parameters())
    assert all(by_id[id(p)] == pytest.approx(base) for p in net.backbone.parameters() if p.requires_grad)
