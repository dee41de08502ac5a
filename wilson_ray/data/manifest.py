"""Per-split manifest: one pyarrow table of image ids, file paths and per-class presence, cached as Parquet.

A manifest is what split selection and the Dataset read: ``protocol.Task.select`` filters its presence table,
the Dataset opens its paths. Building it never opens an image; presence comes from the dataset's label file
(VOC ``voc_1h_labels_*.npy``, COCO ``1h_labels_*.npy``) or, where there is none, from one pass over the masks.

Cache: ``<root>/.wilson-ray/manifest-<split>.parquet``, or ``$XDG_CACHE_HOME/wilson-ray/<hash of root>/`` (default
``~/.cache``) when the data folder is read-only. The Parquet schema metadata holds a fingerprint of the inputs
(list file bytes + size/mtime of the label file or of every mask); a mismatch rebuilds the table.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import multiprocessing
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from wilson_ray.atomic import atomic_write
from wilson_ray.errors import UserError

log = logging.getLogger(__name__)

# Bump when the table layout or the fingerprint recipe changes: old caches are then rebuilt, never misread.
MANIFEST_VERSION = "1"
CACHE_DIRNAME = ".wilson-ray"
_META_FINGERPRINT = b"wilson_ray.fingerprint"
_META_VERSION = b"wilson_ray.version"
_META_SOURCE = b"wilson_ray.source"
_META_NUM_IDS = b"wilson_ray.num_ids"

# Below this many masks a process pool costs more to start than it saves.
POOL_MIN_MASKS = 512


@dataclass(frozen=True)
class ListEntries:
    """The parsed split list of one split: line ``i`` (1-based ``lines[i]``) names image ``ids[i]``."""

    list_file: Path  # absolute path of the list file
    data: bytes  # its bytes (fingerprinted)
    ids: list[str]
    images: list[str]  # paths relative to the dataset root
    masks: list[str]
    lines: list[int] = field(default_factory=list)  # 1-based line numbers in list_file


@dataclass(frozen=True, eq=False)
class SourceSpec:
    """Label space of a layout: its tag, the number of presence columns, and the mask values it may hold."""

    name: str  # "voc" or "coco": the cache/table tag
    num_ids: int  # number of foreground dataset ids K (presence columns 1..K)
    valid_values: np.ndarray  # bool [256]: mask values allowed in this layout


class Manifest:
    """The manifest of one (dataset root, split): ``table`` has columns ``image_id``, ``image``, ``mask``,
    ``line`` and one bool column per dataset id ``"1"..."K"``."""

    def __init__(
        self,
        root: Path,
        split: str,
        list_file: Path,
        table: pa.Table,
        spec: SourceSpec,
        cache_path: Path | None = None,
        from_cache: bool = False,
    ):
        self.root = Path(root)
        self.split = split
        self.list_file = Path(list_file)
        self.table = table
        self.spec = spec
        self.cache_path = cache_path
        self.from_cache = from_cache
        self._lines = table.column("line").to_numpy()

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        return f"Manifest({self.spec.name}, root={str(self.root)!r}, split={self.split!r}, n={len(self)})"

    @property
    def num_ids(self) -> int:
        """Number of foreground dataset ids K."""
        return self.spec.num_ids

    @property
    def image_ids(self) -> list[str]:
        return self.table.column("image_id").to_pylist()

    @property
    def images(self) -> list[str]:
        return self.table.column("image").to_pylist()

    @property
    def masks(self) -> list[str]:
        return self.table.column("mask").to_pylist()

    @property
    def lines(self) -> np.ndarray:
        """1-based line number of each image in the list file."""
        return self._lines

    def presence(self) -> np.ndarray:
        """Bool array [N, K]: entry [i, k-1] is whether dataset id k has a pixel in image i's mask."""
        cols = [self.table.column(str(k)).to_numpy(zero_copy_only=False) for k in range(1, self.num_ids + 1)]
        if not cols:
            return np.zeros((len(self), 0), dtype=bool)
        return np.stack(cols, axis=1).astype(bool, copy=False)

    def with_presence(self, presence: np.ndarray, spec: SourceSpec) -> "Manifest":
        """A copy whose presence columns are replaced by ``presence`` [N, spec.num_ids] (e.g. VOC re-coded to COCO)."""
        base = self.table.select(["image_id", "image", "mask", "line"])
        table = _with_presence_columns(base, np.asarray(presence, dtype=bool))
        return Manifest(self.root, self.split, self.list_file, table, spec, self.cache_path, self.from_cache)

    def where(self, i: int) -> str:
        """``<list file> line <n>``: where image ``i`` is listed, for error messages."""
        return f"{self.list_file} line {int(self._lines[i])}"

    def check_files(self, indices: Sequence[int] | np.ndarray | None = None) -> None:
        """Raise a UserError naming the list file, line and path of the first listed image/mask that is missing."""
        idx = range(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        images, masks = self.images, self.masks
        for i in idx:
            for kind, rel in (("image", images[i]), ("mask", masks[i])):
                if not (self.root / rel).is_file():
                    raise UserError(
                        f"{self.where(i)}: {kind} {self.root / rel} does not exist; "
                        f"expected every file named in the list to exist under {self.root}"
                    )


# --------------------------------------------------------------------------------------------------------------
# Loading masks (shared with the readers and the Dataset)


def read_mask(path: Path, valid_values: np.ndarray | None = None, where: str | None = None) -> np.ndarray:
    """Load a single-channel PNG mask as uint8 [H, W]; check its values against ``valid_values`` (bool [256])."""
    label = where or str(path)
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise UserError(f"{label}: mask {path} has PIL mode {img.mode}; expected a single-channel (L or P) PNG")
            mask = np.asarray(img, dtype=np.uint8)
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{label}: mask {path} does not exist; expected a PNG mask") from None
    except Exception as err:  # PIL raises many types for corrupt files
        raise UserError(
            f"{label}: mask {path} cannot be read ({type(err).__name__}: {err}); expected a PNG mask"
        ) from None
    if valid_values is not None:
        check_mask_values(mask, valid_values, path, label)
    return mask


def check_mask_values(mask: np.ndarray, valid_values: np.ndarray, path: Path, where: str | None = None) -> None:
    """Raise a UserError naming ``path`` if ``mask`` holds a value outside ``valid_values`` (bool [256])."""
    counts = np.bincount(mask.ravel(), minlength=256)
    bad = np.flatnonzero((counts > 0) & ~valid_values)
    if bad.size:
        ok = describe_values(valid_values)
        raise UserError(
            f"{where or path}: mask {path} contains value(s) {', '.join(map(str, bad[:8].tolist()))}; "
            f"expected only {ok}"
        )


def describe_values(valid: np.ndarray) -> str:
    """Human form of a bool [256] value set, e.g. ``0..20 and 255``."""
    vals = np.flatnonzero(valid)
    runs, start = [], vals[0]
    for a, b in zip(vals, np.append(vals[1:], -10)):
        if b != a + 1:
            runs.append(f"{start}..{a}" if a != start else f"{a}")
            start = b
    return ", ".join(runs[:-1]) + (" and " if len(runs) > 1 else "") + runs[-1]


def read_image(path: Path, where: str | None = None) -> Image.Image:
    """Load an image fully as RGB; a missing, truncated or corrupt file raises a UserError naming it."""
    label = where or str(path)
    try:
        with Image.open(path) as img:
            img.load()  # decodes every byte: truncated JPEGs fail here, not later in a worker
            return img.convert("RGB")
    except FileNotFoundError:
        raise UserError(f"{label}: image {path} does not exist; expected a readable image") from None
    except Exception as err:  # PIL raises many types for corrupt files
        raise UserError(
            f"{label}: image {path} is unreadable or corrupt ({type(err).__name__}: {err}); expected a valid image"
        ) from None


def check_pair(
    image_path: Path, mask_path: Path, num_ids: int, valid_values: np.ndarray, where: str | None = None
) -> np.ndarray:
    """Fully validate one image/mask pair (decodable image, valid mask values, equal sizes); return its presence [K]."""
    label = where or str(image_path)
    try:
        with Image.open(image_path) as img:
            img.verify()  # structural check (chunk CRCs, headers)
    except FileNotFoundError:
        raise UserError(f"{label}: image {image_path} does not exist; expected a readable image") from None
    except Exception as err:
        raise UserError(
            f"{label}: image {image_path} is corrupt ({type(err).__name__}: {err}); expected a valid image"
        ) from None
    image = read_image(image_path, where)
    mask = read_mask(mask_path, valid_values, where)
    if mask.shape != (image.height, image.width):
        raise UserError(
            f"{label}: mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {image_path} is "
            f"{image.width}x{image.height}; expected equal sizes"
        )
    counts = np.bincount(mask.ravel(), minlength=256)
    return counts[1 : num_ids + 1] > 0


def _check_pair_job(args: tuple[str, str, int, bytes, str]) -> np.ndarray:
    image, mask, num_ids, valid, where = args
    return check_pair(Path(image), Path(mask), num_ids, np.frombuffer(valid, dtype=bool), where)


def check_pairs(manifest: "Manifest", workers: int | None = None) -> np.ndarray:
    """Run ``check_pair`` over every image of ``manifest`` (process pool when large); return presence [N, K]."""
    valid = manifest.spec.valid_values.astype(bool).tobytes()
    jobs = [
        (str(manifest.root / im), str(manifest.root / mk), manifest.num_ids, valid, manifest.where(i))
        for i, (im, mk) in enumerate(zip(manifest.images, manifest.masks))
    ]
    return _run_jobs(_check_pair_job, jobs, manifest.num_ids, workers)


def _run_jobs(fn, jobs: list, num_ids: int, workers: int | None) -> np.ndarray:
    """Map ``fn`` over ``jobs`` (serially when few), stacking the bool rows into [N, K]."""
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if len(jobs) < POOL_MIN_MASKS or workers <= 1:
        rows = [fn(j) for j in jobs]
    else:
        # spawn: the parent may hold torch/OpenMP threads, which fork would copy in a locked state.
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            rows = list(pool.map(fn, jobs, chunksize=64))
    if not rows:
        return np.zeros((0, num_ids), dtype=bool)
    return np.stack(rows).astype(bool)


def mask_presence(path: Path, num_ids: int, valid_values: np.ndarray, where: str | None = None) -> np.ndarray:
    """Bool [K]: which dataset ids 1..K have at least one pixel in the mask at ``path``."""
    counts = np.bincount(read_mask(path, valid_values, where).ravel(), minlength=256)
    return counts[1 : num_ids + 1] > 0


def _mask_presence_job(args: tuple[str, int, bytes, str]) -> np.ndarray:
    path, num_ids, valid, where = args
    return mask_presence(Path(path), num_ids, np.frombuffer(valid, dtype=bool), where)


def presence_from_masks(
    paths: Sequence[Path],
    num_ids: int,
    valid_values: np.ndarray,
    wheres: Sequence[str] | None = None,
    workers: int | None = None,
) -> np.ndarray:
    """Bool [N, K] presence derived from the masks at ``paths`` (np.bincount per mask), in a process pool when large."""
    wheres = list(wheres) if wheres is not None else [str(p) for p in paths]
    jobs = [(str(p), num_ids, valid_values.astype(bool).tobytes(), w) for p, w in zip(paths, wheres)]
    return _run_jobs(_mask_presence_job, jobs, num_ids, workers)


# --------------------------------------------------------------------------------------------------------------
# Label files


def load_label_file(path: Path, n_images: int, num_ids: int, list_file: Path) -> np.ndarray:
    """Load a multi-hot label file [N, K] as bool, checking its shape against the list and its values are 0/1."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:
        raise UserError(
            f"{path}: cannot be read as a .npy array ({type(err).__name__}: {err}); "
            f"expected a {n_images}x{num_ids} 0/1 array"
        ) from None
    if arr.shape != (n_images, num_ids):
        raise UserError(
            f"{path}: shape {tuple(arr.shape)} disagrees with {list_file} ({n_images} images); "
            f"expected ({n_images}, {num_ids})"
        )
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise UserError(f"{path}: holds values other than 0 and 1; expected a multi-hot class-presence array")
    return arr.astype(bool)


# --------------------------------------------------------------------------------------------------------------
# Cache


def user_cache_dir(root: Path) -> Path:
    """``$XDG_CACHE_HOME/wilson-ray/<sha256(abs root)[:16]>`` (default ``~/.cache``): the cache of a read-only root."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    digest = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return Path(base) / "wilson-ray" / digest


def root_writable(root: Path) -> bool:
    """Whether we may write the cache into ``root``.

    Permission bits are checked as well as ``os.access``: root (uid 0) passes ``os.access`` on a folder marked
    read-only, but such a folder is meant to stay untouched (e.g. a shared dataset copy).
    """
    try:
        mode = root.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(root, os.W_OK)


def data_stamp(root: str | Path) -> list:
    """Identity of a dataset folder for the caches built from it (step checkpoints, pseudo-masks): its resolved
    path and the name, size and mtime of each split list, so the same data reached by another path shares an
    entry and an edited split list does not."""
    path = Path(root).expanduser().resolve()
    stamp: list = [str(path)]
    for sub in ("splits", "split"):
        folder = path / sub
        if folder.is_dir():
            stamp += [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())]
    return stamp


def cache_candidates(root: Path, split: str) -> list[Path]:
    """Cache file paths for (root, split), preferred first: next to the data, then the user cache."""
    name = f"manifest-{split}.parquet"
    return [root / CACHE_DIRNAME / name, user_cache_dir(root) / name]


def fingerprint(entries: ListEntries, root: Path, spec: SourceSpec, label_file: Path | None) -> str:
    """Hash of what the manifest is built from: list bytes + size/mtime of the label file or of every mask."""
    h = hashlib.sha256()
    h.update(f"v{MANIFEST_VERSION}\0{spec.name}\0{spec.num_ids}\0".encode())
    h.update(entries.data)
    files = [label_file] if label_file is not None else [root / m for m in entries.masks]
    for f in files:
        try:
            st = f.stat()
            h.update(f"\0{f.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"\0{f.name}\0missing".encode())
    return h.hexdigest()


def _read_cache(path: Path, fp: str, tag: str) -> pa.Table | None:
    """The cached table at ``path`` if its fingerprint is ``fp``, else None (missing, stale or unreadable)."""
    if not path.is_file():
        return None
    try:
        meta = pq.read_schema(path).metadata or {}
        if meta.get(_META_FINGERPRINT, b"").decode() != fp or meta.get(_META_SOURCE, b"").decode() != tag:
            return None
        return pq.read_table(path)
    except Exception as err:  # a damaged cache is rebuilt, never trusted
        log.warning("ignoring unreadable manifest cache %s (%s)", path, err)
        return None


def _write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path)
    os.chmod(path, 0o644)  # mkstemp creates 0600; other users of a shared data folder must read the cache too


def _write_cache(table: pa.Table, root: Path, split: str) -> Path | None:
    """Write ``table`` atomically to the first writable cache location; None if none is writable."""
    local, user = cache_candidates(root, split)
    targets = [local, user] if root_writable(root) else [user]
    for path in targets:
        try:
            atomic_write(path, lambda tmp: _write_parquet(table, tmp))
            return path
        except OSError as err:
            log.warning("cannot write manifest cache %s (%s)", path, err)
    return None


# --------------------------------------------------------------------------------------------------------------
# Building


def _with_presence_columns(table: pa.Table, presence: np.ndarray) -> pa.Table:
    for k in range(presence.shape[1]):
        table = table.append_column(pa.field(str(k + 1), pa.bool_()), pa.array(presence[:, k]))
    return table


def build_table(entries: ListEntries, presence: np.ndarray) -> pa.Table:
    """The manifest table of ``entries`` with presence columns ``"1".."K"``."""
    base = pa.table(
        {
            "image_id": pa.array(entries.ids, pa.string()),
            "image": pa.array(entries.images, pa.string()),
            "mask": pa.array(entries.masks, pa.string()),
            "line": pa.array(entries.lines, pa.int32()),
        }
    )
    return _with_presence_columns(base, presence)


def load_manifest(
    root: Path, split: str, entries: ListEntries, spec: SourceSpec, label_file: Path | None, use_cache: bool = True
) -> Manifest:
    """The manifest of (``root``, ``split``): from a matching cache, else built and cached.

    Presence comes from ``label_file`` when it exists (its shape is checked against the list), else from the masks.
    """
    root = Path(root)
    label_file = label_file if label_file is not None and label_file.is_file() else None
    fp = fingerprint(entries, root, spec, label_file)
    if use_cache:
        for path in cache_candidates(root, split):
            table = _read_cache(path, fp, spec.name)
            if table is not None and table.num_rows == len(entries.ids):
                return Manifest(root, split, entries.list_file, table, spec, path, from_cache=True)

    if label_file is not None:
        presence = load_label_file(label_file, len(entries.ids), spec.num_ids, entries.list_file)
    else:
        # Without a label file presence needs every mask; name the list line of a missing one.
        wheres = [f"{entries.list_file} line {ln}" for ln in entries.lines]
        for rel, where in zip(entries.masks, wheres):
            if not (root / rel).is_file():
                raise UserError(
                    f"{where}: mask {root / rel} does not exist and there is no label file to read class presence "
                    "from; expected the mask (or the dataset's label .npy file)"
                )
        presence = presence_from_masks([root / m for m in entries.masks], spec.num_ids, spec.valid_values, wheres)

    table = build_table(entries, presence).replace_schema_metadata(
        {
            _META_FINGERPRINT: fp.encode(),
            _META_VERSION: MANIFEST_VERSION.encode(),
            _META_SOURCE: spec.name.encode(),
            _META_NUM_IDS: str(spec.num_ids).encode(),
        }
    )
    cache_path = _write_cache(table, root, split) if use_cache else None
    return Manifest(root, split, entries.list_file, table, spec, cache_path, from_cache=False)


def valid_value_table(max_id: int) -> np.ndarray:
    """Bool [256] marking 0..max_id and 255 as valid mask values."""
    valid = np.zeros(256, dtype=bool)
    valid[: max_id + 1] = True
    valid[255] = True
    return valid
