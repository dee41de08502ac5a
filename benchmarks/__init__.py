"""Benchmarks of wilson-ray (issue 6): ``python -m benchmarks.step``, ``python -m benchmarks.data_pipeline``.

Results go to BENCHMARKS.md with the exact command, the machine and the date; see benchmarks/README.md.
"""
