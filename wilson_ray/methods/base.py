"""The interface every method implements, and what the engine hands it (method.md §3, §4).

A method says what to build at step t, the losses of one batch and the schedule, and may hook into every place
where the methods of the literature differ, so the engine never branches on a method or on the step:

- ``task_view``      the task it trains and the task its results are reported in (joint: flattened, one step);
- ``for_step``       the strategy of a step: at step 0 every method that ``shares_step0`` trains the same
                     fully-supervised BCE step (``StepZero``, method.md §3.1), so a sweep shares one step-0 checkpoint;
- ``extra_inputs``   per-sample inputs beyond (image, mask, labels) the dataset must supply (e.g. saliency maps);
- ``prepare_inputs`` before the step's datasets exist: build the inputs the method makes itself (offline
                     pseudo-masks, computed once and cached) so every loader worker and rank reads them;
- ``before_training`` a pass before the first epoch given the old model and the step's training data
                     (e.g. thresholds, prototypes, offline pseudo-masks);
- ``param_groups``   which parameters train and at which learning rate (e.g. a frozen encoder);
- ``state_dict`` / ``load_state_dict``  state carried to the next step in the checkpoint (e.g. prototypes).

A method never branches on task names: the protocol (``wilson_ray.protocol.Task``) tells it how many classes are
old and new.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from wilson_ray import losses
from wilson_ray.models.segmenter import ModelOutput
from wilson_ray.protocol import Task

if TYPE_CHECKING:
    from wilson_ray.config import Config, OptimConfig
    from wilson_ray.data.extras import ExtraInput


@dataclass
class Batch:
    images: torch.Tensor  # [B,3,H,W] normalised
    masks: torch.Tensor  # [B,H,W] internal indices (training masks: 255 already mapped to 0)
    labels: torch.Tensor  # [B,C-1] visible image-level labels over internal foreground classes
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # the method's ``extra_inputs``, batched


class Trainable(nn.Module):
    """Everything that receives gradients at a step: the segmenter and, for weak methods, the localizer.

    One module so that DDP wraps (and synchronises) both; ``forward`` computes only what the flags ask for.
    """

    def __init__(self, model: nn.Module, localizer: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.localizer = localizer

    def forward(
        self,
        images: torch.Tensor,
        logits: bool = True,
        upsample: bool = False,
        localizer: bool = False,
        localizer_eval: bool = False,
        maps: bool = False,
    ) -> ModelOutput:
        """``ModelOutput`` with body features always, logits (upsampled to the input when ``upsample``) when
        ``logits``, the train-mode localizer logits z when ``localizer``, and the eval-mode localizer logits z̄
        on the detached features in fp32 without gradient when ``localizer_eval``.

        z̄ is computed before z, as in the reference: it uses the BatchNorm running statistics from before this
        batch, which the train-mode pass then updates (method.md §3.5). ``maps`` adds PLOP's intermediate maps
        (``ModelOutput.maps``; needs ``logits``)."""
        model = self.model
        features, sums = model.backbone(images, stages=True) if maps else (model.backbone(images), ())
        s = z = z_bar = None
        if logits:
            pre = model.head(features)
            s = torch.cat([cls(pre) for cls in model.classifiers], dim=1)
            if upsample:
                s = F.interpolate(s, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if localizer_eval:
            with torch.no_grad(), torch.autocast(features.device.type, enabled=False):
                was_training = self.localizer.training
                self.localizer.eval()
                z_bar = self.localizer(features.detach().float())
                self.localizer.train(was_training)
        if localizer:
            z = self.localizer(features)
        return ModelOutput(s, features, z, z_bar, maps=(*sums, pre) if maps and logits else None)


@dataclass
class Context:
    """What a method's ``losses`` may use: the (possibly DDP-wrapped) trainable, its unwrapped module and the
    frozen old model (``None`` at step 0)."""

    net: nn.Module
    module: Trainable
    old_model: nn.Module | None
    # Where a method caches what its ``before_training`` pass computes (``wilson_ray.pass_cache``), and the key of
    # what that pass reads: the step t-1 checkpoint's cache key, the step and the training data settings.
    cache_dir: Any = None
    pass_key: str | None = None


class TaskView(NamedTuple):
    """The task a method trains (``train``) and, when results are reported in another task's old/new columns
    (the joint upper bound), that task (``report``; None: the trained task itself)."""

    train: Task
    report: Task | None = None


class Method(abc.ABC):
    """Base class. Subclasses set ``name``, ``Params`` (a dataclass with the paper's defaults) and ``losses``."""

    name: ClassVar[str] = "base"
    Params: ClassVar[type]
    supervision: ClassVar[str] = "pixel"  # what steps >= 1 read: "pixel" masks or "image" labels
    uses_localizer: ClassVar[bool] = False  # some parameters get no gradient in some iterations (DDP must know)
    shares_step0: ClassVar[bool] = True  # step 0 is a shared step-0 strategy (one cached checkpoint per strategy)
    # Which shared step 0 (part of its cache key): "bce" is StepZero (WILSON's, method.md §3.1); "ce" is the
    # softmax cross-entropy step 0 of PLOP and SDR (``ce_step0.CEStepZero``), cached apart from it.
    step0_kind: ClassVar[str] = "bce"
    extra_inputs: ClassVar[tuple[str, ...]] = ()  # per-sample inputs the dataset must supply (``Batch.extras``)

    def __init__(self, params: Any, task: Task, step: int, no_mask: bool = False):
        self.p = params
        self.no_mask = no_mask  # image labels of old classes visible too (paper Tab. 5)
        self.task = task
        self.step = step
        self.num_old = task.num_old(step)
        self.num_classes = task.num_classes(step)
        self.num_new = self.num_classes - self.num_old

    # --- the protocol ---------------------------------------------------------------------------------------
    @classmethod
    def task_view(cls, task: Task) -> TaskView:
        """The task this method trains and the one it reports in; incremental methods train the task itself."""
        return TaskView(task)

    @classmethod
    def for_step(cls, params: Any, task: Task, step: int, no_mask: bool = False) -> "Method":
        """The method that trains ``step``: its shared step-0 strategy (``step0_strategy``) at step 0 when the
        method ``shares_step0``, else itself."""
        if step == 0 and cls.shares_step0:
            return cls.step0_strategy()(params, task, step, no_mask=no_mask)
        return cls(params, task, step, no_mask=no_mask)

    @classmethod
    def step0_strategy(cls) -> type["Method"]:
        """The class that trains the shared step 0 of ``step0_kind`` (default: WILSON's BCE ``StepZero``)."""
        return StepZero

    @classmethod
    def preflight(cls, params: Any, task: Task, step: int) -> None:
        """Raise the UserError a missing external input of ``step`` would cause (e.g. a replay folder), before
        anything trains; the default needs nothing beyond the dataset."""

    # --- what to build --------------------------------------------------------------------------------------
    def build_localizer(self, in_channels: int, norm: str) -> nn.Module | None:
        """The extra trainable module of this step (WILSON/CAM localizer), or None."""
        return None

    def on_model_ready(self, model: nn.Module) -> None:
        """Hook after the step-t model has loaded the step t-1 weights (e.g. MiB's balanced init)."""

    def param_groups(self, module: Trainable, optim: OptimConfig) -> list[dict]:
        """Parameter groups of the optimiser, each ``{"params", "lr", "name"}`` (method.md §4): encoder at
        ``lr``, head + classifiers at ``lr × lr_head``, localizer at ``lr_localizer``. A method that freezes a
        part leaves its group out (and sets ``requires_grad_(False)`` in ``on_model_ready``)."""
        return default_param_groups(module, optim)

    def prepare_inputs(self, cfg: Config, check_only: bool = False) -> dict[str, ExtraInput | None]:
        """Before the step's datasets exist: make the per-sample inputs this method supplies itself (e.g. offline
        pseudo-masks, trained once and cached) and return them by name; the data supplies the other
        ``extra_inputs`` (saliency maps). ``check_only``: validate what making them needs and write nothing; the
        inputs it would make map to None."""
        return {}

    def before_training(self, ctx: Context, loader: Any) -> None:
        """Hook after the models and loaders are ready and before the first epoch: ``ctx.old_model`` is the frozen
        step t-1 model, ``loader`` yields this rank's training batches (``Batch``)."""

    def warnings(self) -> list[str]:
        """Messages the engine prints once before training (e.g. a setting the method cannot handle well)."""
        return []

    # --- state carried across steps -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What this step hands to the next one through the checkpoint (tensors, numbers, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what the previous step's ``state_dict`` returned (empty for a method that carries nothing)."""

    # --- the schedule -----------------------------------------------------------------------------------------
    def constant_lr_epochs(self) -> int:
        """Epochs of constant LR before poly decay under the ``warmup`` policy (method.md §4)."""
        return 0

    # --- the losses -------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def losses(self, ctx: Context, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        """Weighted loss terms of one batch (their sum is minimised); ``epoch`` is 0-based."""

    @staticmethod
    def step0_losses(ctx: Context, batch: Batch) -> dict[str, torch.Tensor]:
        """Step-0 (and joint) loss: multi-label BCE on upsampled logits (method.md §3.1)."""
        s = ctx.net(batch.images, logits=True, upsample=True).logits
        return {"bce": losses.bce_step0_loss(s, batch.masks)}

    @staticmethod
    @torch.no_grad()
    def old_outputs(ctx: Context, images: torch.Tensor, upsample: bool = False) -> ModelOutput:
        """Frozen old model's ``ModelOutput`` (logits, body features), no gradient."""
        return ctx.old_model(images, upsample=upsample)


class StepZero(Method):
    """The step-0 strategy shared by every method that ``shares_step0``: fully-supervised BCE (method.md §3.1)."""

    name = "step0"

    def losses(self, ctx: Context, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return self.step0_losses(ctx, batch)


def default_param_groups(module: Trainable, o: OptimConfig) -> list[dict]:
    """Encoder at ``lr``, head + classifiers at ``lr × lr_head``, localizer (if any) at ``lr_localizer`` (§4)."""
    groups = [
        {"params": module.model.backbone_parameters(), "lr": o.lr, "name": "backbone"},
        {"params": module.model.head_parameters(), "lr": o.lr * o.lr_head, "name": "head"},
    ]
    if module.localizer is not None:
        groups.append({"params": list(module.localizer.parameters()), "lr": o.lr_localizer, "name": "localizer"})
    return groups


def cross_entropy_new_step(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Plain CE on a pixel-labelled step (old classes are background in the step's masks, method.md §1.1)."""
    return F.cross_entropy(logits, masks, ignore_index=255)
