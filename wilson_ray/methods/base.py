"""The interface every method implements, and what the engine hands it (method.md §3, §4).

A method says what to build at step t, the losses of one batch and the schedule, and may hook into every place
where the methods of the literature differ, so the engine never branches on a method or on the step:

- ``step0``          the class that trains step 0 (WILSON's BCE ``StepZero``, method.md §3.1, unless the method
                     names another; None: the method trains its own step 0), shared by every method naming it, so a
                     sweep and a table share one step-0 checkpoint;
- ``recipe``         where the method's training recipe differs from the defaults (WILSON's, method.md §4), declared
                     beside its ``Params`` (``config.resolve_config`` lays it under the preset's sections);
- ``task_view``      the task it trains and the task its results are reported in (joint: flattened, one step);
- ``extra_inputs``   per-sample inputs beyond (image, mask, labels) the dataset must supply (e.g. saliency maps);
- ``prepare_inputs`` before the step's datasets exist: build the inputs the method makes itself (offline
                     pseudo-masks, computed once and cached) so every loader worker and rank reads them;
- ``before_training`` a pass before the first epoch given the old model and the step's training data
                     (e.g. thresholds, prototypes, offline pseudo-masks);
- ``param_groups``   which parameters train and at which learning rate (e.g. a frozen encoder);
- ``state_dict`` / ``load_state_dict``  state carried to the next step in the checkpoint (e.g. prototypes);
- ``figure_panels``  extra per-image panels of the prediction overlays (WILSON: localizer map, pseudo-label);
- ``label_quality``  the quality of the labels the method made itself for a step (offline pseudo-masks' mIoU);
- ``memory``         the step's memory of earlier steps' images (a ``MethodMemory``: budget, rule, carried entries;
                     ``step_setup.attach_memory`` chooses the images and attaches them, docs/method.md §9). A method
                     with the option derives from ``MemoryMethod``, which implements it once for all of them.

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
from wilson_ray.data.memory import MethodMemory
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
    # The class that trains step 0, shared by every method naming it (one cached checkpoint each, keyed by its name):
    # StepZero (WILSON's BCE, method.md §3.1; set below the class) unless a method names another (PLOP and SDR:
    # ``ce_step0.CEStepZero``); None: the method trains its own step 0 (the joint bound's one step).
    step0: ClassVar[type[Method] | None]
    # The method's training recipe where it differs from the defaults (``OptimConfig``: WILSON's, method.md §4):
    # ``{"step0": {...}, "incremental": {...}}`` with OptimConfig fields; a preset's sections and --set win over it.
    recipe: ClassVar[dict[str, dict[str, Any]]] = {}
    uses_localizer: ClassVar[bool] = False  # some parameters get no gradient in some iterations (DDP must know)
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
        """The object that trains ``step`` (not a hook): the method's ``step0`` class at step 0 when it has one,
        else the method itself."""
        if step == 0 and cls.step0 is not None:
            return cls.step0(params, task, step, no_mask=no_mask)
        return cls(params, task, step, no_mask=no_mask)

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

    # --- a memory of earlier steps' images (docs/method.md §9) ------------------------------------------------
    def memory(self) -> MethodMemory | None:
        """The memory this step trains with (its budget, rule and the entries the previous step carried;
        ``step_setup.attach_memory`` attaches the chosen images to it); None (the default): no memory."""
        return None

    # --- the schedule -----------------------------------------------------------------------------------------
    def constant_lr_epochs(self) -> int:
        """Epochs of constant LR before poly decay under the ``warmup`` policy (method.md §4)."""
        return 0

    # --- what a run reports beyond the metrics -----------------------------------------------------------------
    def figure_panels(self, ctx: Context):
        """The function ``tracking.plots.overlays_png`` calls per image for this method's extra panels, ``panels(
        image [1,3,H,W], labels [1,C-1]) -> (heat map [H,W], pseudo-label [H,W])`` (numpy), after training with
        ``ctx``; None: the overlays show image, ground truth and prediction only."""
        return None

    @classmethod
    def label_quality(cls, cfg: Config, step: int) -> float | None:
        """The mIoU of the labels this method made itself for ``step`` against the ground truth (an image-label
        row's offline pseudo-masks), once made; None for a method that makes none."""
        return None

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
    """The step 0 of every method that does not name another ``step0``: fully-supervised BCE (method.md §3.1)."""

    name = "step0"

    def losses(self, ctx: Context, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return self.step0_losses(ctx, batch)


Method.step0 = StepZero  # the default (StepZero is itself a Method, so it is set once both exist)
StepZero.step0 = None  # a step-0 class trains its step itself


class MemoryMethod(Method):
    """A method with the memory option (docs/method.md §9); its ``Params`` derive from ``MemoryParams``.

    Holds the step's ``MethodMemory`` (None when ``memory_size`` is 0, so the method runs exactly as without the
    option), carries it through the checkpoint in the method state, and gives ``losses`` the batch's images joined
    by the memory images (``with_memory``) and the replay term on them (``memory_terms``)."""

    def __init__(self, params: Any, task: Task, step: int, no_mask: bool = False):
        super().__init__(params, task, step, no_mask)
        self.step_memory = MethodMemory.of(params)

    def memory(self) -> MethodMemory | None:
        """The step's memory, None when ``memory_size`` is 0."""
        return self.step_memory

    def state_dict(self) -> dict[str, Any]:
        """The memory's entries, budget and rule once one is attached (``save_checkpoint`` also writes them to
        ``step<t>.memory.json``); a subclass with its own state adds to this."""
        return {} if self.step_memory is None else self.step_memory.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The memory the previous step stored becomes this step's carried memory."""
        if self.step_memory is not None:
            self.step_memory.load_state_dict(state)

    def with_memory(self, batch: Batch) -> tuple[torch.Tensor, int]:
        """(the batch's images followed by its memory images, the number n of new images): one tensor so that the
        new model sees one batch (one BatchNorm batch, one DDP forward); just ``batch.images`` without a memory."""
        n = batch.images.shape[0]
        drawn = None if self.step_memory is None else self.step_memory.draw_for(batch.images)
        return (batch.images if drawn is None else torch.cat([batch.images, drawn])), n

    def memory_terms(self, logits: torch.Tensor, s_old: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"mem": memory_weight · ℓ_MEM}`` of the memory images' new logits and old logits
        (``memory_replay_loss``)."""
        return {"mem": self.p.memory_weight * memory_replay_loss(logits, s_old)}


def split_memory(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A joined batch's tensor cut into its ``n`` new images and its memory images (None without a memory)."""
    if x.shape[0] == n:
        # The tensor itself, not x[:n]: a full-range slice would add a node whose backward hands the next one a
        # fresh gradient tensor, which moves the memory-off gradients by rounding (not bit-identical any more).
        return x, None
    return x[:n], x[n:]


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


def memory_replay_loss(logits: torch.Tensor, s_old: torch.Tensor) -> torch.Tensor:
    """ℓ_MEM on memory images (docs/method.md §9): CE of the new model's logits [B,C,h,w] against the frozen old
    model's argmax over its classes (background and the old classes; the new classes are never a target), logits
    resized to the old logits' size when they differ."""
    target = s_old.detach().argmax(1)
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits.float(), target)
