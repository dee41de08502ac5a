"""Every torch file wilson-ray reads or writes: the weights-only reader, the step checkpoint (format, save, load,
match) and the resumable training state (method.md §4, §5).

A step checkpoint holds the weights, the resolved config, the class list, task/step, the final metrics and the
method's own state carried to the next step (e.g. prototypes); everything loads with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from wilson_ray.atomic import atomic_path
from wilson_ray.errors import UserError, load_failure_reason

if TYPE_CHECKING:
    from wilson_ray.config import Config
    from wilson_ray.protocol import Task

CHECKPOINT_FORMAT = "wilson-ray-checkpoint"
STATE_FORMAT = "wilson-ray-train-state"
_WILSON_RAY_FILE = "a file written by wilson-ray (pickled objects are refused)"


def read_weights_only(
    path: str | Path,
    what: str,
    expected: str = "a wilson-ray checkpoint file",
    unreadable_expected: str = _WILSON_RAY_FILE,
) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a missing or unreadable file (garbage, truncated, a
    pickled object) is a one-line UserError naming ``what`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path}: not found, expected {expected}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt/pickled files
        raise UserError(
            f"{what} {path}: not a readable weights-only checkpoint ({load_failure_reason(err)}); "
            f"expected {unreadable_expected}"
        ) from None


def load_checkpoint(path: str | Path) -> dict:
    """Load a step checkpoint (weights + config + classes + task/step + metrics + method state)."""
    ckpt = read_weights_only(Path(path), "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(
            f"checkpoint {path}: not a wilson-ray checkpoint (no '{CHECKPOINT_FORMAT}' format tag), "
            "expected a step checkpoint written by wilson-ray train"
        )
    return ckpt


def check_checkpoint_matches(ckpt: dict, path: Path, task: Task, step: int) -> None:
    """Refuse a checkpoint that is not the given (task, step): the class lists must be identical."""
    expected = task.class_names(step)
    if ckpt.get("class_names") != expected or ckpt.get("classes_per_step") != task.classes_per_step(step):
        raise UserError(
            f"checkpoint {path}: trained on task '{ckpt.get('task')}' step {ckpt.get('step')} with "
            f"{len(ckpt.get('class_names') or [])} classes, expected task '{task.name}' step {step} with "
            f"{len(expected)} classes ({', '.join(expected[-3:])}, ...)"
        )


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DDP / DataParallel wrapper (or the module itself)."""
    return module.module if hasattr(module, "module") else module


def save_checkpoint(
    path: Path, model: nn.Module, cfg: Config, task: Task, step: int, metrics: dict, method_state: dict | None = None
) -> Path:
    """Atomically write weights + resolved config + class list + task/step + metrics + the method's state."""
    state = {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "version": 1,
        "model": state,
        "config": cfg.to_dict(),
        "task": task.name,
        "step": step,
        "class_names": task.class_names(step),
        "classes_per_step": task.classes_per_step(step),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "method_state": _to_cpu(method_state or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    if method_state and "memory" in method_state:  # the memory beside its step, readable (docs/method.md §9)
        from wilson_ray.data.memory import memory_json_path, write_memory_json

        write_memory_json(
            memory_json_path(path),
            method_state["memory"],
            step,
            method_state.get("memory_budget", len(method_state["memory"])),
            method_state.get("memory_rule", "?"),
        )
    return Path(path)


def load_into_step_model(model: nn.Module, ckpt: dict, path: Path, step: int) -> None:
    """Load a step t-1 checkpoint into the step-t ``model`` (method.md §2.5): every weight but the new classifier
    ``classifiers.<step>`` must be present and fit."""
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if unexpected or any(not k.startswith(f"classifiers.{step}.") for k in missing):
        raise UserError(
            f"checkpoint {path}: weights do not fit the configured model "
            f"({len(missing)} missing, {len(unexpected)} unexpected keys); check model.* settings"
        )


def save_training_state(path: Path, step: int, epoch: int, parts: dict[str, Any]) -> Path:
    """Atomically write the resumable state of a step after ``epoch`` epochs; ``parts`` maps a name (module,
    optimizer, scheduler, scaler, method) to an object with ``state_dict()``."""
    state = {
        "format": STATE_FORMAT,
        "step": step,
        "epoch": epoch,
        **{name: part.state_dict() for name, part in parts.items()},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_training_state(
    path: str | Path, step: int, parts: dict[str, Any], optional: tuple[str, ...] = ("method",)
) -> int:
    """Restore ``parts`` (as in ``save_training_state``) from a step-``step`` training state; returns its epoch.
    An ``optional`` part missing from the file (written before methods carried state) keeps its current state."""
    state = read_weights_only(Path(path), "training state")
    missing = (
        [name for name in parts if name not in optional and name not in (state or {})]
        if isinstance(state, dict)
        else []
    )
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT or state.get("step") != step or missing:
        raise UserError(
            f"training state {path}: not a step-{step} wilson-ray training state"
            + (f" (no {', '.join(missing)})" if missing else "")
        )
    for name, part in parts.items():
        if name in state:
            part.load_state_dict(state[name])
    return int(state["epoch"])


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
