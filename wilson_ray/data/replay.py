"""Replay folders for RECALL (baselines.md §3): unlabelled images of the old classes from another source (web
images, a GAN), one sub-folder per old class, named exactly as the class (``<root>/<class name>/*.jpg``).

``replay_listing`` validates the folder (missing root, missing or empty class folder, unreadable image: one-line
UserErrors naming the path) and lists the images; ``load_replay_images`` decodes them into the training crop's
geometry (resize the shorter side, center-crop) with the training normalisation.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.transforms import v2

from wilson_ray.data.manifest import read_image
from wilson_ray.data.transforms import to_float_normalised, to_tv_tensors
from wilson_ray.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def replay_listing(
    root: str | Path | None,
    class_names: list[str],
    per_class: int = 0,
    check_images: bool = True,
) -> list[tuple[int, Path]]:
    """(internal class index, image path) of the replay images of ``class_names`` (index i+1 for the i-th name),
    the first ``per_class`` of each class folder in name order (0: all); every listed image is decoded once when
    ``check_images``."""
    if root is None:
        raise UserError(
            "method.replay_root: not set, expected a replay folder with one sub-folder of images per old "
            "class (e.g. data/synthetic/replay; README 'RECALL replay folder')"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(
            f"method.replay_root {root}: not found, expected a folder with one sub-folder of images per old class"
        )
    listing = []
    for index, name in enumerate(class_names, start=1):
        folder = root / name
        if not folder.is_dir():
            raise UserError(
                f"method.replay_root {root}: no folder for old class '{name}' ({folder}), expected one "
                "sub-folder of images per old class"
            )
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise UserError(
                f"method.replay_root {folder}: no images ({', '.join(IMAGE_SUFFIXES)}), expected at least "
                f"one image of class '{name}'"
            )
        files = files[:per_class] if per_class > 0 else files
        if check_images:
            for path in files:
                read_image(path, f"method.replay_root {root}")
        listing += [(index, path) for path in files]
    return listing


def load_replay_images(listing: list[tuple[int, Path]], size: int) -> torch.Tensor:
    """Float [N,3,size,size]: each image resized (shorter side) and center-cropped to ``size``, normalised as the
    training images are."""
    geometry = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), *to_float_normalised()])
    out = []
    for _, path in listing:
        image, _mask = to_tv_tensors(read_image(path), torch.zeros(1, 1, dtype=torch.uint8).numpy())
        out.append(geometry(image).as_subclass(torch.Tensor))
    return torch.stack(out)
