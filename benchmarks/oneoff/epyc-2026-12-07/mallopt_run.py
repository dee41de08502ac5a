"""benchmarks.step with glibc's mallopt set first, as run.reuse_heap sets it (no mmap'd chunks, trim above 2 GiB)."""

import ctypes
import runpy
import sys

libc = ctypes.CDLL("libc.so.6")
assert libc.mallopt(-4, 0) == 1  # M_MMAP_MAX
assert libc.mallopt(-1, 2**31 - 1) == 1  # M_TRIM_THRESHOLD
sys.path.insert(0, ".")
sys.argv = ["benchmarks.step", *sys.argv[1:]]
runpy.run_module("benchmarks.step", run_name="__main__")
