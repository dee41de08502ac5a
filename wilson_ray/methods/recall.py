"""RECALL (Maracani et al., ICCV'21), web-image variant: replay of the old classes from an external image folder
(baselines.md §3).

- The replay folder (``replay_root``) holds one sub-folder of unlabelled images per old class name
  (``data.replay``; README "RECALL replay folder"); the synthetic generator writes one.
- Before training, the step t-1 model labels every replay image offline (argmax; optionally restricted to
  {background, the folder's class}); the labels are cached per step (``pass_cache``) so sweep trials reuse them.
- Background inpainting: on the new-step images, every background pixel (void is already background in training
  masks, method.md §1.1) takes the old model's argmax. It is computed on the augmented crop, which equals labelling
  the image offline and cropping the label with it (up to the interpolation of the logits).
- Each batch of B new images is joined by round(``replay_ratio`` × B) replay images (1:1 by default, as RECALL's
  4 + 4 interleaved batches), randomly flipped; the loss is softmax CE over the seen classes, 255 ignored.
- Optional frozen encoder (RECALL trains only the decoder): the encoder leaves the optimiser and keeps its
  BatchNorm statistics; the head's BatchNorm still trains (RECALL's DeepLab-V2 decoder has none).

Toolkit version with our DeepLab-V3 (RECALL used DeepLab-V2 and a COCO-pretrained encoder): not comparable to the
paper's row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from wilson_ray.data.replay import load_replay_images, replay_listing
from wilson_ray.losses import IGNORE_INDEX
from wilson_ray.methods.base import Batch, Context, Method
from wilson_ray.pass_cache import cached_pass


@dataclass
class RECALLParams:
    replay_root: str | None = None  # one sub-folder of images per old class name
    replay_per_class: int = 0  # images used per class (first N by name); 0: all
    replay_ratio: float = 1.0  # replay images per new image in a batch (RECALL: 4 + 4)
    freeze_encoder: bool = True  # RECALL trains only the decoder after step 0
    restrict_labels: bool = False  # label a replay image only as background or its folder's class
    inpaint_background: bool = True  # background of new images labelled by the old model

    def __post_init__(self) -> None:
        from wilson_ray.errors import UserError

        if self.replay_per_class < 0:
            raise UserError(f"method.replay_per_class is {self.replay_per_class!r}, expected an integer >= 0")
        if self.replay_ratio < 0:
            raise UserError(f"method.replay_ratio is {self.replay_ratio!r}, expected a number >= 0")


class RECALL(Method):
    name = "recall"
    Params = RECALLParams
    # RECALL's recipe: poly lr 5e-4 over #new classes x 1000 iterations of 4 new + 4 replay images, momentum 0.9
    # without Nesterov, one LR: about 10 epochs of the 15-5 step-1 set (baselines.md §3).
    recipe = {"incremental": {"epochs": 10, "lr": 0.0005, "lr_head": 1.0, "policy": "poly", "nesterov": False}}

    def __init__(self, params: RECALLParams, task, step: int, no_mask: bool = False):
        super().__init__(params, task, step, no_mask)
        self.listing: list[tuple[int, Path]] = []
        self.labels: torch.Tensor | None = None
        self.order: torch.Tensor | None = None
        self.cursor = 0

    @classmethod
    def preflight(cls, params: RECALLParams, task, step: int) -> None:
        """The replay folder must hold a readable image folder for every old class."""
        replay_listing(params.replay_root, task.class_names(step - 1)[1:], params.replay_per_class)

    def on_model_ready(self, model) -> None:
        if self.p.freeze_encoder:
            model.backbone.requires_grad_(False)

    def param_groups(self, module, optim) -> list[dict]:
        groups = super().param_groups(module, optim)
        return [g for g in groups if g["name"] != "backbone"] if self.p.freeze_encoder else groups

    def before_training(self, ctx: Context, loader: Any) -> None:
        """List and check the replay folder, then label it with the old model (cached per step)."""
        self.prepare(ctx, int(next(iter(loader)).images.shape[-1]))

    def prepare(self, ctx: Context, size: int) -> None:
        """The replay listing and its labels at the training crop ``size`` (also on a resumed step, from the
        cache, since ``before_training`` does not run there)."""
        # Decoding every image was the preflight's job; a file broken since then still fails on load, in one line.
        self.listing = replay_listing(
            self.p.replay_root, self.task.class_names(self.step - 1)[1:], self.p.replay_per_class, check_images=False
        )
        stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for _, p in self.listing]
        settings = {"files": stamp, "size": size, "restrict": self.p.restrict_labels}
        result = cached_pass(
            ctx.cache_dir, ctx.pass_key, "recall-labels", settings, lambda: {"labels": self.label_replay(ctx, size)}
        )
        self.labels = result["labels"]
        self.order = torch.randperm(len(self.listing))
        self.cursor = 0

    @torch.no_grad()
    def label_replay(self, ctx: Context, size: int, chunk: int = 32) -> torch.Tensor:
        """uint8 [N,size,size]: the old model's argmax on each replay image (restricted to {0, its class} when
        ``restrict_labels``)."""
        device = next(ctx.module.parameters()).device
        out = []
        for start in range(0, len(self.listing), chunk):
            part = self.listing[start : start + chunk]
            images = load_replay_images(part, size).to(device)
            s_old = self.old_outputs(ctx, images, upsample=True).logits.float()
            if self.p.restrict_labels:
                cls = torch.tensor([c for c, _ in part], device=device)
                pair = torch.stack([s_old[:, 0], s_old[torch.arange(len(part), device=device), cls]], 1)
                pred = torch.where(pair.argmax(1) == 1, cls[:, None, None], torch.zeros_like(cls)[:, None, None])
            else:
                pred = s_old.argmax(1)
            out.append(pred.to(torch.uint8).cpu())
        return torch.cat(out)

    def draw(self, k: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``k`` replay (image, label) pairs of a shuffled pass over the folder, randomly flipped."""
        idx = []
        for _ in range(k):
            if self.cursor >= len(self.order):
                self.order, self.cursor = torch.randperm(len(self.listing)), 0
            idx.append(int(self.order[self.cursor]))
            self.cursor += 1
        images = load_replay_images([self.listing[i] for i in idx], size)
        labels = self.labels[idx].long()
        flip = torch.rand(k) < 0.5
        images[flip], labels[flip] = images[flip].flip(-1), labels[flip].flip(-1)
        return images.to(device), labels.to(device)

    def losses(self, ctx: Context, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        """Softmax CE over the seen classes on the inpainted new images and the labelled replay images."""
        if self.p.freeze_encoder:
            ctx.module.model.backbone.eval()  # frozen BatchNorm statistics too (the engine sets train mode)
        masks = batch.masks
        if self.p.inpaint_background:
            s_old = self.old_outputs(ctx, batch.images, upsample=True).logits
            masks = torch.where(masks == 0, s_old.argmax(1), masks)
        images = batch.images
        if self.labels is None:  # a resumed step skips before_training
            self.prepare(ctx, int(images.shape[-1]))
        k = int(round(self.p.replay_ratio * images.shape[0]))
        if k > 0:
            r_images, r_labels = self.draw(k, images.shape[-1], images.device)
            images = torch.cat(
                [
                    images,
                    r_images.to(memory_format=torch.channels_last)
                    if images.is_contiguous(memory_format=torch.channels_last)
                    else r_images,
                ]
            )
            masks = torch.cat([masks, r_labels])
        s = ctx.net(images, logits=True, upsample=True).logits
        return {"ce": F.cross_entropy(s.float(), masks, ignore_index=IGNORE_INDEX)}


METHODS = (RECALL,)
