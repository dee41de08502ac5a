"""Orchestration on Ray: the TorchTrainer worker loop, the Tune driver (Optuna + ASHA), search spaces, restore.

This package is the only one that imports ``ray``. Its modules import it lazily (inside functions) where they
are also useful without a cluster, so ``wilson_ray.ray.search_space`` loads and validates a search space in a
plain process, in milliseconds.
"""
