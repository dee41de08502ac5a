"""SEAM (Wang et al., CVPR'20; baselines.md §4): a CAM classifier with a pixel correlation module (PCM), trained
on two views of each image (x and x rescaled ×0.3) with the classification, equivariant-regularisation (ER) and
equivariant cross regularisation (ECR) losses; pseudo-masks by CRF seeds -> AffinityNet -> random walk.

Masks (``mask_mode``):
- ``full`` (the default, and what the table uses): PCM CAMs at 4 scales + flips × labels, summed, min-max
  normalised; dense-CRF seeds with bg = (1 − max)^α at α = 4 (confident foreground) and α = 24 (confident
  background); an AffinityNet (radius 5) trained on the seeds in ``after_training``; the random walk (bg power 6,
  affinity^8, transition matrix squared 6 times) and argmax.
- ``threshold``: the same CAMs with a constant background score 0.26 (SEAM's repo default), no CRF, no AffinityNet,
  no walk: far cheaper, coarser masks.

Optimiser: the learner schedule's SGD (momentum 0.9, poly 0.9, ×1/×2/×10/×20, no weight decay on biases). The
released code passes the weight decay as SGD's momentum (momentum 5e-4); ``momentum_quirk: true`` reproduces that,
the default is the intended momentum 0.9.

Core module: no ray / mlflow / optuna.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from wilson_ray.models.backbone import build_backbone
from wilson_ray.models.weights import load_backbone_weights
from wilson_ray.weak import affinity as aff
from wilson_ray.weak.base import LearnerSchedule, WeakLearner, denormalize, multiscale_flip
from wilson_ray.weak.crf import CrfKernels, dense_crf, require_crf
from wilson_ray.weak.frozen_bn import FrozenBNMixin, freeze_bn_, wants_frozen_bn

IGNORE = 255


@dataclass
class SeamParams(LearnerSchedule):
    # schedule: LearnerSchedule's defaults are SEAM's (batch 8, 8 epochs, crop 448, lr 0.01 poly 0.9, wd 5e-4)
    momentum_quirk: bool = False  # True: momentum = weight decay (5e-4), as the released optimiser does
    frozen_bn: bool | None = None  # None: frozen iff ImageNet weights are loaded (ResNet-38 keeps its BN frozen)
    dropout: float = 0.5  # before the bias-free 1×1 classifier
    rescale: float = 0.3  # the second view x' = x rescaled by this factor
    ecr_top: float = 0.2  # ECR averages the top share of |M(CAM) − PCM| over (1+K)·h·w entries
    min_share: float = 0.25  # ℓ_min: share of pixels (lowest foreground PCM max) whose ReLU is averaged
    # masks
    mask_mode: Literal["full", "threshold"] = "full"
    scales: list[float] = field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0])
    flip: bool = True
    bg_threshold: float = 0.26  # threshold mode: the constant background score
    crf_alpha_low: float = 4.0  # seeds: bg = (1 − max)^α; the low α keeps only confident foreground
    crf_alpha_high: float = 24.0  # ... the high α keeps only confident background
    crf_iterations: int = 10
    aff_radius: int = 5
    aff_epochs: int = 8
    aff_lr: float = 0.1
    aff_batch_size: int = 8
    aff_crop_size: int = 448
    rw_bg_power: float = 6.0  # random walk: bg = (1 − max)^6
    rw_beta: float = 8.0  # affinity^β
    rw_logt: int = 6  # the transition matrix is squared this many times (t = 2^logt steps)


# ---------------------------------------------------------------------------------------------------------------
# The net


def pcm_seed(cam: torch.Tensor) -> torch.Tensor:
    """ĉ of the PCM [B,1+K,h,w] from raw CAMs: ReLU, each channel ÷ its max (+1e-5), bg = 1 − max foreground, and
    only each pixel's top foreground channel kept (the others 0). No gradient."""
    with torch.no_grad():
        c = F.relu(cam.detach().float())
        c = F.relu(c - 1e-5) / (c.flatten(2).amax(-1)[:, :, None, None] + 1e-5)
        fg = c[:, 1:]
        top = fg.amax(1, keepdim=True)
        return torch.cat([1.0 - top, torch.where(fg < top, torch.zeros_like(fg), fg)], 1)


def pcm_affinity(features: torch.Tensor) -> torch.Tensor:
    """The PCM's A [B,n,n] (n = h·w): each pixel's feature L2-normalised, A = ReLU(FᵀF), every column divided by
    its sum (+1e-5)."""
    f = features.flatten(2)
    f = f / (f.norm(dim=1, keepdim=True) + 1e-5)
    a = F.relu(f.transpose(1, 2) @ f)
    return a / (a.sum(1, keepdim=True) + 1e-5)


def pcm_refine(seed: torch.Tensor, affinity: torch.Tensor) -> torch.Tensor:
    """PCM output ĉ·A [B,C,h,w]: each pixel j gets Σ_i ĉ_i A_ij."""
    b, c, h, w = seed.shape
    return (seed.flatten(2) @ affinity).view(b, c, h, w)


class SeamNet(FrozenBNMixin, nn.Module):
    """Backbone -> dropout -> bias-free 1×1 conv to 1+K CAM channels (0 = background), plus the PCM on the
    detached conv4/conv5 features (1×1 conv + ReLU to 64/128 channels, the input image resized to h×w, a 1×1 conv
    to 192). ``forward`` returns (raw CAMs, PCM-refined CAMs), both [B,1+K,h,w] at the feature resolution."""

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float = 0.5, frozen_bn: bool = False):
        super().__init__()
        self.backbone = backbone
        self.frozen_bn = frozen_bn
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Conv2d(backbone.out_channels, 1 + num_classes, 1, bias=False)
        stages = backbone.stage_channels
        self.f8_3 = nn.Conv2d(stages["conv4"], 64, 1, bias=False)
        self.f8_4 = nn.Conv2d(stages["conv5"], 128, 1, bias=False)
        self.f9 = nn.Conv2d(3 + 64 + 128, 192, 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)
        if frozen_bn:
            freeze_bn_(backbone)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.backbone.forward_features(x)
        cam = self.classifier(self.dropout(d["out"]))
        size = cam.shape[-2:]
        parts = [F.interpolate(x, size, mode="bilinear", align_corners=True)]
        for conv, key in ((self.f8_3, "conv4"), (self.f8_4, "conv5")):
            f = d[key].detach()  # the PCM must not move the backbone
            if f.shape[-2:] != size:
                f = F.interpolate(f, size, mode="bilinear", align_corners=False)
            parts.append(F.relu(conv(f)))
        features = self.f9(torch.cat(parts, 1))
        return cam, pcm_refine(pcm_seed(cam), pcm_affinity(features))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def new_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.classifier, self.f8_3, self.f8_4, self.f9) for p in m.parameters()]


# ---------------------------------------------------------------------------------------------------------------
# The losses


def max_norm(p: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """N(·): ReLU, then per-channel min-max normalisation: ReLU(p − min − ε) / (max − min + ε)."""
    p = F.relu(p)
    flat = p.flatten(2)
    hi, lo = flat.amax(-1)[:, :, None, None], flat.amin(-1)[:, :, None, None]
    return F.relu(p - lo - eps) / (hi - lo + eps)


def top_foreground(cam: torch.Tensor) -> torch.Tensor:
    """M(·) of ECR [B,1+K,h,w]: background = 1 − max foreground, and only each pixel's top foreground score kept."""
    fg = cam[:, 1:]
    top = fg.amax(1, keepdim=True)
    return torch.cat([1.0 - top, torch.where(fg != top, torch.zeros_like(fg), fg)], 1)


def classification_loss(cam: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft margin of the GAP of the foreground CAM channels against the labels [B,K]."""
    return F.multilabel_soft_margin_loss(cam[:, 1:].float().mean((2, 3)), labels.float())


def min_pool_loss(pcm: torch.Tensor, labels: torch.Tensor, share: float = 0.25) -> torch.Tensor:
    """ℓ_min: per image, the foreground max of PCM ⊙ y over channels; mean of ReLU over the ``share`` of pixels
    with the lowest value (k = ⌊h·w·share⌋; pushes the least-object pixels' scores to ≤ 0)."""
    x = (pcm[:, 1:] * labels[:, :, None, None]).amax(1).flatten(1)
    k = max(1, int(x.shape[1] * share))
    return F.relu(torch.topk(x, k, dim=1, largest=False).values).sum() / (k * x.shape[0])


def er_loss(cam_x: torch.Tensor, cam_small: torch.Tensor, labels_bg: torch.Tensor) -> torch.Tensor:
    """ℓ_ER: mean over the foreground channels of |resize(N(CAM_x)) ⊙ y − N(CAM_x') ⊙ y| at the small view's size;
    ``labels_bg`` [B,1+K] has the background entry 1."""
    y = labels_bg[:, :, None, None]
    a = F.interpolate(max_norm(cam_x), cam_small.shape[-2:], mode="bilinear", align_corners=True) * y
    b = max_norm(cam_small) * y
    return (a[:, 1:] - b[:, 1:]).abs().mean()


def ecr_loss(pcm_norm: torch.Tensor, cam_other: torch.Tensor, top: float = 0.2) -> torch.Tensor:
    """One direction of ℓ_ECR: mean of the top ``top`` share (k = ⌊(1+K)·h·w·top⌋ per image) of
    |M(N(CAM of the other view)).detach() − N(PCM)|, both [B,1+K,h,w] already × labels."""
    diff = (top_foreground(cam_other.detach()) - pcm_norm).abs().flatten(1)
    k = max(1, int(diff.shape[1] * top))
    return torch.topk(diff, k, dim=1).values.mean()


# ---------------------------------------------------------------------------------------------------------------
# Masks


def normalise_cams(summed: torch.Tensor) -> torch.Tensor:
    """SEAM's inference normalisation of summed CAMs [K,H,W]: negatives to 0, then per class
    (x − min − 1e-5)/(max − min + 1e-5), with values within 1e-5 of the min set to 0."""
    s = summed.float().clamp_min(0)
    lo = s.flatten(1).amin(1)[:, None, None]
    hi = s.flatten(1).amax(1)[:, None, None]
    s = torch.where(s < lo + 1e-5, torch.zeros_like(s), s)
    return ((s - lo - 1e-5) / (hi - lo + 1e-5)).clamp_min(0)


def crf_seeds(
    image_rgb: torch.Tensor,
    cams: torch.Tensor,
    alpha_low: float,
    alpha_high: float,
    iterations: int = 10,
    kernels: CrfKernels = CrfKernels(),
) -> torch.Tensor:
    """PSA/SEAM seeds [H,W] (long) from normalised CAMs of the present classes [P,H,W]: dense CRF of
    (bg = (1 − max)^α, cams) at both α; the low-α CRF's foreground argmax is kept, its background becomes
    ignore (255) except where the high-α CRF says background (0). Values are 0, 1..P, 255."""
    bg_base = 1.0 - cams.amax(0, keepdim=True)
    low = dense_crf(image_rgb, torch.cat([bg_base.pow(alpha_low), cams]), iterations, kernels).argmax(0)
    high = dense_crf(image_rgb, torch.cat([bg_base.pow(alpha_high), cams]), iterations, kernels).argmax(0)
    seeds = torch.from_numpy(low).long()
    seeds[seeds == 0] = IGNORE
    seeds[torch.from_numpy(high) == 0] = 0
    return seeds


class _SeedCrops(Dataset):
    """(image crop [3,c,c], seed crop [c,c]) of the inference view with its seeds read from ``folder``: random
    horizontal flip and random crop (image padded with 0 = the mean colour, seeds with 255)."""

    def __init__(self, view, folder: Path, crop: int):
        self.view, self.folder, self.crop = view, folder, crop

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, i: int):
        image, _, _, image_id = self.view[i]
        seed = torch.from_numpy(np.array(Image.open(self.folder / f"{i}.png"), dtype=np.int64))
        if torch.rand(()) < 0.5:
            image, seed = image.flip(-1), seed.flip(-1)
        c = self.crop
        h, w = seed.shape
        ph, pw = max(0, c - h), max(0, c - w)
        image = F.pad(image, (0, pw, 0, ph))
        seed = F.pad(seed, (0, pw, 0, ph), value=IGNORE)
        top = int(torch.randint(0, image.shape[1] - c + 1, ()))
        left = int(torch.randint(0, image.shape[2] - c + 1, ()))
        return image[:, top : top + c, left : left + c], seed[top : top + c, left : left + c]


class SeamLearner(WeakLearner):
    name = "seam"
    Params = SeamParams

    def __init__(self, params, num_classes: int):
        super().__init__(params, num_classes)
        if params.mask_mode == "full":
            require_crf()  # fail before training, not after it
        self.model_cfg = None
        self.affinity_net: aff.AffinityNet | None = None

    # --- nets -----------------------------------------------------------------------------------------------
    def _backbone(self, model_cfg) -> nn.Module:
        body = build_backbone(
            model_cfg.backbone,
            output_stride=model_cfg.output_stride,
            norm=model_cfg.norm,
            small_width=model_cfg.small_width,
        )
        load_backbone_weights(body, model_cfg.pretrained)
        return body

    def _frozen(self, model_cfg) -> bool:
        return wants_frozen_bn(self.p.frozen_bn, model_cfg.pretrained)

    def build_net(self, model_cfg) -> nn.Module:
        self.model_cfg = model_cfg
        return SeamNet(self._backbone(model_cfg), self.num_classes, self.p.dropout, self._frozen(model_cfg))

    def param_groups(self, net: nn.Module, lr: float, weight_decay: float) -> list[dict]:
        groups = super().param_groups(net, lr, weight_decay)
        if self.p.momentum_quirk:
            for g in groups:
                g["momentum"] = weight_decay
        return groups

    # --- training -------------------------------------------------------------------------------------------
    def losses(self, net: nn.Module, batch, epoch: int) -> dict[str, torch.Tensor]:
        x = batch.images
        y = batch.labels.float()
        y_bg = torch.cat([y.new_ones(y.shape[0], 1), y], 1)
        yb = y_bg[:, :, None, None]
        x_small = F.interpolate(
            x, scale_factor=self.p.rescale, mode="bilinear", align_corners=True, recompute_scale_factor=False
        )
        views = []
        for view in (x, x_small):
            cam, pcm = net(view)
            size = view.shape[-2:]
            views.append(
                (
                    F.interpolate(cam, size, mode="bilinear", align_corners=True),
                    F.interpolate(pcm, size, mode="bilinear", align_corners=True),
                )
            )
        (cam1, pcm1), (cam2, pcm2) = views
        small = cam2.shape[-2:]
        cls = (classification_loss(cam1, y) + classification_loss(cam2, y)) / 2
        lmin = (min_pool_loss(pcm1, y, self.p.min_share) + min_pool_loss(pcm2, y, self.p.min_share)) / 2
        er = er_loss(cam1, cam2, y_bg)
        n1 = F.interpolate(max_norm(cam1), small, mode="bilinear", align_corners=True) * yb
        r1 = F.interpolate(max_norm(pcm1), small, mode="bilinear", align_corners=True) * yb
        n2, r2 = max_norm(cam2) * yb, max_norm(pcm2) * yb
        ecr = ecr_loss(r1, n2, self.p.ecr_top) + ecr_loss(r2, n1, self.p.ecr_top)
        return {"cls": cls, "min": lmin, "er": er, "ecr": ecr}

    # --- masks ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def cams(self, net: nn.Module, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Normalised PCM CAMs [K,H,W] of one image [1,3,H,W]: foreground channels at every scale and flip,
        × labels, summed, min-max normalised per class (absent classes stay 0)."""
        maps = multiscale_flip(lambda v: net(v)[1][:, 1:], image, self.p.scales, self.p.flip)
        summed = torch.stack(maps).sum(0)[0] * labels.float().view(-1, 1, 1)
        return normalise_cams(summed) * (labels.float().view(-1, 1, 1) > 0)

    def after_training(self, net: nn.Module, dataset, device: torch.device) -> None:
        """``full`` masks: CRF seeds of every training image, then AffinityNet trained on them."""
        if self.p.mask_mode != "full":
            return
        with tempfile.TemporaryDirectory(prefix="seam-seeds-") as tmp:
            folder = Path(tmp)
            net.eval()
            for i in range(len(dataset)):
                image, labels, _, _ = dataset[i]
                seed = self.seeds(net, image.unsqueeze(0).to(device), labels.to(device))
                Image.fromarray(seed.numpy().astype(np.uint8)).save(folder / f"{i}.png")
            self.affinity_net = self.train_affinity(_SeedCrops(dataset, folder, self.p.aff_crop_size), device)

    @torch.no_grad()
    def seeds(self, net: nn.Module, image: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Seed labels [H,W] of one image in learner classes (0 = bg, 1..K, 255 = unsure) from its CRF seeds."""
        present = torch.nonzero(labels > 0.5).flatten()
        if present.numel() == 0:
            return torch.zeros(image.shape[-2:], dtype=torch.long)
        cams = self.cams(net, image, labels)[present].cpu()
        seeds = crf_seeds(
            denormalize(image).cpu(), cams, self.p.crf_alpha_low, self.p.crf_alpha_high, self.p.crf_iterations
        )
        classes = torch.cat([torch.zeros(1, dtype=torch.long), present.cpu() + 1, torch.tensor([IGNORE])])
        return classes[torch.where(seeds == IGNORE, len(present) + 1, seeds)]

    def train_affinity(self, crops: Dataset, device: torch.device) -> aff.AffinityNet:
        """Train AffinityNet on seed crops (PSA's recipe: SGD, poly, ×1/×2/×10/×20, loss bg⁺/4 + fg⁺/4 + neg/2)."""
        p = self.p
        net = aff.AffinityNet(self._backbone(self.model_cfg)).to(device)
        if self._frozen(self.model_cfg):
            freeze_bn_(net.backbone)
        optimizer = torch.optim.SGD(self.param_groups(net, p.aff_lr, p.weight_decay), lr=p.aff_lr, momentum=p.momentum)
        batch = min(p.aff_batch_size, len(crops))
        loader = DataLoader(crops, batch_size=batch, shuffle=True, drop_last=True)
        iters = len(loader) if not p.max_iters_per_epoch else min(len(loader), p.max_iters_per_epoch)
        total = max(1, p.aff_epochs * iters)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: max(0.0, 1 - it / total) ** p.power)
        pairs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        net.train()
        if self._frozen(self.model_cfg):
            freeze_bn_(net.backbone)
        for _ in range(p.aff_epochs):
            for it, (images, seeds) in enumerate(loader):
                if it >= iters:
                    break
                optimizer.zero_grad(set_to_none=True)  # before the forward, so its peak holds no old gradients
                feats = net(images.to(device))
                h, w = feats.shape[-2:]
                if (h, w) not in pairs:
                    pairs[(h, w)] = aff.pair_indices(h, w, p.aff_radius, device)
                src, dst = pairs[(h, w)]
                small = F.interpolate(seeds[:, None].float(), (h, w), mode="nearest")[:, 0].long().to(device)
                terms = aff.affinity_loss(aff.pair_affinities(feats, src, dst), *aff.affinity_labels(small, src, dst))
                loss = sum(terms.values())
                loss.backward()
                optimizer.step()
                scheduler.step()
        return net.eval()

    @torch.no_grad()
    def infer_mask(self, net: nn.Module, image: torch.Tensor, labels: torch.Tensor, extras: dict) -> torch.Tensor:
        labels = labels.float()
        cams = self.cams(net, image, labels)
        if self.p.mask_mode == "threshold":
            bg = torch.full_like(cams[:1], self.p.bg_threshold)
            return torch.cat([bg, cams]).argmax(0).cpu()
        if self.affinity_net is None:
            raise RuntimeError("seam: mask_mode 'full' needs after_training (the AffinityNet) before infer_mask")
        present = torch.nonzero(labels > 0.5).flatten()
        if present.numel() == 0:
            return torch.zeros(image.shape[-2:], dtype=torch.long)
        scores = self.walk(image, cams[present])
        classes = torch.cat([torch.zeros(1, dtype=torch.long, device=present.device), present + 1])
        return classes[scores.argmax(0)].cpu()

    @torch.no_grad()
    def walk(self, image: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
        """Random-walk scores [1+P,H,W] of one image [1,3,H,W] from the normalised CAMs of its present classes:
        bg = (1 − max)^``rw_bg_power``, pooled to the AffinityNet's stride-8 grid, propagated by
        T^(2^logt) with T from affinity^β, upsampled back."""
        p = self.p
        h, w = image.shape[-2:]
        pad_h, pad_w = (-h) % 8, (-w) % 8
        scores = torch.cat([(1.0 - cams.amax(0, keepdim=True)).pow(p.rw_bg_power), cams])
        feats = self.affinity_net(F.pad(image, (0, pad_w, 0, pad_h)))
        fh, fw = feats.shape[-2:]
        pooled = F.adaptive_avg_pool2d(F.pad(scores, (0, pad_w, 0, pad_h))[None], (fh, fw))[0]
        src, dst = aff.pair_indices(fh, fw, p.aff_radius, feats.device)
        t = aff.transition_matrix(aff.pair_affinities(feats, src, dst)[0], src, dst, fh * fw, p.rw_beta)
        walked = aff.random_walk(pooled, t, p.rw_logt)
        up = F.interpolate(walked[None], (h + pad_h, w + pad_w), mode="bilinear", align_corners=False)[0]
        return up[:, :h, :w]


__all__ = [
    "SeamLearner",
    "SeamNet",
    "SeamParams",
    "classification_loss",
    "crf_seeds",
    "ecr_loss",
    "er_loss",
    "max_norm",
    "min_pool_loss",
    "normalise_cams",
    "pcm_affinity",
    "pcm_refine",
    "pcm_seed",
    "top_foreground",
]
