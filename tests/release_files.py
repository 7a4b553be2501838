"""Stand-ins for the released model files, built from the releases' key names and shapes
(see tests/test_release.py for the facts and where they were read), and the releases' forward
passes written from the raw tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCKS = (("layer1", 64, 3, 1, 1), ("layer2", 128, 4, 2, 1), ("layer3", 256, 23, 1, 2), ("layer4", 512, 3, 1, 4))
RATES = (6, 12, 18, 24)


# ---------------------------------------------------------------- the releases' state dicts, from their facts


def _conv(gen, cout, cin, k, bias=False, gain=1.0):
    w = torch.randn(cout, cin, k, k, generator=gen) * (gain * (2.0 / (cin * k * k)) ** 0.5)
    return (w, torch.randn(cout, generator=gen) * 0.1) if bias else (w,)


def _bn(gen, prefix, n, sd, damp=1.0):
    sd[f"{prefix}.weight"] = (0.5 + torch.rand(n, generator=gen)) * damp
    sd[f"{prefix}.bias"] = torch.randn(n, generator=gen) * 0.1
    sd[f"{prefix}.running_mean"] = torch.randn(n, generator=gen) * 0.2
    sd[f"{prefix}.running_var"] = 0.5 + torch.rand(n, generator=gen)
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(12345)


def resnet101_state(gen) -> dict:
    sd = {"conv1.weight": _conv(gen, 64, 3, 7)[0]}
    _bn(gen, "bn1", 64, sd)
    inplanes = 64
    for name, planes, blocks, stride, _ in BLOCKS:
        for i in range(blocks):
            p = f"{name}.{i}"
            sd[f"{p}.conv1.weight"] = _conv(gen, planes, inplanes, 1)[0]
            _bn(gen, f"{p}.bn1", planes, sd)
            sd[f"{p}.conv2.weight"] = _conv(gen, planes, planes, 3)[0]
            _bn(gen, f"{p}.bn2", planes, sd)
            sd[f"{p}.conv3.weight"] = _conv(gen, planes * 4, planes, 1)[0]
            _bn(gen, f"{p}.bn3", planes * 4, sd, damp=0.3)  # damped residual branches keep 33 blocks finite
            if i == 0:
                sd[f"{p}.downsample.0.weight"] = _conv(gen, planes * 4, inplanes, 1)[0]
                _bn(gen, f"{p}.downsample.1", planes * 4, sd)
            inplanes = planes * 4
    return sd


def _aspp(gen, prefix, classes, cin, sd):
    for i in range(4):
        sd[f"{prefix}.conv2d_list.{i}.weight"], sd[f"{prefix}.conv2d_list.{i}.bias"] = _conv(gen, classes, cin, 3, True, 0.3)


def _enc(gen, prefix, sd):
    for j, (cout, cin, k) in enumerate(((512, 2048, 1), (512, 512, 3), (128, 512, 1)), 1):
        sd[f"{prefix}_{j}.weight"], sd[f"{prefix}_{j}.bias"] = _conv(gen, cout, cin, k, True)


def release_state(fmt: str, classes: int, seed: int = 0, multi_level: bool = True) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sd = resnet101_state(gen)
    _aspp(gen, "layer6", classes, 2048, sd)
    if fmt == "depth_distribution":
        _enc(gen, "enc4", sd)
        sd["enc4_4.weight"], sd["enc4_4.bias"] = _conv(gen, 16, 128, 1, True)
        sd["dec4.weight"], sd["dec4.bias"] = _conv(gen, 2048, 128, 1, True)
        _enc(gen, "enc5", sd)
    elif fmt == "dada":
        _enc(gen, "enc4", sd)
        sd["dec4.weight"], sd["dec4.bias"] = _conv(gen, 2048, 128, 1, True, 0.5)
    elif multi_level:  # advent
        _aspp(gen, "layer5", classes, 1024, sd)
    return sd


def disc_state(classes: int, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    sd, widths = {}, (classes, 64, 128, 256, 512, 1)
    for j, (cin, cout) in enumerate(zip(widths[:-1], widths[1:])):
        sd[f"{2 * j}.weight"], sd[f"{2 * j}.bias"] = _conv(gen, cout, cin, 4, True)
    return sd


# ---------------------------------------------------------------- their forward passes, from the raw tensors


def _bn_f(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def ref_bottleneck(x, sd, p, stride, dilation, project):
    out = F.relu(_bn_f(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride), sd, f"{p}.bn1"))
    out = F.relu(_bn_f(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=dilation, dilation=dilation), sd, f"{p}.bn2"))
    out = _bn_f(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
    short = _bn_f(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1") if project else x
    return F.relu(out + short)


def ref_trunk(x, sd):
    """(layer3, layer4) features of DeepLab-v2's caffe ResNet-101."""
    x = F.relu(_bn_f(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
    feats = {}
    for name, _, blocks, stride, dilation in BLOCKS:
        for i in range(blocks):
            x = ref_bottleneck(x, sd, f"{name}.{i}", stride if i == 0 else 1, dilation, i == 0)
        feats[name] = x
    return feats["layer3"], feats["layer4"]


def ref_aspp(x, sd, p):
    return sum(F.conv2d(x, sd[f"{p}.conv2d_list.{i}.weight"], sd[f"{p}.conv2d_list.{i}.bias"], padding=r, dilation=r)
               for i, r in enumerate(RATES))


def ref_code(x, sd, p):
    x = F.relu(F.conv2d(x, sd[f"{p}_1.weight"], sd[f"{p}_1.bias"]))
    x = F.relu(F.conv2d(x, sd[f"{p}_2.weight"], sd[f"{p}_2.bias"], padding=1))
    return F.conv2d(x, sd[f"{p}_3.weight"], sd[f"{p}_3.bias"])


def ref_forward(fmt, sd, x) -> dict:
    c3, c4 = ref_trunk(x, sd)
    if fmt == "depth_distribution":
        return {"seg": ref_aspp(c4, sd, "layer6"), "density": ref_code(c4, sd, "enc4").mean(1, keepdim=True),
                "depth": ref_code(c4, sd, "enc5").mean(1, keepdim=True)}
    if fmt == "dada":
        code = ref_code(c4, sd, "enc4")
        fused = c4 * F.relu(F.conv2d(code, sd["dec4.weight"], sd["dec4.bias"]))
        return {"seg": ref_aspp(fused, sd, "layer6"), "depth": code.mean(1, keepdim=True)}
    return {"seg": ref_aspp(c4, sd, "layer6"), "aux": ref_aspp(c3, sd, "layer5")}


def ref_disc(x, sd):
    for j in range(5):
        x = F.conv2d(x, sd[f"{2 * j}.weight"], sd[f"{2 * j}.bias"], stride=2, padding=1)
        if j < 4:
            x = F.leaky_relu(x, 0.2)
    return x


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
