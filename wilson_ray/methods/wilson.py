"""WILSON (Cermelli et al., CVPR 2022): learn new classes from image-level labels (method.md §3.2–§3.9).

Per iteration at step t >= 1: the new model (features f, logits s), the frozen old model (f_old, s_old), the
localizer twice on f (first eval mode: z̄, detached targets with the running BN statistics from before this batch;
then train mode: z, with gradient into the encoder), and PAMR.
Epochs < pseudo_epochs: L = ℓ_CLS + ℓ_LOC + ℓ_ENC (localizer pre-training; head and classifiers get a zero
gradient, but the head still runs in train mode so that its BatchNorm statistics follow the data, as in the official
code). Later: L = ℓ_SEG + ℓ_CLS + ℓ_LOC + ℓ_SSS + ℓ_ENC. All weights default to 1 (§3.9).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from wilson_ray import losses, pseudo_labels
from wilson_ray.data.memory import MemoryParams
from wilson_ray.methods.base import Batch, Context, MemoryMethod
from wilson_ray.models.localizer import Localizer


@dataclass
class WilsonParams(MemoryParams):
    alpha: float = 0.5  # weight of the hard label in q (0.9 for COCO)
    temperature: float = 1.0  # smoothing temperature of m̄ = softmax(z̄ / T); 1 reproduces the paper
    bkg_beta: float | None = None  # None: background target min(σ(s_old,b), q_b); β: blend (`icarl_bkg`)
    pseudo_epochs: int = 5  # localizer-only epochs; also where the `warmup` LR decay starts
    lambda_cls: float = 1.0
    lambda_loc: float = 1.0
    lambda_sss: float = 1.0
    lambda_enc: float = 1.0  # `loss_de`
    lambda_seg: float = 1.0  # `l_seg`
    ngwp_eps: float = 1.0
    focal_gamma: float = 3.0
    focal_lambda: float = 0.01
    cutoff_fg: float = 0.6
    cutoff_bg: float = 0.7
    cutoff_low: float = 0.2
    pamr_iterations: int = 10  # 0 disables PAMR (official run without --affinity)
    pamr_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 12])


class Wilson(MemoryMethod):
    name = "wilson"
    Params = WilsonParams
    uses_localizer = True

    def build_localizer(self, in_channels: int, norm: str):
        return Localizer(in_channels, self.num_classes, norm=norm)

    def warnings(self) -> list[str]:
        if self.num_new == 1:
            return [
                f"{self.name}: step {self.step} of task '{self.task.name}' has a single new class, so ℓ_CLS has no "
                "negative images (every image is positive for it, method.md §1.2); the paper does not support "
                "single-class steps. Running anyway."
            ]
        return []

    def constant_lr_epochs(self) -> int:
        return self.p.pseudo_epochs

    # Parts the CAM baseline replaces --------------------------------------------------------------------------
    def localizer_losses(self, z: torch.Tensor, s_old: torch.Tensor, labels: torch.Tensor) -> dict:
        """ℓ_CLS (nGWP + focal, §3.2) and the ℓ_LOC prior (§3.3)."""
        p = self.p
        return {
            "cls": p.lambda_cls
            * losses.classification_loss(
                z, labels, self.num_new, p.ngwp_eps, p.focal_gamma, p.focal_lambda, all_classes=self.no_mask
            ),
            "loc": p.lambda_loc * losses.localization_prior_loss(z[:, : self.num_old], s_old),
        }

    def targets(self, z_bar: torch.Tensor, labels: torch.Tensor, s_old: torch.Tensor):
        """Soft pseudo-labels q̂ and image weights w (§3.5)."""
        return pseudo_labels.soft_pseudo_labels(
            z_bar, labels, s_old, alpha=self.p.alpha, temperature=self.p.temperature, bkg_beta=self.p.bkg_beta
        )

    def self_supervision(self, z, z_bar, batch: Batch) -> dict:
        """ℓ_SSS on PAMR-refined localizer masks (§3.7, §3.8)."""
        p = self.p
        refined = pseudo_labels.localizer_refined_masks(
            z_bar, batch.images.float(), batch.labels, p.pamr_iterations, tuple(p.pamr_dilations)
        )
        return {
            "sss": p.lambda_sss
            * losses.self_supervised_loss(z, refined, batch.labels, p.cutoff_fg, p.cutoff_bg, p.cutoff_low)
        }

    @staticmethod
    @torch.no_grad()
    def track_head_statistics(ctx: Context, f: torch.Tensor) -> None:
        """Run the DeepLab head in train mode on ``f`` without gradient, only to update its BatchNorm running
        statistics during the localizer-only epochs (method.md §3.9).

        The official code computes the segmentation logits every iteration and adds ``0 * outputs.mean()`` to the
        loss, so the head's BN statistics keep moving while ℓ_SEG is off; skipping the head would leave them at the
        step t-1 values and change both the validations of these epochs and the statistics ℓ_SEG starts from. The
        head's parameters get the same exact-zero gradient either way (the engine zero-fills missing gradients); the
        classifiers hold no statistics, so they are not run. No graph is built, so DDP sees the head as unused.
        Cost: one head forward, 30.6 of the 519 GFLOP per image of a localizer-only iteration (ResNet-101, 512²).
        """
        ctx.module.model.head(f.detach())

    # ----------------------------------------------------------------------------------------------------------
    def losses(self, ctx: Context, batch: Batch, epoch: int):
        """The terms of one batch. Order as in the reference: features f and logits s; z̄ from the eval-mode
        localizer on f.detach() (BatchNorm running statistics from before this batch, §3.5); then the train-mode
        localizer z on f, which updates those statistics and sends ℓ_CLS/ℓ_LOC/ℓ_SSS gradients into f."""
        pseudo = epoch >= self.p.pseudo_epochs
        # The memory joins only the epochs that train the segmentation head (ℓ_MEM needs its logits); the new
        # images come first, the memory images (if any) after them. ℓ_ENC (below) distils the features of both,
        # as it did when the memory was WILSON's alone (the measured wilson+memory rows, docs/results.md).
        images, n = self.with_memory(batch) if pseudo else (batch.images, batch.images.shape[0])
        memory = images.shape[0] > n
        out = ctx.net(images, logits=pseudo, upsample=False, localizer=True, localizer_eval=pseudo)
        f, z, z_bar = out.features, out.localizer, out.localizer_eval
        old = self.old_outputs(ctx, images)
        s_old, f_old = old.logits, old.features
        if not pseudo:
            self.track_head_statistics(ctx, f)
        if memory:
            z, z_bar = z[:n], z_bar[:n]
        terms = self.localizer_losses(z, s_old[:n], batch.labels)
        terms["enc"] = self.p.lambda_enc * losses.encoder_distillation_loss(f, f_old)
        if pseudo:
            with torch.no_grad(), torch.autocast(f.device.type, enabled=False):
                q_hat, weight = self.targets(z_bar, batch.labels, s_old[:n].float())
            terms["seg"] = self.p.lambda_seg * losses.segmentation_loss(out.logits[:n], q_hat, weight)
            terms.update(self.self_supervision(z, z_bar, batch))
        if memory:
            terms.update(self.memory_terms(out.logits[n:], s_old[n:]))
        return terms

    def figure_panels(self, ctx: Context):
        """Per image: the localizer's map of the image's new classes (max over them of sigmoid z̄, upsampled) and
        the argmax of the soft pseudo-label q̂ the segmentation head trains on (method.md §3.4–§3.6)."""
        if ctx.module.localizer is None or ctx.old_model is None:
            return None

        def panels(image: torch.Tensor, labels: torch.Tensor):
            device = next(ctx.module.parameters()).device
            image, labels = image.to(device), labels.to(device).float()
            was = ctx.module.training
            ctx.module.eval()
            try:
                with torch.no_grad():
                    out = ctx.module(image, logits=False, localizer_eval=True)
                    s_old = self.old_outputs(ctx, image).logits.float()  # at the features' resolution
                    q_hat, _ = self.targets(out.localizer_eval.float(), labels, s_old)
                    size = image.shape[-2:]
                    c_old = s_old.shape[1]  # z̄ channels c_old.. are the new classes; labels[c - 1] is class c
                    new = torch.sigmoid(out.localizer_eval.float())[0, c_old:]
                    present = labels[0, c_old - 1 :] > 0
                    heat = (new[present] if present.any() else new).amax(0, keepdim=True)
                    heat = F.interpolate(heat[None], size=size, mode="bilinear", align_corners=False)[0, 0]
                    q_up = F.interpolate(q_hat.float(), size=size, mode="bilinear", align_corners=False)
                    pseudo = q_up.argmax(1)[0]
            finally:
                ctx.module.train(was)
            return heat.cpu().numpy(), pseudo.cpu().numpy()

        return panels


METHODS = (Wilson,)
