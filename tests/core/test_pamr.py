"""PAMR (method.md §3.8): slow explicit reference, edge preservation, no gradient, de-normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from wilson_ray.pamr import PAMR_MEAN, PAMR_STD, denormalize_and_resize, pamr


def _pamr_reference(image: torch.Tensor, masks: torch.Tensor, iterations: int, dilations) -> torch.Tensor:
    """Pixel-by-pixel PAMR with explicit replicate padding (clamped coordinates) and Python loops."""
    b, _, h, w = image.shape
    stencil = [(d * dy, d * dx) for d in dilations for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    neighbours = [o for o in stencil if o != (0, 0)]

    def at(t, i, ch, y, x):
        return float(t[i, ch, min(max(y, 0), h - 1), min(max(x, 0), w - 1)])

    aff = torch.zeros(b, len(neighbours), h, w, dtype=torch.float64)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                raw = [0.0] * len(neighbours)
                for ch in range(3):
                    samples = [at(image, i, ch, y + dy, x + dx) for dy, dx in stencil]
                    mean = sum(samples) / len(samples)
                    sigma = math.sqrt(sum((v - mean) ** 2 for v in samples) / (len(samples) - 1))
                    centre = at(image, i, ch, y, x)
                    for n, (dy, dx) in enumerate(neighbours):
                        raw[n] += -abs(centre - at(image, i, ch, y + dy, x + dx)) / (1e-8 + 0.1 * sigma) / 3
                top = max(raw)
                e = [math.exp(r - top) for r in raw]
                for n in range(len(neighbours)):
                    aff[i, n, y, x] = e[n] / sum(e)
    m = masks.double().clone()
    for _ in range(iterations):
        new = torch.zeros_like(m)
        for i in range(b):
            for c in range(m.shape[1]):
                for y in range(h):
                    for x in range(w):
                        new[i, c, y, x] = sum(
                            float(aff[i, n, y, x]) * at(m, i, c, y + dy, x + dx)
                            for n, (dy, dx) in enumerate(neighbours)
                        )
        m = new
    return m.float()


@pytest.mark.parametrize("dilations,iterations", [((1, 2), 3), ((1, 2, 4, 8, 12), 2)])
def test_pamr_matches_loop_reference(dilations, iterations):
    torch.manual_seed(0)
    image = torch.rand(2, 3, 5, 6)
    masks = torch.softmax(torch.randn(2, 3, 5, 6), dim=1)
    got = pamr(image, masks, iterations=iterations, dilations=dilations)
    ref = _pamr_reference(image, masks, iterations, dilations)
    assert torch.allclose(got, ref, atol=1e-5)


def test_pamr_spreads_within_a_region_not_across_the_colour_edge():
    h, w = 8, 16
    image = torch.zeros(1, 3, h, w)
    image[:, 0, :, : w // 2] = 1.0  # red left half
    image[:, 2, :, w // 2 :] = 1.0  # blue right half
    mask = torch.zeros(1, 1, h, w)
    mask[0, 0, 3, 2] = 1.0  # a single seed in the left region
    image = image + 0.01 * torch.rand_like(image)  # a little texture so σ_I > 0 inside the regions
    out = pamr(image, mask, iterations=10)
    left, right = out[0, 0, :, : w // 2], out[0, 0, :, w // 2 :]
    assert (left > 0).float().mean() > 0.5  # the seed spread over the left region
    assert right.sum() < 1e-3 * left.sum()
    # each affinity row sums to 1, so a constant mask is a fixed point
    const = torch.full((1, 2, h, w), 0.25)
    assert torch.allclose(pamr(image, const), const, atol=1e-6)


def test_pamr_has_no_gradient_and_zero_iterations_is_identity():
    image = torch.rand(1, 3, 4, 4, requires_grad=True)
    masks = torch.rand(1, 2, 4, 4, requires_grad=True)
    out = pamr(image, masks, iterations=2)
    assert not out.requires_grad
    assert torch.equal(pamr(image, masks, iterations=0), masks.detach())
    with pytest.raises(ValueError, match="size"):
        pamr(image, torch.rand(1, 2, 3, 4))


def test_denormalize_and_resize_uses_the_official_mean():
    mean = torch.tensor(PAMR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PAMR_STD).view(1, 3, 1, 1)
    assert PAMR_MEAN[2] == 0.4069  # the official typo, kept on purpose
    pixels = torch.rand(1, 3, 4, 4)
    normalised = (pixels - mean) / std
    same = denormalize_and_resize(normalised, (4, 4))
    assert torch.allclose(same, pixels, atol=1e-6)
    small = denormalize_and_resize(normalised, (2, 2))
    assert small.shape == (1, 3, 2, 2)
    # align_corners=True keeps the corner pixels exactly
    assert torch.allclose(small[..., 0, 0], pixels[..., 0, 0], atol=1e-6)
    assert torch.allclose(small[..., -1, -1], pixels[..., -1, -1], atol=1e-6)
