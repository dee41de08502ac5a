import math

import numpy as np
import torch

from wilson_ray.metrics import ConfusionMatrix, miou_table, per_class_iou


def test_confusion_matrix_counts_and_ignores_void():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm.update(pred, target)
    expected = np.array([[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    np.testing.assert_array_equal(cm.numpy(), expected)
    # IoU_c = TP / (TP + FP + FN): class 0: 1/(1+1+1), class 1: 3/(3+1+0), class 2: 1/(1+0+1)
    np.testing.assert_allclose(per_class_iou(cm.numpy()), [1 / 3, 3 / 4, 1 / 2])


def test_merge_equals_single_pass():
    rng = np.random.default_rng(0)
    t = torch.from_numpy(rng.integers(0, 4, size=(2, 8, 8)))
    p = torch.from_numpy(rng.integers(0, 4, size=(2, 8, 8)))
    whole = ConfusionMatrix(4)
    whole.update(p, t)
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(p[:1], t[:1])
    b.update(p[1:], t[1:])
    np.testing.assert_array_equal(a.merge(b).numpy(), whole.numpy())
    assert whole.numpy().sum() == 128


def test_miou_columns_paper_and_mib_conventions():
    # 4 classes: background, two old, one new. Diagonal matrix with known IoUs.
    cm = np.array(
        [
            [8, 2, 0, 0],  # background
            [0, 4, 0, 0],  # old 1
            [0, 0, 5, 5],  # old 2
            [0, 0, 0, 0],  # new 3: no GT pixel -> excluded from means
        ]
    )
    iou = per_class_iou(cm)
    assert math.isnan(iou[3])
    np.testing.assert_allclose(iou[:3], [8 / 10, 4 / 6, 5 / 10])
    t = miou_table(cm, old=[1, 2], new=[3])
    assert math.isclose(t["miou_old"], 100 * (4 / 6 + 0.5) / 2)
    assert math.isnan(t["miou_new"])
    assert math.isclose(t["miou_all"], 100 * (0.8 + 4 / 6 + 0.5) / 3)  # background included
    assert math.isclose(t["miou_all_mib"], 100 * (4 / 6 + 0.5) / 2)  # background excluded
    assert math.isclose(t["iou_background"], 80.0)
