"""Saliency maps (EPS input): the synthetic generator's imperfect maps, and their validation (one line, exit 2,
nothing written)."""

import numpy as np
import pytest
from PIL import Image

from tests.methods.test_methods import TINY
from wilson_ray.cli import main
from wilson_ray.data.dataset import build_dataset
from wilson_ray.data.voc import SALIENCY_DIR, voc_manifest
from wilson_ray.protocol import get_task

SETS = [f"--set={k}={v}" for k, v in TINY.items()]


def _maps(root):
    manifest = voc_manifest(root, "train")
    for image_id, mask in zip(manifest.image_ids, manifest.masks):
        gt = np.asarray(Image.open(root / mask))
        sal = np.asarray(Image.open(root / SALIENCY_DIR / f"{image_id}.png"))
        yield gt, sal


def _iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_synthetic_saliency_is_imperfect_but_informative(synth_root):
    pairs = list(_maps(synth_root))
    assert all(sal.shape == gt.shape and sal.dtype == np.uint8 for gt, sal in pairs)
    valid = [gt != 255 for gt, _ in pairs]
    fg = np.concatenate([((gt > 0) & v)[v] for (gt, _), v in zip(pairs, valid)])
    salient = np.concatenate([(sal > 127)[v] for (_, sal), v in zip(pairs, valid)])
    iou = _iou(fg, salient)
    # chance: each image's saliency against another image's objects
    shuffled = np.concatenate(
        [
            (pairs[(i + 1) % len(pairs)][1] > 127)[v]
            for i, v in enumerate(valid)
            if pairs[(i + 1) % len(pairs)][1].shape == v.shape
        ]
    )
    chance = _iou(fg, shuffled)
    assert 0.35 < iou < 0.9, iou  # informative, never the exact mask
    assert iou > chance + 0.2, (iou, chance)
    soft = np.mean([((sal > 25) & (sal < 230)).mean() for _, sal in pairs])
    assert soft > 0.03  # blurred edges and fading parts, not a binary mask
    assert max(_iou((gt > 0) & (gt != 255), sal > 127) for gt, sal in pairs) < 0.99


def _step1_image(root):
    return build_dataset(root, get_task("15-5"), 1, "train").image_id(0)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing", "does not exist; expected one PNG per image"),
        ("resized", "is 10x12 (WxH) but its image is 64x64; expected equal sizes"),
    ],
)
def test_bad_saliency_map_is_one_line_exit_2_and_nothing_written(damage, message, synth_copy, tmp_path, capsys):
    path = synth_copy / SALIENCY_DIR / f"{_step1_image(synth_copy)}.png"
    if damage == "missing":
        path.unlink()
    else:
        Image.new("L", (10, 12)).save(path)
    cache, out = tmp_path / "cache", tmp_path / "out"
    argv = [
        "train",
        "--preset",
        "demo",
        "--method",
        "eps",
        "--data-root",
        str(synth_copy),
        "--cache-dir",
        str(cache),
        "--out",
        str(out),
        *SETS,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wilson-ray: error:") and "\n" not in err
    assert f"saliency map {path}" in err and message in err
    assert not cache.exists() and not out.exists() and not (synth_copy / "PseudoLabels").exists()
    capsys.readouterr()
    assert (
        main(
            [
                "table",
                "--preset",
                "demo",
                "--methods",
                "finetune,eps",
                "--data-root",
                str(synth_copy),
                "--cache-dir",
                str(cache),
                "--out",
                str(out),
                *SETS,
            ]
        )
        == 2
    )
    assert message in capsys.readouterr().err and not cache.exists() and not out.exists()
