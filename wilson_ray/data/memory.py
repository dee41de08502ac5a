"""A fixed-budget memory of earlier steps' training images for the incremental steps (docs/method.md §9).

A memory is a list of entries ``{"step": s, "image_id": id, "classes": [internal indices]}``: an image of step s's
training set and the classes its step-s labels show (step 0: the base classes of its mask; step s >= 1: its
image-level labels of step s's classes, all that the weak setting keeps). At step t the pool is the memory carried
from step t-1 plus step t-1's training images, and ``select_memory`` re-selects at most ``budget`` of them by a
stated rule; the result trains step t (``MemoryReplay``) and is stored in step t's checkpoint (method state and a
``step<t>.memory.json`` beside it). ``MethodMemory`` is what a method with the option holds at a step (its budget,
the carried entries, the replay; ``methods.base.MemoryMethod`` wires it into the method interface).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from wilson_ray.atomic import atomic_write_text
from wilson_ray.errors import UserError

RULES = ("class_balanced", "random")


def check_memory_params(size: int, rule: str, ratio: float, weight: float) -> None:
    """One-line UserErrors for a bad ``method.memory_*`` value."""
    if not isinstance(size, int) or size < 0:
        raise UserError(f"method.memory_size is {size!r}, expected an integer >= 0 (0: no memory)")
    if rule not in RULES:
        raise UserError(f"method.memory_rule is {rule!r}, expected one of {', '.join(RULES)}")
    if ratio <= 0:
        raise UserError(f"method.memory_ratio is {ratio!r}, expected a number > 0 (memory images per new image)")
    if weight < 0:
        raise UserError(f"method.memory_weight is {weight!r}, expected a number >= 0")


def step_candidates(dataset: Any, step: int) -> list[dict]:
    """Every image of a step's training set as a memory entry, with the classes its labels show (``dataset.labels``
    [N, C-1]: entry j is internal class j+1)."""
    labels = dataset.labels.numpy() if isinstance(dataset.labels, torch.Tensor) else np.asarray(dataset.labels)
    return [
        {"step": int(step), "image_id": dataset.image_id(i), "classes": [int(j) + 1 for j in np.flatnonzero(row > 0)]}
        for i, row in enumerate(labels)
    ]


def select_memory(pool: list[dict], budget: int, rule: str, seed: int) -> list[dict]:
    """At most ``budget`` entries of ``pool``, deterministic for ``seed``.

    ``class_balanced`` (the default; rehearsal memories of class-incremental learning): rounds over the classes
    present in the pool, in a seeded order each round; each turn a class takes one not yet chosen image showing it,
    drawn at random, so every class gets about budget / #classes images (fewer when it has fewer; with fewer images
    than classes, a seeded subset of the classes gets one each). ``random``: a uniform sample.
    """
    if budget <= 0 or not pool:
        return []
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(len(pool))]
    if rule == "random":
        return [pool[i] for i in sorted(order[:budget])]
    if rule != "class_balanced":
        raise UserError(f"method.memory_rule is {rule!r}, expected one of {', '.join(RULES)}")
    by_class: dict[int, list[int]] = {}
    for i in order:  # each class's images in the seeded order
        for c in pool[i]["classes"]:
            by_class.setdefault(c, []).append(i)
    chosen: list[int] = []
    taken: set[int] = set()
    cursors = dict.fromkeys(by_class, 0)
    while len(chosen) < budget:
        added = False
        for c in (sorted(by_class)[i] for i in rng.permutation(len(by_class))):
            queue = by_class[c]
            while cursors[c] < len(queue) and queue[cursors[c]] in taken:
                cursors[c] += 1
            if cursors[c] < len(queue) and len(chosen) < budget:
                taken.add(queue[cursors[c]])
                chosen.append(queue[cursors[c]])
                added = True
        if not added:
            break
    return [pool[i] for i in sorted(chosen)]


def class_counts(entries: list[dict]) -> dict[int, int]:
    """Images per class of a memory (an image counts for every class it shows)."""
    counts: dict[int, int] = {}
    for e in entries:
        for c in e["classes"]:
            counts[c] = counts.get(c, 0) + 1
    return dict(sorted(counts.items()))


def memory_json_path(checkpoint: str | Path) -> Path:
    """``step<t>.memory.json`` beside the step checkpoint ``step<t>.pt``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".memory.json")


def write_memory_json(path: str | Path, entries: list[dict], step: int, budget: int, rule: str) -> Path:
    """Atomically write a memory with its step, budget and rule (the human-readable copy of the method state)."""
    data = {"step": step, "budget": budget, "rule": rule, "size": len(entries), "images": entries}
    atomic_write_text(Path(path), json.dumps(data, indent=1) + "\n")
    return Path(path)


def read_memory_json(path: str | Path) -> list[dict]:
    """The entries of a ``step<t>.memory.json``; a malformed file is a one-line UserError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        images = data["images"]
        return [{"step": int(e["step"]), "image_id": str(e["image_id"]), "classes": list(e["classes"])} for e in images]
    except FileNotFoundError:
        raise UserError(f"memory {path}: not found, expected a step<t>.memory.json written with a checkpoint") from None
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"memory {path}: not a wilson-ray memory file ({err}), expected JSON with 'images'") from None


class MemoryImages(Dataset):
    """The memory's images, each read (and augmented) by the training set of the step it came from.

    ``datasets`` maps a step to its training set (``image_id(i)``, items ``(image, mask, labels)``); an entry whose
    image is not in its step's set is a UserError (the data changed since the memory was chosen)."""

    def __init__(self, entries: list[dict], datasets: dict[int, Any]):
        self.entries = list(entries)
        self.datasets = datasets
        where: dict[int, dict[str, int]] = {s: {d.image_id(i): i for i in range(len(d))} for s, d in datasets.items()}
        self.items = []
        for e in self.entries:
            index = where.get(e["step"], {}).get(e["image_id"])
            if index is None:
                raise UserError(
                    f"memory: image '{e['image_id']}' of step {e['step']} is not in that step's training set, "
                    "expected the data the memory was chosen from (rerun the task from step 0)"
                )
            self.items.append((e["step"], index))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> torch.Tensor:
        step, index = self.items[item]
        return self.datasets[step][index][0]


class MemoryReplay:
    """Draws memory images for the batches of a step: a seeded shuffled pass over the memory, then the next one."""

    def __init__(self, images: MemoryImages, seed: int):
        self.images = images
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(images), generator=self.generator)
        self.cursor = 0

    @property
    def entries(self) -> list[dict]:
        return self.images.entries

    def draw(self, k: int) -> torch.Tensor:
        """The next ``k`` memory images, stacked [k,3,H,W] (augmented by their step's training transform)."""
        out = []
        for _ in range(k):
            if self.cursor >= len(self.order):
                self.order, self.cursor = torch.randperm(len(self.images), generator=self.generator), 0
            out.append(self.images[int(self.order[self.cursor])])
            self.cursor += 1
        return torch.stack(out)


class MethodMemory:
    """A method's memory at one step (docs/method.md §9), the one piece every method with the memory option shares:
    the budget and rule its ``MemoryParams`` name, the entries the step t-1 checkpoint carried (the pool's first
    part), the ``MemoryReplay`` that ``step_setup.attach_memory`` hands it, what the step's checkpoint stores, and
    the memory images that join a batch."""

    def __init__(self, params: MemoryParams):
        self.params = params
        self.carried: list[dict] = []
        self.replay: MemoryReplay | None = None

    @classmethod
    def of(cls, params: Any) -> MethodMemory | None:
        """The memory ``params`` ask for; None when they have no memory fields or ``memory_size`` is 0 (off)."""
        return cls(params) if getattr(params, "memory_size", 0) > 0 else None

    @property
    def budget(self) -> int:
        return self.params.memory_size

    @property
    def rule(self) -> str:
        return self.params.memory_rule

    def attach(self, replay: MemoryReplay) -> None:
        """Train with ``replay`` (the step's chosen memory)."""
        self.replay = replay

    def state_dict(self) -> dict[str, Any]:
        """The method-state entries of the memory (the entries with their budget and rule); {} before one is
        attached, so a step that chose no image stores nothing."""
        if self.replay is None:
            return {}
        return {"memory": list(self.replay.entries), "memory_budget": self.budget, "memory_rule": self.rule}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the memory a previous step stored (``state_dict``) as the carried part of this step's pool."""
        self.carried = list(state.get("memory", []))

    def draw_for(self, images: torch.Tensor) -> torch.Tensor | None:
        """The memory images joining a batch of new ``images`` [n,3,H,W] (``memory_ratio`` per new image, at least
        one), on their device and memory format; None while no memory is attached."""
        if self.replay is None:
            return None
        k = max(1, int(round(self.params.memory_ratio * images.shape[0])))
        drawn = self.replay.draw(k).to(images.device)
        if images.is_contiguous(memory_format=torch.channels_last):
            drawn = drawn.contiguous(memory_format=torch.channels_last)
        return drawn


@dataclass
class MemoryParams:
    """The memory knobs of a method's ``Params`` (docs/method.md §9); ``memory_size`` 0 (the default) is off."""

    memory_size: int = 0  # budget B: at most B earlier-step images, over all old classes
    memory_rule: str = "class_balanced"  # how the B images are chosen: class_balanced | random
    memory_ratio: float = 0.5  # memory images per new image in a batch (at least one when the memory is on)
    memory_weight: float = 1.0  # weight of the replay loss on the memory images

    def __post_init__(self) -> None:
        check_memory_params(self.memory_size, self.memory_rule, self.memory_ratio, self.memory_weight)
