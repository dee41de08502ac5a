"""SDR (baselines.md §2): prototype updates and per-class gathers (no channel mixing across images), the loss terms
on hand-computed tensors, a sparsity term that sparsifies, and the prototype bank surviving the real checkpoint."""

import math

import pytest
import torch

from wilson_ray import prototypes
from wilson_ray.checkpoint import load_checkpoint, save_checkpoint
from wilson_ray.config import resolve_config
from wilson_ray.methods import sdr
from wilson_ray.methods.ce_step0 import CEStepZero
from wilson_ray.models.segmenter import build_segmenter
from wilson_ray.protocol import get_task


def _f(*pixels):
    """Features [1, D, 1, n] from n pixel vectors."""
    return torch.tensor(pixels, dtype=torch.float32).T[None, :, None, :]


def test_prototype_running_mean_and_frozen_skipped_classes():
    protos, counts = torch.zeros(3, 2), torch.zeros(3)
    prototypes.update_prototypes(protos, counts, _f((1, 2), (3, 4)), torch.tensor([[[1, 1]]]))
    assert protos[1].tolist() == [2.0, 3.0] and counts.tolist() == [0, 2, 0]
    # (5, 6) joins class 1: (5 + 2·2)/3, (6 + 2·3)/3; the 255 pixel and the skipped background are left out
    prototypes.update_prototypes(protos, counts, _f((5, 6), (7, 8), (9, 9)), torch.tensor([[[1, 255, 0]]]), skip=(0,))
    assert protos[1].tolist() == [3.0, 4.0] and counts.tolist() == [0, 3, 0] and protos[0].tolist() == [0.0, 0.0]


def test_class_means_keep_channels_together_over_several_images():
    # two images, D = 3 channels with distinct magnitudes: a channel-major reshape would mix them
    f = torch.zeros(2, 3, 1, 2)
    f[0, :, 0, 0] = torch.tensor([1.0, 10.0, 100.0])
    f[1, :, 0, 1] = torch.tensor([3.0, 30.0, 300.0])
    labels = torch.tensor([[[2, 0]], [[0, 2]]])
    mu, present = prototypes.class_means(f, labels, 3)
    assert present.tolist() == [True, False, True]
    assert mu[2].tolist() == [2.0, 20.0, 200.0] and mu[0].tolist() == [0.0, 0.0, 0.0]


def test_prototype_matching_on_old_predictions_in_background():
    f = _f((1.0, 1.0), (3.0, 3.0), (9.0, 9.0))
    gt = torch.tensor([[[0, 0, 4]]])  # the last pixel is a new class: not matched
    old_pred = torch.tensor([[[1, 1, 1]]])
    protos = torch.tensor([[0.0, 0.0], [2.0, 1.0], [0.0, 0.0]])
    loss = sdr.prototype_matching_loss(f, old_pred, gt, protos, num_old=3)
    assert loss.item() == pytest.approx(((2 - 2) ** 2 + (2 - 1) ** 2) / 2)  # μ_1 = (2, 2)


def test_attraction_and_repulsion_by_hand():
    f = _f((1.0, 0.0), (3.0, 0.0), (0.0, 2.0))
    gt = torch.tensor([[[1, 1, 2]]])
    protos = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    counts = torch.tensor([1.0, 5.0, 0.0])  # class 2 has no prototype yet: not attracted
    assert sdr.attraction_loss(f, gt, protos, counts).item() == pytest.approx(((1 + 0) / 2 + (1 + 0) / 2) / 2)
    # batch means μ_1 = (2, 0), μ_2 = (0, 2): distance √8 both ways
    assert sdr.repulsion_loss(f, gt, 3).item() == pytest.approx(1 / math.sqrt(8))


def test_sparsity_term_rewards_concentrated_activations_and_ignores_scale():
    gt = torch.tensor([[[1, 1]]])
    dense = _f((1.0, 1.0, 1.0, 1.0), (1.0, 1.0, 1.0, 1.0))
    sparse = _f((1.0, 0.0, 0.0, 0.0), (0.0, 1.0, 0.0, 0.0))
    assert sdr.sparsity_loss(dense, gt, 2).item() == pytest.approx(1.0)
    assert sdr.sparsity_loss(sparse, gt, 2).item() == pytest.approx(0.5)  # 1/√4
    assert sdr.sparsity_loss(3 * dense, gt, 2).item() == pytest.approx(1.0)
    f = torch.nn.Parameter(_f((2.0, 1.0, 1.0, 1.0), (2.0, 1.0, 1.0, 1.0)))
    sdr.sparsity_loss(f, gt, 2).backward()
    assert (f.grad[0, 1:] > 0).all() and (f.grad[0, 0] < 0).all()  # descent lowers the weak channels only


def test_prototype_bank_survives_the_checkpoint_and_grows(tmp_path):
    task = get_task("15-5")
    cfg = resolve_config("demo", method="sdr")
    step0 = CEStepZero(None, task, 0)
    torch.manual_seed(0)
    f = torch.randn(2, 128, 4, 4)
    masks = torch.randint(0, 16, (2, 64, 64))
    step0.accumulate(f, masks)
    model = build_segmenter("small", task.classes_per_step(0), small_width=16, head_channels=64)
    path = save_checkpoint(tmp_path / "step0.pt", model, cfg, task, 0, {}, step0.state_dict())
    state = load_checkpoint(path)["method_state"]
    method = sdr.SDR(cfg.method.args, task, 1)
    method.load_state_dict(state)
    assert method.prototypes.shape == (21, 128)
    assert torch.equal(method.prototypes[:16], step0.prototypes) and method.counts[16:].sum() == 0
    labels = prototypes.downsample_labels(masks, (4, 4))
    assert torch.equal(method.counts[:16], torch.bincount(labels.flatten(), minlength=16).float())
    assert sdr.SDR(cfg.method.args, task, 1).state_dict() == {}


def test_sdr_refuses_a_checkpoint_without_prototypes():
    from wilson_ray.errors import UserError

    with pytest.raises(UserError, match="no prototype bank"):
        sdr.SDR(sdr.SDRParams(), get_task("15-5"), 1).load_state_dict({})


def test_sdr_search_space_loads_with_the_published_defaults_first():
    from pathlib import Path

    from wilson_ray.orchestration.search_space import load_search_space

    space = load_search_space(Path(__file__).resolve().parents[2] / "search_spaces" / "sdr.yaml")
    assert space.base_config().method.name == "sdr" and len(space.params) >= 4
