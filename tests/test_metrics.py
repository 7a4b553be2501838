import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion

from udaseg.data.protocols import PROTOCOLS
from udaseg.metrics import (DEPTH_METRICS, confusion_matrix, depth_metrics, depth_metrics_per_image,
                            iou_from_confusion, mean_iou, miou_star, pixel_accuracy)

P16, P7 = PROTOCOLS["synthia2cityscapes16"], PROTOCOLS["synthia2cityscapes7"]


def test_confusion_by_hand():
    gt = torch.tensor([[0, 0, 1, 1], [2, 255, 1, 0]], dtype=torch.uint8)
    pred = torch.tensor([[0, 1, 1, 1], [3, 2, 0, 0]])
    cm = confusion_matrix(pred, gt, 4)
    expected = np.array([
        [2, 1, 0, 0],  # gt 0: predicted 0, 1, 0
        [1, 2, 0, 0],  # gt 1: predicted 1, 1, 0
        [0, 0, 0, 1],  # gt 2: predicted 3
        [0, 0, 0, 0],  # gt 3: never (the 255 pixel predicted 2 is dropped)
    ])
    assert cm.dtype == torch.int64 and cm.device == gt.device
    np.testing.assert_array_equal(cm.numpy(), expected)
    iou = iou_from_confusion(cm)
    # class 0: tp 2, row 3, col 3 -> 2/4; class 1: 2/(3+3-2); class 2: gt only, never right -> 0;
    # class 3: predicted once, never in gt -> 0
    np.testing.assert_allclose(iou, [0.5, 0.5, 0.0, 0.0])
    assert pixel_accuracy(cm) == pytest.approx(4 / 7)
    assert mean_iou(iou) == pytest.approx(0.25)


def test_absent_class_is_nan_and_left_out_of_the_mean():
    gt = torch.tensor([0, 0, 1, 1, 1])
    pred = torch.tensor([0, 2, 1, 1, 0])  # class 2 predicted, not in gt; class 3 nowhere
    iou = iou_from_confusion(confusion_matrix(pred, gt, 4))
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 0.0])
    assert math.isnan(iou[3])
    assert mean_iou(iou) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_confusion_matches_sklearn_over_batches():
    rng = np.random.default_rng(0)
    c = 7
    gts = [rng.choice([*range(c), 255], (2, 9, 11)) for _ in range(3)]
    preds = [rng.integers(0, c, (2, 9, 11)) for _ in range(3)]
    cm = sum(confusion_matrix(torch.from_numpy(p), torch.from_numpy(g), c) for p, g in zip(preds, gts))
    g, p = np.concatenate([x.ravel() for x in gts]), np.concatenate([x.ravel() for x in preds])
    keep = g != 255
    np.testing.assert_array_equal(cm.numpy(), sk_confusion(g[keep], p[keep], labels=list(range(c))))


def test_miou_star_is_the_13_classes_without_wall_fence_pole():
    assert [P16.classes[i] for i in range(16) if i not in P16.miou_star] == ["wall", "fence", "pole"]
    iou = np.linspace(0.1, 0.85, 16)
    iou[7] = np.nan  # an absent class stays out of mIoU* as well
    kept = [i for i in range(16) if i not in (3, 4, 5, 7)]
    assert miou_star(iou, P16) == pytest.approx(iou[kept].mean())
    assert miou_star(iou, P7) is None


def _numpy_depth(pred, gt, valid):
    out = []
    for p, g, v in zip(pred, gt, valid):
        m = v & (g > 0)
        p, g = p[m].astype(np.float64), g[m].astype(np.float64)
        thresh = np.maximum(p / g, g / p)
        out.append([np.mean(np.abs(p - g) / g), np.mean((p - g) ** 2 / g), np.sqrt(np.mean((p - g) ** 2)),
                    np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2)), np.mean(thresh < 1.25),
                    np.mean(thresh < 1.25 ** 2), np.mean(thresh < 1.25 ** 3)])
    return np.array(out)


def test_depth_metrics_against_numpy():
    rng = np.random.default_rng(3)
    gt = rng.uniform(1, 80, (3, 12, 10)).astype(np.float32)
    pred = (gt * rng.uniform(0.6, 1.6, gt.shape)).astype(np.float32)
    valid = rng.random(gt.shape) > 0.3
    gt[0, :2] = 0  # invalid ground truth is skipped even where `valid` says otherwise
    per_image, n = depth_metrics_per_image(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(valid))
    reference = _numpy_depth(pred, gt, valid)
    np.testing.assert_allclose(per_image.numpy(), reference, rtol=1e-5)
    np.testing.assert_array_equal(n.numpy(), (valid & (gt > 0)).reshape(3, -1).sum(1))
    # averaged per image (not per pixel); an image without valid pixels does not count
    valid[2] = False
    got = depth_metrics(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(valid))
    expected = _numpy_depth(pred[:2], gt[:2], valid[:2]).mean(0)
    np.testing.assert_allclose([got[k] for k in DEPTH_METRICS], expected, rtol=1e-5)
