"""Resumable, MD5-verified download and extraction of one dataset archive (``wilson-ray data prepare``, docs/data.md).

``fetch`` writes ``<file>.part`` and, when a transfer stops, asks for the rest with an HTTP ``Range`` request (the
VOC tar is 2 GB, COCO's train zip 18 GB: a dropped connection must not restart them). Only a file whose MD5 matches
is renamed to its final name, so an archive under its own name is always complete. torchvision's ``download_url``
has no resume, so the transfer is ours; the checksum (``calculate_md5``) and the extraction (``extract_archive``) are
torchvision's.
"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torchvision.datasets.utils import calculate_md5, extract_archive

from wilson_ray.errors import UserError

MIRROR_ENV = "WILSON_RAY_DATA_MIRROR"
_CHUNK = 1 << 20
_DONE = ".extracted"


@dataclass(frozen=True)
class Archive:
    """One official archive: its file name, download URL and published MD5 (None where none is published)."""

    filename: str
    url: str
    md5: str | None

    def source(self, mirror: str | None) -> str:
        """The URL to fetch: ``<mirror>/<filename>`` when a mirror is given (or in ``$WILSON_RAY_DATA_MIRROR``)."""
        mirror = mirror or os.environ.get(MIRROR_ENV)
        return f"{mirror.rstrip('/')}/{self.filename}" if mirror else self.url


def _content_total(resp, have: int) -> int | None:
    """Total size of the remote file from a 200's Content-Length or a 206's Content-Range (None if not sent)."""
    if resp.status == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _transfer(url: str, part: Path, timeout: float) -> tuple[int, int | None]:
    """One HTTP request appending to ``part`` from its current size; return (bytes on disk, total size or None)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the part is complete
            return have, have
        raise UserError(f"{url}: HTTP {err.code} {err.reason}; expected the archive to be downloadable") from None
    with resp:
        resumed = have and resp.status == 206
        total = _content_total(resp, have)
        with open(part, "ab" if resumed else "wb") as out:  # a 200 to a Range request: the server restarts
            shutil.copyfileobj(resp, out, _CHUNK)
    return part.stat().st_size, total


def fetch(
    archive: Archive,
    folder: str | Path,
    mirror: str | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    log: Callable[[str], None] = print,
) -> Path:
    """Download ``archive`` into ``folder`` (resuming ``<file>.part``), verify its MD5, return its path.

    An archive already under its final name is re-verified, not fetched again. A checksum mismatch deletes the
    download and raises a UserError naming the file and both MD5s.
    """
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    dest, part = folder / archive.filename, folder / f"{archive.filename}.part"
    if dest.is_file():
        verify_md5(dest, archive.md5, f"delete {dest} to download it again")
        return dest
    url = archive.source(mirror)
    for attempt in range(retries + 1):
        start = part.stat().st_size if part.exists() else 0
        log(f"downloading {url} -> {dest}" + (f" (resuming at {start:,} bytes)" if start else ""))
        try:
            size, total = _transfer(url, part, timeout)
        except (http.client.IncompleteRead, ConnectionError, TimeoutError, urllib.error.URLError) as err:
            reason = getattr(err, "reason", None)
            lost = isinstance(reason, (ConnectionResetError, ConnectionAbortedError, TimeoutError))
            if isinstance(err, urllib.error.URLError) and not lost:  # refused, unknown host: retrying cannot help
                raise UserError(f"{url}: cannot connect ({err.reason}); expected a reachable URL or --mirror") from None
            size, total = (part.stat().st_size if part.exists() else 0), None
            log(f"  connection lost at {size:,} bytes ({type(err).__name__}); attempt {attempt + 1} of {retries + 1}")
        if total is not None and size >= total:
            break
        if total is not None:  # the stream ended early without an error (the server closed the connection)
            log(f"  connection lost at {size:,} of {total:,} bytes; attempt {attempt + 1} of {retries + 1}")
        if total is None and size > start:  # a server that sends no length: a clean end of stream is the end
            break
    else:
        raise UserError(
            f"{url}: download incomplete after {retries + 1} attempts ({size:,} bytes in {part}); "
            "expected the whole archive: run the command again to resume"
        )
    verify_md5(part, archive.md5, "the download was deleted: run the command again to fetch it anew", delete=True)
    os.replace(part, dest)
    return dest


def verify_md5(path: Path, md5: str | None, hint: str, delete: bool = False) -> None:
    """Raise a UserError naming ``path``, the expected and the found MD5 when they differ (``delete``: remove it)."""
    if md5 is None:
        return
    found = calculate_md5(str(path), chunk_size=_CHUNK)
    if found != md5:
        if delete:
            path.unlink()
        name = path.name.removesuffix(".part")
        raise UserError(f"{name}: MD5 {found}, expected {md5} (corrupt or wrong archive); {hint}")


def extract(archive_path: Path, folder: str | Path, log: Callable[[str], None] = print) -> Path:
    """Extract ``archive_path`` into ``folder`` once (torchvision's ``extract_archive``); return ``folder``.

    Extraction goes to ``<folder>.tmp`` and is renamed when complete, so an interrupted one starts over cleanly.
    """
    folder = Path(folder)
    if (folder / _DONE).is_file():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"extracting {archive_path.name} -> {folder}")
    try:
        extract_archive(str(archive_path), str(tmp))
    except Exception as err:  # tarfile/zipfile raise many types for a damaged archive
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"{archive_path}: cannot be extracted ({type(err).__name__}: {err}); expected a valid archive"
        ) from None
    (tmp / _DONE).touch()
    os.replace(tmp, folder)
    return folder
