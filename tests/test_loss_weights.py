"""Each stage-1 loss term reaches the network with its own λ and no other.

The step is fed fixed head outputs (a stand-in network whose outputs are its parameters) and
fixed D_s / D_t maps, so each term's gradient can be computed here independently: with one λ
non-zero the gradient is that λ times the term's own gradient, and doubling the λ doubles it."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import tiny_recipe
from udaseg.config import load_config
from udaseg.distributed import DistEnv
from udaseg.engine import TrainParts
from udaseg.model import SegDepthOutput
from udaseg.pipeline.train import Stage1Step

B, C, H, W = 1, 3, 8, 12  # input size
GH, GW = 4, 6  # output grid
TERMS = ("seg", "dep", "bal", "tar", "adv")
LAMBDAS = {"seg": 0.7, "dep": 0.3, "bal": 0.2, "tar": 0.4, "adv": 0.6}


class FixedHeads(nn.Module):
    """Stands in for SegDepthNet: the source and target head outputs are parameters, handed out in
    the step's order (source, then target)."""

    def __init__(self, gen: torch.Generator):
        super().__init__()
        self.out = nn.ParameterDict({
            f"{head}_{side}": nn.Parameter(torch.randn(B, n, GH, GW, generator=gen) * scale + shift)
            for side in ("s", "t") for head, n, scale, shift in (("seg", C, 1.0, 0.0), ("depth", 1, 20.0, 100.0),
                                                                ("density", 1, 30.0, 120.0))})
        self.depth_head = self.density_head = nn.Module()
        self.depth_head.register_buffer("out_scale", torch.ones(()))
        self.calls = 0

    def forward(self, x, heads=("seg", "depth", "density")):
        side = "st"[self.calls % 2]
        self.calls += 1
        return SegDepthOutput(*(self.out[f"{h}_{side}"] if h in heads else None for h in ("seg", "depth", "density")))


class FixedMaps:
    """Stands in for gmm.h5's DepthGMM: fixed D_s and D_t."""

    squash_max = 255.0

    def __init__(self, gen: torch.Generator):
        self.d_s = torch.rand(B, GH, GW, generator=gen) * 255
        self.d_t = torch.rand(B, GH, GW, generator=gen) * 255

    def source_target(self, pred, labels, depth, *, off_class):
        return self.d_s

    def target_target(self, pred, depth, *, nonpositive):
        return self.d_t


def run_step(lambdas: dict[str, float]) -> dict[str, torch.Tensor]:
    """One stage-1 step with these λ; the gradient on each fixed output (and the parts used)."""
    gen = torch.Generator().manual_seed(0)
    model, maps = FixedHeads(gen), FixedMaps(gen)
    disc = nn.Conv2d(C, 1, 1)
    with torch.no_grad():
        disc.weight.copy_(torch.randn(disc.weight.shape, generator=gen))
        disc.bias.zero_()
    config = load_config(None, tiny_recipe(**{"train.ablation": "m2", "train.class_weights": "none",
                                              **{f"train.lambda_{k}": v for k, v in lambdas.items()}}))
    parts = TrainParts(model, torch.optim.SGD(model.parameters(), lr=0.0), disc,
                       torch.optim.SGD(disc.parameters(), lr=0.0), maps)  # the step sets the lrs
    src = {"image": torch.zeros(B, 3, H, W, dtype=torch.uint8),
           "label": torch.randint(0, C, (B, H, W), generator=gen),
           "depth": torch.rand(B, H, W, generator=gen) * 200 + 10}
    tgt = {"image": torch.zeros(B, 3, H, W, dtype=torch.uint8)}
    before = ({k: v.detach().clone() for k, v in model.out.items()}, copy.deepcopy(disc))  # the step updates both
    Stage1Step(config, parts, DistEnv(), iter([src]), iter([tgt]))(0)
    grads = {name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for name, p in model.out.items()}
    return {**grads, "_src": src, "_maps": maps, "_outputs": before[0], "_disc": before[1]}


def berhu_ref(pred, target, valid):
    e = (pred - target)[valid]
    c = 0.2 * e.abs().max().detach()
    return torch.where(e.abs() <= c, e.abs(), (e * e + c * c) / (2 * c)).mean()


def term_gradients(run: dict) -> dict[str, dict[str, torch.Tensor]]:
    """Each term's gradient on the fixed outputs, from the loss written out here (λ = 1)."""
    src, maps, disc = run["_src"], run["_maps"], run["_disc"]
    up = dict(size=(H, W), mode="bilinear", align_corners=True)
    out = {k: v.clone().requires_grad_() for k, v in run["_outputs"].items()}
    depth = src["depth"]
    entropy = lambda logits: -(F.softmax(logits, 1) * F.log_softmax(logits, 1)) / torch.log(torch.tensor(float(C)))
    f_t = entropy(F.interpolate(out["seg_t"], **up)) * F.interpolate(out["density_t"], **up)
    losses = {
        "seg": F.cross_entropy(F.interpolate(out["seg_s"], **up), src["label"]),
        "dep": berhu_ref(F.interpolate(out["depth_s"], **up)[:, 0], depth, depth > 0),
        "bal": berhu_ref(out["density_s"][:, 0], maps.d_s, torch.ones_like(maps.d_s, dtype=torch.bool)),
        "tar": berhu_ref(out["density_t"][:, 0], maps.d_t, torch.ones_like(maps.d_t, dtype=torch.bool)),
        "adv": F.binary_cross_entropy_with_logits(disc(f_t), torch.zeros(B, 1, H, W)),  # fool D: source label 0
    }
    result = {}
    for term, loss in losses.items():
        grads = torch.autograd.grad(loss, list(out.values()), allow_unused=True)
        result[term] = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(out.items(), grads)}
    return result


@pytest.fixture(scope="module")
def reference():
    return term_gradients(run_step(LAMBDAS))


@pytest.mark.parametrize("term", TERMS)
def test_each_loss_term_reaches_the_network_with_its_own_lambda(term, reference):
    alone = {k: (LAMBDAS[k] if k == term else 0.0) for k in TERMS}
    got = run_step(alone)
    touched = [k for k, g in reference[term].items() if g.abs().sum() > 0]
    assert touched  # the term moves at least one head output
    for name in reference[term]:
        torch.testing.assert_close(got[name], LAMBDAS[term] * reference[term][name], rtol=1e-4, atol=1e-7,
                                   msg=lambda m: f"λ_{term} alone, d/d {name}: {m}")
    doubled = run_step({**alone, term: 2 * LAMBDAS[term]})
    for name in touched:
        torch.testing.assert_close(doubled[name], 2 * got[name], rtol=1e-4, atol=1e-7)


def test_all_terms_together_add_up(reference):
    got = run_step(LAMBDAS)
    for name in got:
        if name.startswith("_"):
            continue
        expected = sum(LAMBDAS[t] * reference[t][name] for t in TERMS)
        torch.testing.assert_close(got[name], expected, rtol=1e-4, atol=1e-6)
