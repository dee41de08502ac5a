"""Per-sample inputs beyond (image, mask, labels) that a method declares (``Method.extra_inputs``): one
single-channel PNG per image, named ``<image id>.png``, in a folder.

- ``saliency``: ``SaliencyMaps/<id>.png`` beside ``JPEGImages/`` (EPS, baselines.md §6): an off-the-shelf salient
  object detector's map, RGB or grey, read as the channel mean ÷ 255 -> float [1, H, W] in [0, 1];
- ``pseudo_mask``: a hard pseudo-mask of the step's training image written by ``wilson_ray.weak.pipeline``
  (internal class indices, 255 = ignore) -> long [H, W].

The dataset reads the file as a uint8 [H, W] array and gives it the image's random crop and flip (nearest
resampling, as masks), then ``finish`` turns it into the tensor the method reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wilson_ray.data.voc import SALIENCY_DIR
from wilson_ray.errors import UserError


@dataclass(frozen=True)
class ExtraInput:
    """One folder of per-image PNGs: ``<folder>/<image id>.png``, the same size as the image."""

    name: str  # the key in ``Batch.extras``
    folder: Path
    what: str  # how an error names the file ("saliency map", "pseudo-mask")
    hint: str  # how to make a missing file

    def path(self, image_id: str) -> Path:
        return self.folder / f"{image_id}.png"

    def check(self, image_id: str, image_path: Path, where: str) -> None:
        """Raise a UserError unless the file of ``image_id`` exists with the size of its image (headers only)."""
        path = self.path(image_id)
        if not path.is_file():
            raise UserError(f"{where}: {self.what} {path} does not exist; expected one PNG per image ({self.hint})")
        with Image.open(image_path) as img:
            size = img.size
        self._check_size(path, size, where)

    def _check_size(self, path: Path, size: tuple[int, int], where: str) -> None:
        try:
            with Image.open(path) as png:
                found = png.size
        except Exception as err:  # PIL raises many types for corrupt files
            raise UserError(
                f"{where}: {self.what} {path} is unreadable ({type(err).__name__}: {err}); expected a PNG"
            ) from None
        if found != size:
            raise UserError(
                f"{where}: {self.what} {path} is {found[0]}x{found[1]} (WxH) but its image is "
                f"{size[0]}x{size[1]}; expected equal sizes"
            )

    def read(self, image_id: str, size: tuple[int, int], where: str) -> np.ndarray:
        """uint8 [H, W] of ``image_id``; ``size`` is the image's (W, H)."""
        path = self.path(image_id)
        if not path.is_file():
            raise UserError(f"{where}: {self.what} {path} does not exist; expected one PNG per image ({self.hint})")
        self._check_size(path, size, where)
        with Image.open(path) as png:
            return self.decode(png)

    def decode(self, png: Image.Image) -> np.ndarray:
        return np.array(png.convert("L") if png.mode not in ("L", "P") else png, dtype=np.uint8)

    def finish(self, value: torch.Tensor) -> torch.Tensor:
        """The transformed uint8 [H, W] tensor as the method reads it."""
        return value.long()


class SaliencyInput(ExtraInput):
    def decode(self, png: Image.Image) -> np.ndarray:
        # EPS reads the map as RGB and averages the channels (baselines.md §6), not as luminance.
        rgb = np.asarray(png.convert("RGB"), dtype=np.float32)
        return np.rint(rgb.mean(axis=2)).astype(np.uint8)

    def finish(self, value: torch.Tensor) -> torch.Tensor:
        return (value.float() / 255.0).unsqueeze(0)


def saliency_input(root: str | Path) -> SaliencyInput:
    """The ``saliency`` input of a VOC-layout root: ``<root>/SaliencyMaps/<id>.png``."""
    return SaliencyInput(
        "saliency",
        Path(root) / SALIENCY_DIR,
        "saliency map",
        f"run a salient-object detector over JPEGImages/ into {SALIENCY_DIR}/, see the README",
    )


def mask_input(name: str, folder: str | Path) -> ExtraInput:
    """A folder of hard masks in internal class indices (e.g. offline pseudo-masks)."""
    return ExtraInput(name, Path(folder), "pseudo-mask", "written by the weak pipeline; delete the folder to redo it")


# Inputs the data itself supplies, by name (a method supplies the others through ``Method.prepare_inputs``).
DATA_INPUTS = {"saliency": saliency_input}


def data_input(name: str, root: str | Path, method: str) -> ExtraInput:
    """The data-supplied input ``name`` under ``root``; a UserError for a name the data cannot supply."""
    if name not in DATA_INPUTS:
        raise UserError(
            f"method {method}: needs per-sample input {name!r}, expected one the data supplies "
            f"({', '.join(DATA_INPUTS)}) or one the method prepares"
        )
    return DATA_INPUTS[name](root)
