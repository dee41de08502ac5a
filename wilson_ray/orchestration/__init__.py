"""Orchestration on Ray: the sweep driver (``tune_driver``), the trial function (``trial``), how trials ended
(``outcome``), cluster checks (``cluster``), the typed trial settings (``settings``), the TorchTrainer / direct
worker loop (``train_loop``), search spaces (``search_space``), the sweep folder (``results``), the private
Ray/Optuna shims (``compat``) and the fault-test kill points (``kill_points``).

This package is the only one that imports ``ray``. Its modules import it lazily (inside functions) where they
are also useful without a cluster, so ``wilson_ray.orchestration.search_space`` loads and validates a search space in a
plain process, in milliseconds.
"""
