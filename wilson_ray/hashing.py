"""The one hash recipe of wilson-ray: step-cache keys, pass-cache keys, pseudo-mask keys and sweep fingerprints
all hash a nested mapping (or a ``Config`` through its ``to_dict``) the same way.

A leaf module (no wilson-ray imports), so every layer that keys a cache entry can use it.
"""

from __future__ import annotations

import hashlib
import json
import typing
from typing import Any


def config_hash(
    obj: Any,
    *,
    sections: typing.Iterable[str] | None = None,
    drop: dict[str, typing.Iterable[str]] | None = None,
    length: int = 16,
) -> str:
    """The one config hash: sha256 of the sorted-key JSON of ``obj`` (a mapping, or a ``Config``, hashed as its
    ``to_dict``), keeping only the top-level ``sections`` when given and removing ``drop[section]`` fields from
    each section; the first ``length`` hex digits. Values JSON cannot write are hashed as ``str(value)``."""
    d = obj if isinstance(obj, dict) else obj.to_dict()
    if sections is not None:
        d = {k: d[k] for k in sections}
    if drop:
        d = {
            k: ({f: v for f, v in sec.items() if f not in set(drop[k])} if k in drop and isinstance(sec, dict) else sec)
            for k, sec in d.items()
        }
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:length]


__all__ = ["config_hash"]
