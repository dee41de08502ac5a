"""Fully-connected CRF (Krähenbühl & Koltun 2011) through ``pydensecrf2``, the maintained build of the library the
WSSS repositories call (baselines.md §4 step 2: SEAM's seeds; §5: SS's optional CRF).

The kernel settings are PSA/SEAM's ``crf_inference``: a Gaussian (appearance-free) kernel sxy 3, compat 3 and a
bilateral kernel sxy 80, srgb 13, compat 10; the unary is −log of the given scores. ``pydensecrf2`` is the
``wsss`` extra (``pip install 'wilson-ray[wsss]'``; ``make setup`` installs it via ``dev``).

Core module: no ray / mlflow / optuna.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wilson_ray.errors import UserError

MISSING = (
    "the dense CRF (SEAM's seeds, SS's crf: true) needs the pydensecrf2 package, which is not installed: "
    "pip install 'wilson-ray[wsss]' (or pydensecrf2)"
)


@dataclass(frozen=True)
class CrfKernels:
    """Pairwise kernels of the dense CRF (PSA/SEAM's values)."""

    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0


def _densecrf():
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:  # the optional extra is missing: one line, not a traceback
        raise UserError(MISSING) from err
    return dcrf


def require_crf() -> None:
    """Raise the one-line UserError when ``pydensecrf2`` is missing."""
    _densecrf()


def crf_available() -> bool:
    """Whether ``pydensecrf2`` imports here."""
    try:
        require_crf()
    except UserError:
        return False
    return True


def _as_rgb_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """[3,H,W] / [1,3,H,W] tensor or [H,W,3] array in the 0-255 range -> C-contiguous uint8 [H,W,3]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        if image.ndim == 4:
            image = image[0]
        image = image.permute(1, 2, 0).numpy()
    return np.ascontiguousarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))


def dense_crf(
    image: torch.Tensor | np.ndarray,
    scores: torch.Tensor | np.ndarray,
    iterations: int = 10,
    kernels: CrfKernels = CrfKernels(),
) -> np.ndarray:
    """Mean-field marginals [C,H,W] (float32) of the dense CRF whose unary is −log(``scores``) [C,H,W] (scores
    need not sum to 1: PSA's use with bg = (1−max)^α), on the RGB ``image`` (0-255, [3,H,W], [1,3,H,W] or
    [H,W,3]) with the Gaussian and bilateral kernels of ``kernels``, after ``iterations`` steps."""
    dcrf = _densecrf()
    rgb = _as_rgb_uint8(image)
    probs = scores.detach().float().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    c, h, w = probs.shape
    if rgb.shape[:2] != (h, w):
        raise ValueError(f"dense_crf: image size {rgb.shape[:2]} != score size {(h, w)}")
    # −log p as the library's unary_from_softmax does, with its clipping so a zero score stays finite
    unary = np.ascontiguousarray(-np.log(np.clip(probs.reshape(c, -1), 1e-5, 1.0)).astype(np.float32))
    crf = dcrf.DenseCRF2D(w, h, c)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=kernels.gaussian_sxy, compat=kernels.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=kernels.bilateral_sxy, srgb=kernels.bilateral_srgb, rgbim=rgb, compat=kernels.bilateral_compat
    )
    return np.asarray(crf.inference(int(iterations)), dtype=np.float32).reshape(c, h, w)


__all__ = ["CrfKernels", "MISSING", "crf_available", "dense_crf", "require_crf"]
