"""Procedural segmentation scenes written in the VOC layout (method.md §1.4), for demos and tests (the COCO layout:
``synthetic_coco.py``, which draws with the functions here).

The generated folder is read by the real VOC reader: ``JPEGImages/``, ``SegmentationClassAug/`` (palette PNGs,
values 0..20 and 255), ``splits/train_aug.txt``, ``splits/val.txt``, ``voc_1h_labels_{train,val}.npy`` and
``synthetic.json`` (the parameters). Classes keep VOC's names and ids.

What makes incremental learning on it non-trivial:

* every class is a fixed (shape, texture, base hue) combination; 8 shapes x 5 textures, so classes share a shape
  or a texture with others and hues are jittered, i.e. one cue alone does not identify a class;
* instances vary in scale, rotation, aspect, colour, texture frequency/phase and shading;
* 1-4 objects per image drawn in random order (later ones occlude earlier ones), on cluttered backgrounds with
  noise, lines and blobs that are labelled background;
* class frequencies are uneven, and a seed-dependent co-occurrence graph makes some classes appear together,
  so disjoint and overlap selections differ (e.g. 15-5 step 0 overlap keeps clearly more images);
* like VOC, a void (255) band surrounds object boundaries;
* ``SaliencyMaps/<id>.png`` (grey, 0..255) imitates an off-the-shelf salient-object detector for EPS: it fires on
  every object whatever its label (old classes included), misses some objects and parts of others, fires on
  some background clutter, and has soft blurred edges, so it is never the exact mask (``saliency_map``).

Same arguments, same bytes: every random draw comes from ``numpy.random.default_rng`` seeded by (seed, split,
image, attempt), and no timestamps are written.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from wilson_ray.atomic import atomic_write_text
from wilson_ray.data import voc
from wilson_ray.errors import UserError
from wilson_ray.protocol import VOC_CLASSES, VOID

GENERATOR_VERSION = 2  # 2: SaliencyMaps/
META_FILE = "synthetic.json"
DEFAULT_SEED = 0
DEFAULT_TRAIN = 1000
DEFAULT_VAL = 200
DEFAULT_SIZE = 96
DEFAULT_REPLAY = 16  # unlabelled replay images per class (RECALL's web-image folder, ``replay/<class name>/``)
REPLAY_DIR = "replay"
MIN_SIZE = 32
MAX_OBJECTS = 4
NUM_FG = len(VOC_CLASSES) - 1

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "ellipse", "hexagon")
TEXTURES = ("solid", "stripes", "dots", "checker", "gradient")

# Objects per image: 1..4 with these probabilities.
_N_OBJECTS_P = np.array([0.3, 0.35, 0.22, 0.13])
# Probability that a further object is a co-occurrence partner of one already in the scene.
_PARTNER_P = 0.55
_PARTNERS_PER_CLASS = 2
# A forced object (placed to guarantee class coverage) must keep this many labelled pixels.
_MIN_FORCED_PIXELS = 12
_MAX_ATTEMPTS = 64
# A new object may hide at most this fraction of an earlier object's visible pixels (placement is redrawn).
_MAX_COVERED = 0.5
_PLACEMENT_TRIES = 10


@dataclass(frozen=True)
class ClassStyle:
    """Appearance of one class: a shape, a texture and a base hue in [0, 1)."""

    shape: str
    texture: str
    hue: float


def class_styles(n: int) -> tuple[ClassStyle, ...]:
    """Fixed (seed-independent) styles of ``n`` classes; the first 20 are those of VOC ids 1..20.

    Class i (0-based) gets shape i mod 8 and texture i mod 5: up to 40 classes the pairs are distinct
    (lcm(8, 5) = 40), each shape is shared by 2-3 of VOC's classes and each texture by 4. Hues step by the golden
    ratio so neighbours differ but some classes end up with close hues.
    """
    return tuple(
        ClassStyle(SHAPES[i % len(SHAPES)], TEXTURES[i % len(TEXTURES)], round((i * 0.6180339887) % 1.0, 4))
        for i in range(n)
    )


CLASS_STYLES = class_styles(NUM_FG)
# Mask value -> style of the VOC layout (the COCO layout maps COCO ids to styles, synthetic_coco.py).
VOC_STYLES: dict[int, ClassStyle] = {k: CLASS_STYLES[k - 1] for k in range(1, NUM_FG + 1)}


# VOC colour map (the standard bit-interleaved palette), so the PNGs look like VOC's.
def _voc_palette() -> list[int]:
    pal = []
    for k in range(256):
        r = g = b = 0
        c = k
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


VOC_PALETTE = _voc_palette()


@dataclass(frozen=True)
class SynthParams:
    """Arguments of a generated dataset (stored in ``synthetic.json``)."""

    seed: int = DEFAULT_SEED
    train: int = DEFAULT_TRAIN
    val: int = DEFAULT_VAL
    size: int = DEFAULT_SIZE
    replay: int = DEFAULT_REPLAY

    def check(self, num_classes: int = NUM_FG) -> "SynthParams":
        """``self`` if every argument is valid for a dataset of ``num_classes`` classes, else a UserError."""
        if not isinstance(self.replay, int) or self.replay < 0:
            raise UserError(f"--replay: got {self.replay!r}, expected an integer >= 0")
        min_images = -(-num_classes // MAX_OBJECTS)  # every class must fit in each split
        for name in ("train", "val"):
            n = getattr(self, name)
            if not isinstance(n, int) or n < min_images:
                raise UserError(
                    f"--{name}: got {n!r}, expected an integer >= {min_images} so that all {num_classes} classes "
                    f"(at most {MAX_OBJECTS} per image) can appear"
                )
        if not isinstance(self.size, int) or self.size < MIN_SIZE:
            raise UserError(f"--size: got {self.size!r}, expected an integer >= {MIN_SIZE} pixels")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"--seed: got {self.seed!r}, expected a non-negative integer")
        return self


@dataclass(frozen=True)
class SceneModel:
    """Seed-dependent scene statistics: class weights and the co-occurrence graph (partners of each class)."""

    weights: np.ndarray  # float [20], sums to 1: sampling probability of VOC id k+1
    partners: np.ndarray  # int [20, P]: VOC ids that tend to appear with VOC id k+1

    @classmethod
    def from_seed(cls, seed: int, num_classes: int = NUM_FG, stream: tuple[int, ...] = ()) -> "SceneModel":
        """The model of classes 1..``num_classes``; ``stream`` salts the random draws (another layout)."""
        rng = np.random.default_rng([seed, 0x5CE7E, *stream])
        # Log-normal weights: a few frequent classes and some rare ones, as in real data.
        w = np.exp(rng.normal(0.0, 0.6, num_classes))
        partners = np.stack(
            [
                rng.choice(np.delete(np.arange(1, num_classes + 1), k), _PARTNERS_PER_CLASS, replace=False)
                for k in range(num_classes)
            ]
        )
        return cls(w / w.sum(), partners)

    @property
    def num_classes(self) -> int:
        return len(self.weights)

    def sample_classes(self, rng: np.random.Generator) -> list[int]:
        """Class numbers (1..K; VOC ids in the VOC layout) of one scene's objects (1..4, repeats allowed),
        following weights and co-occurrence."""
        n = int(rng.choice(len(_N_OBJECTS_P), p=_N_OBJECTS_P)) + 1
        k = self.num_classes
        classes = [int(rng.choice(k, p=self.weights)) + 1]
        while len(classes) < n:
            if rng.random() < _PARTNER_P:
                anchor = classes[int(rng.integers(len(classes)))]
                classes.append(int(rng.choice(self.partners[anchor - 1])))
            else:
                classes.append(int(rng.choice(k, p=self.weights)) + 1)
        return classes


# --------------------------------------------------------------------------------------------------------------
# Drawing (vectorised over coordinate grids)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), np.float32)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bool mask of ``shape`` in object coordinates (unit radius), evaluated on the grids ``u``, ``v``."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape in ("triangle", "hexagon"):
        n, apothem = (3, 0.5) if shape == "triangle" else (6, 0.87)
        inside = np.ones(u.shape, dtype=bool)
        for k in range(n):
            a = -np.pi / 2 + 2 * np.pi * k / n
            inside &= u * np.cos(a) + v * np.sin(a) <= apothem
        return inside
    rho = np.sqrt(u * u + v * v)
    if shape == "star":
        phi = np.arctan2(v, u)
        return rho <= 0.38 + 0.62 * np.abs(np.cos(2.5 * phi)) ** 2
    if shape == "ring":
        return (rho <= 1.0) & (rho >= 0.55)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "ellipse":
        return u * u + (v / 0.55) ** 2 <= 1.0
    raise ValueError(f"unknown shape {shape!r}")


def texture_field(texture: str, u: np.ndarray, v: np.ndarray, freq: float, phase: np.ndarray) -> np.ndarray:
    """Blend weight in [0, 1] between an object's two colours, in object coordinates (so it rotates with it)."""
    if texture == "solid":
        return np.zeros(u.shape, dtype=np.float32)
    if texture == "stripes":
        return (np.sin(2 * np.pi * (freq * u + phase[0])) > 0).astype(np.float32)
    if texture == "dots":
        du = (freq * u + phase[0]) % 1.0 - 0.5
        dv = (freq * v + phase[1]) % 1.0 - 0.5
        return (du * du + dv * dv <= 0.32**2).astype(np.float32)
    if texture == "checker":
        return ((np.floor(freq * u + phase[0]) + np.floor(freq * v + phase[1])) % 2).astype(np.float32)
    if texture == "gradient":
        return np.clip((u + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}")


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Cluttered background [S, S, 3] in 0..1: two-colour low-frequency noise, faint pattern, lines and blobs."""
    s = yy.shape[0]
    g = int(rng.integers(3, 7))
    field = (
        np.asarray(
            Image.fromarray((rng.random((g, g)) * 255).astype(np.uint8)).resize((s, s), Image.BICUBIC), np.float32
        )
        / 255.0
    )
    c1 = _hsv(rng.random(), rng.uniform(0.05, 0.45), rng.uniform(0.25, 0.85))
    c2 = _hsv(rng.random(), rng.uniform(0.05, 0.45), rng.uniform(0.25, 0.85))
    img = c1 * (1 - field[..., None]) + c2 * field[..., None]
    if rng.random() < 0.4:  # a faint large-scale pattern that is not a class texture
        a = rng.uniform(0, np.pi)
        period = rng.uniform(0.15, 0.4) * s
        img *= 1 + 0.12 * np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period)[..., None]
    for _ in range(int(rng.integers(0, 4))):  # lines
        p0, p1 = rng.uniform(0, s, 2), rng.uniform(0, s, 2)
        d = p1 - p0
        t = np.clip(((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
        dist = np.hypot(xx - p0[0] - t * d[0], yy - p0[1] - t * d[1])
        img[dist <= rng.uniform(0.6, 1.8)] = _hsv(rng.random(), rng.uniform(0, 1), rng.uniform(0.2, 1))
    for _ in range(int(rng.integers(0, 4))):  # irregular blobs, smaller than any object
        cx, cy = rng.uniform(0, s, 2)
        r0 = rng.uniform(0.03, 0.08) * s
        phi = np.arctan2(yy - cy, xx - cx)
        edge = r0 * (1 + 0.3 * np.sin(3 * phi + rng.uniform(0, 6.3)) + 0.2 * np.sin(5 * phi + rng.uniform(0, 6.3)))
        img[np.hypot(xx - cx, yy - cy) <= edge] = _hsv(rng.random(), rng.uniform(0, 1), rng.uniform(0.2, 1))
    return img


def _draw_object(
    rng: np.random.Generator,
    img: np.ndarray,
    label: np.ndarray,
    inst: np.ndarray,
    index: int,
    cls: int,
    style: ClassStyle,
    yy: np.ndarray,
    xx: np.ndarray,
) -> None:
    """Draw instance ``index`` of mask value ``cls`` in ``style`` on top of ``img``/``label``/``inst`` (in place).

    The pose is redrawn (up to ``_PLACEMENT_TRIES`` times) while it would hide more than ``_MAX_COVERED`` of an
    earlier object's visible pixels: occlusion stays partial, so a class present in the labels is visible.
    """
    s = yy.shape[0]
    visible = np.bincount(inst[inst >= 0], minlength=index)  # pixels each earlier instance still shows
    for _ in range(_PLACEMENT_TRIES):
        r = rng.uniform(0.11, 0.25) * s
        cx, cy = rng.uniform(0.12, 0.88, 2) * s
        theta = rng.uniform(0, 2 * np.pi)
        aspect = rng.uniform(0.88, 1.12)
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / (r * aspect)
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) * aspect / r
        inside = shape_mask(style.shape, u, v)
        under = inst[inside]
        covered = np.bincount(under[under >= 0], minlength=index)
        if not index or (covered <= _MAX_COVERED * visible).all():
            break
    if not inside.any():
        return
    hue = style.hue + rng.uniform(-0.03, 0.03)
    sat, val = rng.uniform(0.55, 0.95), rng.uniform(0.6, 1.0)
    c1 = _hsv(hue, sat, val)
    # Gradients blend towards a neighbouring hue, the patterned textures towards a darker shade of the same hue.
    c2 = _hsv(hue + 0.12, sat, val * 0.8) if style.texture == "gradient" else _hsv(hue, sat * 0.6, val * 0.45)
    t = texture_field(style.texture, u, v, rng.uniform(1.8, 3.2), rng.uniform(0, 1, 2))[inside]
    colour = c1 * (1 - t[:, None]) + c2 * t[:, None]
    shading = 1 + rng.uniform(-0.15, 0.15) * v[inside]  # light from one side
    img[inside] = colour * shading[:, None]
    label[inside] = cls
    inst[inside] = index


def void_band(label: np.ndarray, width: int) -> np.ndarray:
    """Bool [S, S]: pixels within the boundary band of any object (dilate minus erode of the label map).

    A pixel is in the band when its ``width`` x ``width`` neighbourhood holds two different labels and one of them is
    an object; this is the union over objects of dilate(mask) - erode(mask), as VOC's void outlines.
    """
    pil = Image.fromarray(label)
    mx = np.asarray(pil.filter(ImageFilter.MaxFilter(width)))
    mn = np.asarray(pil.filter(ImageFilter.MinFilter(width)))
    return (mx != mn) & (mx > 0)


def render_scene(rng: np.random.Generator, classes: list[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image uint8 [S, S, 3] and mask uint8 [S, S] (VOC ids, 255 boundary band); objects drawn in order."""
    img, mask, _ = render_scene_layers(rng, classes, size)
    return img, mask


def render_scene_layers(
    rng: np.random.Generator, classes: list[int], size: int, styles: dict[int, ClassStyle] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``render_scene`` plus the object label map uint8 [S, S] without the void band. ``classes`` are mask values,
    drawn in ``styles[value]`` (default: VOC ids in VOC's styles)."""
    styles = VOC_STYLES if styles is None else styles
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    img = _background(rng, yy, xx)
    label = np.zeros((size, size), dtype=np.uint8)
    inst = np.full((size, size), -1, dtype=np.int64)  # which object owns each pixel (-1: background)
    for index, cls in enumerate(classes):
        _draw_object(rng, img, label, inst, index, cls, styles[cls], yy, xx)
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 0.025, img.shape)  # exposure and sensor noise
    img = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    mask = label.copy()
    mask[void_band(label, 3 if size < 200 else 5)] = VOID
    return img, mask, label


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise [S, S] in 0..1 (a random cells×cells grid, bicubic-upsampled)."""
    grid = Image.fromarray((rng.random((cells, cells)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((size, size), Image.BICUBIC), np.float32) / 255.0


def saliency_map(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    """An imperfect saliency map uint8 [S, S] of a scene's label map, as a salient-object detector gives: every
    object fires whatever its class (p = 0.85) with its own confidence and a smooth fade over its parts, a
    background blob fires sometimes (p = 0.35), edges are Gaussian-blurred and a little noise is added."""
    s = label.shape[0]
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    sal = np.zeros((s, s), np.float32)
    for cls in np.unique(label[label > 0]):
        if rng.random() < 0.15:  # missed object
            continue
        region = label == cls
        gain = 0.5 + 0.5 * _smooth_field(rng, s, int(rng.integers(2, 5)))  # parts fade
        sal[region] = np.maximum(sal[region], rng.uniform(0.8, 1.0) * gain[region])
    if rng.random() < 0.35:  # salient clutter: fires on an unlabelled background region
        cx, cy = rng.uniform(0.1, 0.9, 2) * s
        r = rng.uniform(0.06, 0.16) * s
        blob = np.hypot((xx - cx) / rng.uniform(0.6, 1.4), yy - cy) <= r
        sal[blob] = np.maximum(sal[blob], rng.uniform(0.4, 0.9))
    blurred = Image.fromarray((sal * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(rng.uniform(0.015, 0.03) * s)
    )
    out = np.asarray(blurred, np.float32) / 255.0 + rng.normal(0, 0.03, (s, s))
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# Planning and writing


def plan_split(
    model: SceneModel, seed: int, split: str, n: int, stream: tuple[int, ...] = ()
) -> list[tuple[list[int], int]]:
    """Per image: (class numbers of ``model`` in drawing order, number of trailing *forced* ones that must stay
    visible).

    Scenes follow ``model``; classes missing from the split are then added as the top-most object of images with
    room (or replace a duplicate class), so every class appears in the split. ``stream`` salts the random draws.
    """
    rng = np.random.default_rng([seed, split_code(split), 0xC1A55, *stream])
    scenes = [model.sample_classes(rng) for _ in range(n)]
    forced = [[] for _ in range(n)]
    num_classes = model.num_classes
    for cls in range(1, num_classes + 1):
        if any(cls in s for s in scenes):
            continue
        room = [i for i in range(n) if len(scenes[i]) + len(forced[i]) < MAX_OBJECTS]
        if room:
            forced[room[int(rng.integers(len(room)))]].append(cls)
            continue
        # Every image is full: replace an object whose class also occurs in another slot of the split.
        counts = np.bincount([c for s in scenes for c in s] + [c for f in forced for c in f], minlength=num_classes + 1)
        i, j = next((i, j) for i in rng.permutation(n) for j, c in enumerate(scenes[i]) if counts[c] > 1)
        scenes[i].pop(j)
        forced[i].append(cls)
    return [(scenes[i] + forced[i], len(forced[i])) for i in range(n)]


def split_code(split: str) -> int:
    """The number of ``split`` in the random streams' seeds."""
    return {"train": 1, "val": 2}[split]


def image_id(split: str, i: int) -> str:
    return f"synth_{split}_{i:06d}"


def render_with_coverage(
    seed: int,
    split: str,
    i: int,
    classes: list[int],
    n_forced: int,
    size: int,
    styles: dict[int, ClassStyle] | None = None,
    stream: tuple[int, ...] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render image ``i`` (``classes``: mask values, see ``render_scene_layers``), redrawing (new attempt seed)
    until its forced classes keep enough visible pixels; ``stream`` salts the random draws."""
    forced = classes[len(classes) - n_forced :]
    for attempt in range(_MAX_ATTEMPTS):
        rng = np.random.default_rng([seed, split_code(split), i, attempt, *stream])
        img, mask, label = render_scene_layers(rng, classes, size, styles)
        counts = np.bincount(mask.ravel(), minlength=256)
        if all(counts[c] >= _MIN_FORCED_PIXELS for c in forced):
            return img, mask, label
    raise RuntimeError(f"synthetic {split} image {i}: forced classes {forced} not visible after {_MAX_ATTEMPTS} draws")


def _write_split(folder: Path, model: SceneModel, params: SynthParams, split: str) -> tuple[list[str], np.ndarray]:
    """Render and write the images and masks of ``split`` into ``folder``; return the list lines and presence."""
    n = getattr(params, split)
    lines, presence = [], np.zeros((n, NUM_FG), dtype=np.float64)
    for i, (classes, n_forced) in enumerate(plan_split(model, params.seed, split, n)):
        img, mask, label = render_with_coverage(params.seed, split, i, classes, n_forced, params.size)
        name = image_id(split, i)
        # Its own random stream: the images and masks stay those of a dataset without saliency maps.
        sal = saliency_map(np.random.default_rng([params.seed, split_code(split), i, 0x5A1]), label)
        Image.fromarray(sal).save(folder / voc.SALIENCY_DIR / f"{name}.png", format="PNG")
        Image.fromarray(img).save(folder / voc.IMAGE_DIR / f"{name}.jpg", format="JPEG", quality=90)
        png = Image.fromarray(mask)
        png.putpalette(VOC_PALETTE)
        png.save(folder / voc.MASK_DIR / f"{name}.png", format="PNG")
        presence[i] = np.bincount(mask.ravel(), minlength=256)[1 : NUM_FG + 1] > 0
        lines.append(f"/{voc.IMAGE_DIR}/{name}.jpg /{voc.MASK_DIR}/{name}.png")
    return lines, presence


def render_replay(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """One unlabelled "web image" of VOC id ``cls`` [S, S, 3] uint8, from another distribution than the training
    scenes: a saturated studio gradient or dense clutter of class-less shapes behind the object, the object larger
    and centred (web photos are object-centric), wider colour and texture jitter, sometimes blurred, and now and
    then a smaller second object of another class (web images are not single-class)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    c1 = _hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.5, 1.0))
    c2 = _hsv(rng.random(), rng.uniform(0.4, 0.9), rng.uniform(0.2, 0.7))
    a = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + ((xx - size / 2) * np.cos(a) + (yy - size / 2) * np.sin(a)) / size, 0, 1)[..., None]
    img = c1 * (1 - t) + c2 * t
    if rng.random() < 0.5:  # clutter: many small shapes in random colours, none of them a class's style
        for _ in range(int(rng.integers(6, 14))):
            cx, cy, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(0.03, 0.09) * size
            inside = np.maximum(np.abs(xx - cx), np.abs(yy - cy) * rng.uniform(0.5, 2.0)) <= r
            img[inside] = _hsv(rng.random(), rng.uniform(0, 0.3), rng.uniform(0.1, 1.0))
    objects = [(cls, rng.uniform(0.25, 0.42), rng.uniform(0.35, 0.65, 2))]
    if rng.random() < 0.25:
        other = int(rng.integers(1, NUM_FG))
        objects.insert(0, (other + (other >= cls), rng.uniform(0.12, 0.2), rng.uniform(0.15, 0.85, 2)))
    for k, scale, (px, py) in objects:
        style = CLASS_STYLES[k - 1]
        r, theta, aspect = scale * size, rng.uniform(0, 2 * np.pi), rng.uniform(0.8, 1.25)
        dx, dy = xx - px * size, yy - py * size
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / (r * aspect)
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) * aspect / r
        inside = shape_mask(style.shape, u, v)
        hue, sat, val = style.hue + rng.uniform(-0.06, 0.06), rng.uniform(0.35, 1.0), rng.uniform(0.45, 1.0)
        o1 = _hsv(hue, sat, val)
        o2 = _hsv(hue + 0.12, sat, val * 0.8) if style.texture == "gradient" else _hsv(hue, sat * 0.6, val * 0.45)
        w = texture_field(style.texture, u, v, rng.uniform(1.2, 4.0), rng.uniform(0, 1, 2))[inside]
        img[inside] = o1 * (1 - w[:, None]) + o2 * w[:, None]
    img = img + rng.normal(0, 0.04, img.shape)
    out = Image.fromarray((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
    if rng.random() < 0.3:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.2)))
    return np.asarray(out)


def _write_replay(folder: Path, params: SynthParams) -> None:
    """``replay/<class name>/replay_NNNN.jpg``: ``params.replay`` unlabelled images per foreground class."""
    for cls in range(1, NUM_FG + 1 if params.replay else 1):
        sub = folder / REPLAY_DIR / VOC_CLASSES[cls]
        sub.mkdir(parents=True)
        for i in range(params.replay):
            img = render_replay(np.random.default_rng([params.seed, 3, cls, i]), cls, params.size)
            Image.fromarray(img).save(sub / f"replay_{i:04d}.jpg", format="JPEG", quality=90)


def _metadata(params: SynthParams, model: SceneModel) -> dict:
    return {
        "generator": "wilson-ray synthetic",
        "version": GENERATOR_VERSION,
        "params": asdict(params),
        "classes": [
            {
                "id": k,
                "name": VOC_CLASSES[k],
                **asdict(CLASS_STYLES[k - 1]),
                "weight": round(float(model.weights[k - 1]), 6),
                "partners": model.partners[k - 1].tolist(),
            }
            for k in range(1, NUM_FG + 1)
        ],
    }


def read_metadata(root: str | Path) -> dict | None:
    """The ``synthetic.json`` of a generated dataset, or None if ``root`` holds none (or an unreadable one)."""
    try:
        return json.loads((Path(root) / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class SynthResult:
    """Outcome of ``generate``: where, with what, whether it was (re)generated, and how long it took."""

    root: Path
    params: SynthParams
    generated: bool
    seconds: float
    train_class_counts: list[int]
    val_class_counts: list[int]


def generate(
    out: str | Path,
    seed: int = DEFAULT_SEED,
    train: int = DEFAULT_TRAIN,
    val: int = DEFAULT_VAL,
    size: int = DEFAULT_SIZE,
    force: bool = False,
    replay: int = DEFAULT_REPLAY,
) -> SynthResult:
    """Write a synthetic VOC-layout dataset to ``out``; return what was written.

    The dataset is generated in a temporary sibling folder and renamed onto ``out`` when complete, so a killed run
    never leaves a half-written dataset at ``out``. If ``out`` already holds a dataset generated with the same
    arguments it is kept (nothing is written); any other non-empty ``out`` is refused unless ``force``.
    """
    params = SynthParams(seed, train, val, size, replay).check()
    out = Path(out).expanduser()
    model = SceneModel.from_seed(seed)
    meta = _metadata(params, model)
    if already_generated(out, meta, force):
        presence = {s: voc.voc_manifest(out, s).presence().sum(0).tolist() for s in voc.SPLITS}
        return SynthResult(out, params, False, 0.0, presence["train"], presence["val"])

    start = time.perf_counter()
    tmp = make_staging(out)
    try:
        for folder in (voc.IMAGE_DIR, voc.MASK_DIR, voc.SALIENCY_DIR, "splits"):
            (tmp / folder).mkdir()
        counts = {}
        for split in voc.SPLITS:
            lines, presence = _write_split(tmp, model, params, split)
            np.save(tmp / voc.LABEL_FILES[split], presence)
            (tmp / voc.LIST_FILES[split]).write_text("\n".join(lines) + "\n", encoding="utf-8")
            counts[split] = presence.sum(0).astype(int).tolist()
        _write_replay(tmp, params)
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=1) + "\n")
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SynthResult(out, params, True, time.perf_counter() - start, counts["train"], counts["val"])


def already_generated(out: Path, meta: dict, force: bool) -> bool:
    """True if ``out`` holds a dataset generated with ``meta`` (keep it); False if ``out`` may be (re)written.

    Any other non-empty ``out`` is a UserError unless ``force``."""
    if not out.exists() or force:
        return False
    if not out.is_dir():
        raise UserError(f"--out: {out} is a file; expected a folder to create")
    existing = read_metadata(out)
    if existing == meta:
        return True
    if any(out.iterdir()):
        what = "a synthetic dataset with other arguments" if existing else "other files"
        raise UserError(f"--out: {out} already holds {what}; expected a new or empty folder (or pass --force)")
    return False


def make_staging(out: Path) -> Path:
    """A new temporary sibling folder of ``out`` to generate into (renamed onto ``out`` by ``swap_into_place``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``out``; an existing ``out`` is moved aside first, then deleted."""
    os.chmod(tmp, 0o755)  # mkdtemp creates 0700
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
