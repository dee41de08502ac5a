"""Print ``uv pip install`` flags for the package sources pip is configured with.

uv ignores pip's configuration (pip.conf, PIP_* variables), so on a machine whose packages come from local
wheel folders or mirror indexes, ``make setup`` passes them on: find-links, index-url and extra-index-url, and
``--index-strategy unsafe-best-match`` so a package may come from any of them, as with pip. With no pip
configuration it prints nothing and uv uses PyPI.
"""

from __future__ import annotations

import shlex
import subprocess
import sys

FLAGS = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url"}


def main() -> int:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    flags: list[str] = []
    for line in out.splitlines():
        key, sep, value = line.partition("=")
        flag = FLAGS.get(key.rsplit(".", 1)[-1])
        if sep and flag:
            flags += [f"{flag}={v}" for v in value.strip().strip("'\"").split()]
    if flags:
        flags.append("--index-strategy=unsafe-best-match")
    print(" ".join(shlex.quote(f) for f in dict.fromkeys(flags)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
