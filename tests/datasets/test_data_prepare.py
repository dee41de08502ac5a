"""``wilson-ray data prepare voc|coco`` against a local HTTP server (127.0.0.1) serving tiny archives in the
official layouts: VOC 2012 tar, SBD tgz with .mat masks, COCO zips; resume after a dropped connection, checksums."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from wilson_ray import cli
from wilson_ray.data import download, prepare
from wilson_ray.data.download import Archive
from wilson_ray.errors import UserError

scipy_io = pytest.importorskip("scipy.io")

VOC_TRAIN, VOC_VAL = ["2007_000001", "2007_000002"], ["2007_000003", "2007_000004"]
SBD_TRAIN, SBD_VAL = ["2008_000010", "2007_000003"], ["2008_000011", "2007_000001"]  # overlap VOC val and train
UNLISTED = "2009_000099"  # in JPEGImages, in no segmentation list


class Server:
    """Serves ``files`` (name -> bytes) with HTTP Range; ``drop_once`` names files whose first full GET is cut."""

    def __init__(self, files: dict[str, bytes], drop_once: set[str] = frozenset()):
        self.files, self.drop, self.requests = files, set(drop_once), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet test output
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                start = int(rng.removeprefix("bytes=").rstrip("-")) if rng else 0
                if start >= len(data):
                    self.send_error(416)
                    return
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if name in server.drop:  # send 40% and hang up: the client must resume with a Range request
                    server.drop.discard(name)
                    self.wfile.write(body[: len(body) * 2 // 5])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def jpeg(seed: int, size=(12, 10)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def mask(cls: int, size=(12, 10)) -> np.ndarray:
    m = np.zeros((size[1], size[0]), dtype=np.uint8)
    m[2:7, 3:9] = cls
    return m


def voc_png(cls: int) -> bytes:
    """A VOC-style palette PNG: class ``cls`` with a 255 border, like the official SegmentationClass files."""
    m = mask(cls)
    m[1, 3:9] = 255
    img = Image.fromarray(m, mode="P")
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def sbd_mat(cls: int) -> bytes:
    buf = io.BytesIO()
    scipy_io.savemat(buf, {"GTcls": {"Segmentation": mask(cls), "CategoriesPresent": np.array([cls])}})
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


# Class of each image's VOC mask and SBD mask (2007_000001's VOC mask must win over its SBD one).
VOC_CLASS = {"2007_000001": 3, "2007_000002": 15, "2007_000003": 8, "2007_000004": 12}
SBD_CLASS = {"2008_000010": 16, "2008_000011": 20, "2007_000003": 9, "2007_000001": 7}


def voc_archives() -> dict[str, bytes]:
    ids = sorted({*VOC_TRAIN, *VOC_VAL, *SBD_TRAIN, *SBD_VAL, UNLISTED})
    base = "VOCdevkit/VOC2012"
    voc = {f"{base}/JPEGImages/{i}.jpg": jpeg(n) for n, i in enumerate(ids)}
    voc.update({f"{base}/SegmentationClass/{i}.png": voc_png(c) for i, c in VOC_CLASS.items()})
    voc[f"{base}/ImageSets/Segmentation/train.txt"] = "".join(f"{i}\n" for i in VOC_TRAIN).encode()
    voc[f"{base}/ImageSets/Segmentation/val.txt"] = "".join(f"{i}\n" for i in VOC_VAL).encode()
    sbd_base = "benchmark_RELEASE/dataset"
    sbd = {f"{sbd_base}/cls/{i}.mat": sbd_mat(c) for i, c in SBD_CLASS.items()}
    sbd[f"{sbd_base}/train.txt"] = "".join(f"{i}\n" for i in SBD_TRAIN).encode()
    sbd[f"{sbd_base}/val.txt"] = "".join(f"{i}\n" for i in SBD_VAL).encode()
    return {
        prepare.VOC_ARCHIVES["voc"].filename: tar_bytes(voc, "w"),
        prepare.VOC_ARCHIVES["sbd"].filename: tar_bytes(sbd, "w:gz"),
    }


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)


def use_archives(monkeypatch, table: str, files: dict[str, bytes], md5s: dict[str, str | None] | None = None):
    """Point ``prepare.<table>`` at the test archives' MD5s (the official URLs stay; --mirror replaces them)."""
    archives = getattr(prepare, table)
    md5s = md5s or {}
    patched = {k: Archive(a.filename, a.url, md5s.get(a.filename, md5(files[a.filename]))) for k, a in archives.items()}
    monkeypatch.setattr(prepare, table, patched)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_prepare_voc_resumes_a_dropped_download_and_builds_the_checked_layout(tmp_path, capsys, monkeypatch):
    files = voc_archives()
    use_archives(monkeypatch, "VOC_ARCHIVES", files)
    tar_name = prepare.VOC_ARCHIVES["voc"].filename
    out = tmp_path / "voc"
    with Server(files, drop_once={tar_name}) as srv:
        code, stdout, err = run(capsys, "data", "prepare", "voc", "--out", str(out), "--mirror", srv.url)
    assert code == 0, err
    # The VOC tar was cut at 40% once, then fetched from there with a Range request.
    tar_requests = [r for n, r in srv.requests if n == tar_name]
    assert tar_requests == [None, f"bytes={len(files[tar_name]) * 2 // 5}-"]
    assert "resuming at" in err and "connection lost at 8,192 of" in err

    expected_train = sorted({"2007_000001", "2007_000002", "2008_000010", "2008_000011"})  # minus VOC val 2007_000003
    lines = (out / "splits/train_aug.txt").read_text().splitlines()
    assert lines == [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in expected_train]
    assert (out / "splits/val.txt").read_text().splitlines() == [
        f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in VOC_VAL
    ]
    # Masks: VOC's own where it has one (255 border kept), SBD's .mat otherwise; grey PNGs.
    m1 = np.asarray(Image.open(out / "SegmentationClassAug/2007_000001.png"))
    assert Image.open(out / "SegmentationClassAug/2007_000001.png").mode == "L"
    assert sorted(np.unique(m1).tolist()) == [0, 3, 255]
    assert np.array_equal(np.asarray(Image.open(out / "SegmentationClassAug/2008_000010.png")), mask(16))
    labels = np.load(out / "voc_1h_labels_train.npy")
    assert labels.dtype == np.float64 and labels.shape == (4, 20)
    assert [np.flatnonzero(r).tolist() for r in labels] == [[3 - 1], [15 - 1], [16 - 1], [20 - 1]]
    assert [np.flatnonzero(r).tolist() for r in np.load(out / "voc_1h_labels_val.npy")] == [[8 - 1], [12 - 1]]
    assert (out / f"JPEGImages/{UNLISTED}.jpg").is_file()  # the whole JPEGImages folder is moved
    assert not (out / prepare.STAGING).exists()  # staging and downloads removed
    assert "splits/train_aug.txt: DIFFERS from the published list" in stdout  # a 4-image list is not the real one

    with Server({}) as empty:  # a second run finds the finished layout: it only checks, nothing is requested
        code, _, err = run(capsys, "data", "prepare", "voc", "--out", str(out), "--mirror", empty.url, "--quick")
    assert code == 0 and "already prepared" in err and empty.requests == []

    code, stdout, err = run(capsys, "data", "check", "--root", str(out), "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert {s: r["count"] for s, r in report["splits"].items()} == {"train": 4, "val": 2}
    counts = report["splits"]["train"]["class_counts"]
    assert (counts["bird"], counts["car"], counts["tvmonitor"]) == (1, 0, 1)  # car only in the unused SBD mask


def test_prepare_voc_refuses_a_corrupt_archive_and_keeps_nothing_half_written(tmp_path, capsys, monkeypatch):
    files = voc_archives()
    use_archives(monkeypatch, "VOC_ARCHIVES", files)
    sbd_name = prepare.VOC_ARCHIVES["sbd"].filename
    good = prepare.VOC_ARCHIVES["sbd"].md5
    corrupt = bytearray(files[sbd_name])
    corrupt[len(corrupt) // 2] ^= 0xFF
    files[sbd_name] = bytes(corrupt)
    downloads = tmp_path / "archives"
    with Server(files) as srv:
        code, _, err = run(
            capsys, "data", "prepare", "voc", "--out", str(tmp_path / "voc"), "--mirror", srv.url,
            "--downloads", str(downloads),
        )  # fmt: skip
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"wilson-ray: error: {sbd_name}: MD5 {md5(bytes(corrupt))}, expected {good} (corrupt or wrong archive); "
        "the download was deleted: run the command again to fetch it anew"
    )
    assert sorted(p.name for p in downloads.iterdir()) == [prepare.VOC_ARCHIVES["voc"].filename]  # verified one only
    assert not (tmp_path / "voc" / "splits").exists()


def test_fetch_gives_up_with_a_resumable_part_and_names_unreachable_urls(tmp_path, monkeypatch):
    data = bytes(range(256)) * 40
    archive = Archive("a.bin", "http://example.invalid/a.bin", md5(data))
    lines = []
    with Server({"a.bin": data}, drop_once={"a.bin"}) as srv:
        with pytest.raises(UserError, match=r"download incomplete after 1 attempts \(4,096 bytes"):
            download.fetch(archive, tmp_path, srv.url, retries=0, log=lines.append)
        assert (tmp_path / "a.bin.part").stat().st_size == len(data) * 2 // 5
        path = download.fetch(archive, tmp_path, srv.url, retries=0, log=lines.append)  # the next run resumes
    assert path.read_bytes() == data and not (tmp_path / "a.bin.part").exists()
    assert srv.requests == [("a.bin", None), ("a.bin", f"bytes={len(data) * 2 // 5}-")]
    assert download.fetch(archive, tmp_path, "http://127.0.0.1:9") == path  # verified local copy: no request
    with pytest.raises(UserError, match=r"http://127.0.0.1:9/b.bin: cannot connect"):
        download.fetch(Archive("b.bin", "", None), tmp_path, "http://127.0.0.1:9", log=lines.append)


def test_prepare_coco_builds_the_layout_coco_py_reads(tmp_path, capsys, monkeypatch):
    stuff = {}
    images = {}
    for subset, ids, thing in (
        ("train2017", ["000000000009", "000000000025"], (0, 17)),
        ("val2017", ["000000000139"], (62,)),
    ):
        archive = {}
        for n, i in enumerate(ids):
            archive[f"{subset}/{i}.jpg"] = jpeg(n + 10)
            m = np.full((10, 12), 120, dtype=np.uint8)  # a stuff value -> background
            m[2:7, 3:9] = thing[n % len(thing)]
            m[-1, :] = 255
            buf = io.BytesIO()
            Image.fromarray(m, mode="L").save(buf, format="PNG")
            stuff[f"{subset}/{i}.png"] = buf.getvalue()
        images[f"{subset}.zip"] = zip_bytes(archive)
    files = {**images, "stuffthingmaps_trainval2017.zip": zip_bytes(stuff)}
    use_archives(monkeypatch, "COCO_ARCHIVES", files, {"stuffthingmaps_trainval2017.zip": None})
    out = tmp_path / "coco"
    with Server(files) as srv:
        code, stdout, err = run(capsys, "data", "prepare", "coco", "--out", str(out), "--mirror", srv.url, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert {s: r["count"] for s, r in report["splits"].items()} == {"train": 2, "val": 1}
    assert (out / "split/train.txt").read_text() == "000000000009\n000000000025\n"
    labels = np.load(out / "1h_labels_train.npy")
    assert labels.shape == (2, 91)
    # stuffthingmaps value v (thing) is COCO id v + 1: column v
    assert [np.flatnonzero(r).tolist() for r in labels] == [[0], [17]]
    assert np.flatnonzero(np.load(out / "1h_labels_val.npy")[0]).tolist() == [62]
    converted = np.asarray(Image.open(out / "annotations/train2017/000000000025.png"))
    assert sorted(np.unique(converted).tolist()) == [0, 18, 255]
