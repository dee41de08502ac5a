"""Where a sweep keeps its Optuna study and its MLflow runs, and the one rule that keeps a cluster sweep safe:
no SQLite file written from several nodes.

SQLite locks with POSIX file locks, which NFS and the other network file systems do not honour reliably: two
nodes writing one ``mlflow.db`` on shared storage can corrupt it or lose runs. MLflow's store is written by the
rank-0 worker of every trial, wherever Ray placed it, so a SQLite MLflow store is refused when the sweep's storage
is not local. The Optuna study is written by the sweep driver only (one process on the head node), so a SQLite
study there gets a warning, not a refusal. "Not local" means: the Ray cluster has more than one alive node, or the
storage folder is on a network file system (``/proc/self/mountinfo``). Use PostgreSQL (``--optuna-storage
postgresql://...``, ``--tracking-uri postgresql://...``) or an MLflow server (``--tracking-uri http://...``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse, urlunparse

from wilson_ray.errors import UserError
from wilson_ray.tracking.mlflow_tracker import sqlite_file

OPTUNA_SCHEMES = ("sqlite", "postgresql", "mysql")
# File systems whose files other machines see (st_dev of a local disk or tmpfs is not among them)
NETWORK_FS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "lustre",
    "gpfs",
    "beegfs",
    "9p",
    "afs",
    "virtiofs",
    "fuse.sshfs",
    "fuse.glusterfs",
    "fuse.s3fs",
    "fuse.gcsfuse",
    "fuse.juicefs",
    "fuse.ceph",
    "fuse.lustre",
    "fuse.beegfs",
    "fuse.geesefs",
)


def _scheme(url: str) -> str:
    return urlparse(url).scheme.split("+")[0].lower()


def is_sqlite(url: str | None) -> bool:
    return bool(url) and _scheme(url) == "sqlite"


def _replace_password(url: str, password: str | None) -> str:
    """``url`` with its password (if it has one) replaced by ``password``, or dropped when that is None."""
    parts = urlparse(url)
    if parts.password is None:
        return url
    user = parts.username or "" if password is None else f"{parts.username}:{password}"
    netloc = f"{user}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunparse(parts._replace(netloc=netloc))


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for logs; the sweep still uses the real one)."""
    return _replace_password(url, "***")


def without_password(url: str) -> str:
    """``url`` with no password in it: libpq then takes it from ``PGPASSWORD`` or ``~/.pgpass``, as any client
    of a server would; used to reopen a study whose recorded URL was redacted."""
    return _replace_password(url, None)


def check_optuna_storage(url: str, flag: str = "--optuna-storage") -> str:
    """An SQLAlchemy URL Optuna's ``RDBStorage`` can open (sqlite file, PostgreSQL, MySQL), or a one-line error."""
    url = (url or "").strip()
    scheme = _scheme(url)
    if scheme not in OPTUNA_SCHEMES:
        raise UserError(
            f"{flag}: {redact(url)!r} has scheme {scheme or 'none'!r}, expected one of "
            f"{', '.join(s + '://' for s in OPTUNA_SCHEMES)} (e.g. "
            "postgresql://user@db-host:5432/optuna)"
        )
    if scheme == "sqlite" and sqlite_file(url) is None:
        raise UserError(f"{flag}: {url!r} is not a sqlite file URL, expected sqlite:////absolute/path/optuna.db")
    if scheme != "sqlite" and not urlparse(url).hostname:
        raise UserError(f"{flag}: {redact(url)!r} has no host, expected e.g. postgresql://user@db-host:5432/optuna")
    return url


def optuna_storage_url(url: str | None, sweep_path: Path) -> str:
    """The study's storage: ``url``, else a SQLite file in the sweep's folder (one writer: the driver)."""
    return url or f"sqlite:///{Path(sweep_path).resolve() / 'optuna.db'}"


def filesystem_type(path: str | Path, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The file system type of the mount holding ``path`` (the longest mount point above it), or None."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    target = Path(path).resolve()
    while not target.exists() and target != target.parent:
        target = target.parent
    best, best_type = "", None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        mount = fields[4].replace("\\040", " ")
        if (str(target) == mount or str(target).startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, best_type = mount, right.split()[0]
    return best_type


def storage_sharing(storage: str | Path, nodes: int, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """Why ``storage`` counts as shared between nodes (None: local to this machine)."""
    fs = filesystem_type(storage, mountinfo)
    if fs and (fs in NETWORK_FS or fs.split(".")[0] in NETWORK_FS):
        return f"it is on a {fs} file system"
    if nodes > 1:
        return f"the Ray cluster has {nodes} nodes"
    return None


def check_shared_sqlite(storage: str | Path, nodes: int, tracking_uri: str | None, optuna_url: str, log=print) -> None:
    """Refuse an MLflow SQLite store, and warn about a SQLite Optuna study, when the storage is not local."""
    why = storage_sharing(storage, nodes)
    if why is None:
        return
    if is_sqlite(tracking_uri):
        raise UserError(
            f"--tracking-uri: {tracking_uri} is a SQLite file that the trials on every node would "
            f"write, but the sweep is not local ({why}; SQLite's locks do not hold across machines); "
            "expected an MLflow server (--tracking-uri http://mlflow-host:5000) or "
            "--tracking-uri postgresql://user@db-host:5432/mlflow"
        )
    if is_sqlite(optuna_url):
        log(
            f"wilson-ray: warning: the Optuna study is a SQLite file ({sqlite_file(optuna_url)}) and the "
            f"sweep is not local ({why}); only this driver writes it, but use --optuna-storage "
            "postgresql://user@db-host:5432/optuna to share the study safely"
        )


def alive_nodes() -> int:
    """Alive nodes of the connected Ray cluster."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


__all__ = [
    "check_optuna_storage",
    "without_password",
    "optuna_storage_url",
    "check_shared_sqlite",
    "storage_sharing",
    "filesystem_type",
    "redact",
    "is_sqlite",
    "alive_nodes",
    "NETWORK_FS",
]
