"""``wilson-ray sweep`` and ``wilson-ray best``: hyperparameter sweeps on Ray Tune (Optuna + ASHA; a trial with
several workers is a TorchTrainer run, a single-worker trial trains in its Tune process), tracked in MLflow.

    wilson-ray sweep --space search_spaces/demo.yaml [--num-samples N] [--workers-per-trial K]
                     [--gpus-per-worker G] [--storage PATH] [--tracking-uri URI] [--address auto|URI]
                     [--name NAME] [--data-root DIR] [--set KEY=VALUE ...] [--trainer auto|torch|direct]
                     [--optuna-storage URL]
    wilson-ray best --storage PATH --name NAME [--out best.yaml]

Running the same ``sweep`` command again resumes the sweep (finished trials are kept, running ones resume from
their last epoch checkpoint) instead of starting over, so a resubmitted ``ray job`` finishes what is left.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wilson_ray.config import parse_overrides
from wilson_ray.errors import UserError

DEFAULT_STORAGE = "runs/sweeps"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="sweep hyperparameters of one incremental step on Ray Tune (Optuna + ASHA), tracked in MLflow",
        description="Sweep a search space (search_spaces/*.yaml): every trial trains one incremental step on "
        "--workers-per-trial Ray Train workers (one worker: in the trial's own process, --trainer); "
        "Optuna TPE proposes, ASHA stops weak trials early. "
        "Re-running the same command resumes the sweep.",
    )
    p.add_argument("--space", required=True, help="search-space YAML, e.g. search_spaces/demo.yaml")
    p.add_argument("--num-samples", type=int, help="number of trials (default: the space's search.num_samples)")
    p.add_argument(
        "--workers-per-trial",
        type=int,
        help="workers per trial: > 1 is a Ray Train TorchTrainer (default: the space's)",
    )
    p.add_argument("--gpus-per-worker", type=float, help="GPUs per worker, 0 for CPU/gloo (default: the space's)")
    p.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (default: the space's, usually 1)")
    p.add_argument(
        "--trainer",
        choices=("auto", "torch", "direct"),
        help="how a trial trains: torch = a Ray Train TorchTrainer, direct = in the Tune trial's own "
        "process (1 worker only), auto = direct for 1 worker per trial (default: the space's, auto)",
    )
    p.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        help=f"folder for the sweep, its MLflow store and step cache (default: {DEFAULT_STORAGE}; "
        "use an absolute or shared path on a cluster)",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: sqlite:///<storage>/mlflow.db); e.g. http://127.0.0.1:5000",
    )
    p.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="Optuna study storage (default: sqlite:///<storage>/<name>/optuna.db); on a cluster e.g. "
        "postgresql://user@db-host:5432/optuna (password from PGPASSWORD or ~/.pgpass)",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow (results stay in --storage)")
    p.add_argument(
        "--address",
        help="Ray cluster to join: auto, or ray://host:10001 / host:6379 (default: $RAY_ADDRESS, else a local cluster)",
    )
    p.add_argument("--num-cpus", type=int, help="logical CPUs of the local cluster (default: this machine's)")
    p.add_argument("--name", help="sweep name (default: the space's name); the same name resumes")
    p.add_argument("--data-root", help="dataset folder (overrides data.root)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base config field for every trial, e.g. --set incremental.epochs=2",
    )
    p.add_argument("--seed", type=int, help="Optuna TPE seed (default: the space's search.seed)")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines, only the plan and the final summary")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also Ray's worker output and Tune's status table on the console (default: in each "
        "trial's folder, trials/<id>/trial.log and worker-<rank>.log)",
    )
    p.set_defaults(func=cmd_sweep)

    r = subparsers.add_parser(
        "report",
        help="an HTML report (and PNGs) of a sweep: curves, search, best trial",
        description="Write <storage>/<name>/report/report.html (images inlined) and its PNGs: "
        "learning curves with the ASHA stops, parallel coordinates and parameter "
        "importances (Optuna), best-so-far against trial-epochs, the best trial's "
        "per-class IoU and prediction overlays.",
    )
    r.add_argument("--storage", default=DEFAULT_STORAGE, help=f"the sweep's --storage (default: {DEFAULT_STORAGE})")
    r.add_argument("--name", required=True, help="the sweep's name")
    r.add_argument("--out", help="output folder (default: <storage>/<name>/report)")
    r.add_argument(
        "--optuna-storage",
        metavar="URL",
        help="the study's URL with its password, where the sweep used a server (default: the URL the "
        "sweep recorded, password from PGPASSWORD or ~/.pgpass; else <storage>/<name>/optuna.db)",
    )
    r.set_defaults(func=cmd_report)

    b = subparsers.add_parser(
        "best",
        help="export the best trial's full config of a sweep as YAML",
        description="Write the best trial's full resolved config (a file `wilson-ray train "
        "--config` reads) of a finished or running sweep.",
    )
    b.add_argument("--storage", default=DEFAULT_STORAGE, help=f"the sweep's --storage (default: {DEFAULT_STORAGE})")
    b.add_argument("--name", required=True, help="the sweep's name")
    b.add_argument("--out", default="best.yaml", help="output YAML (default: best.yaml)")
    b.set_defaults(func=cmd_best)

    u = subparsers.add_parser(
        "ui",
        help="start the MLflow UI (and optuna-dashboard when installed) of the sweeps on 127.0.0.1",
        description="Start one MLflow server on the sweeps' store (the venv's own, bound to 127.0.0.1) and, for "
        "--name, optuna-dashboard on its study when it is installed; print the URLs; Ctrl-C stops them.",
    )
    u.add_argument("--storage", default=DEFAULT_STORAGE, help=f"the sweeps' --storage (default: {DEFAULT_STORAGE})")
    u.add_argument("--name", help="a sweep: print its runs page and open its Optuna study")
    u.add_argument(
        "--tracking-uri", help="the MLflow store (default: the one the sweep recorded, else <storage>/mlflow.db)"
    )
    u.add_argument("--port", type=int, default=5000, help="MLflow's port (default: 5000)")
    u.add_argument("--dashboard-port", type=int, default=8080, help="optuna-dashboard's port (default: 8080)")
    u.add_argument("--no-dashboard", action="store_true", help="do not start optuna-dashboard")
    u.set_defaults(func=cmd_ui)


def _extra(args: argparse.Namespace) -> dict:
    extra = parse_overrides(args.set)
    if args.data_root:
        extra["data.root"] = str(Path(args.data_root).expanduser().resolve())
    return extra


def cmd_sweep(args: argparse.Namespace) -> int:
    from wilson_ray.phases import PhaseRecorder

    phases = PhaseRecorder()  # the driver's start phases -> <sweep folder>/startup.json (tune_driver.STARTUP_PHASES)
    phases.mark("cli")
    from wilson_ray.orchestration.search_space import load_search_space
    from wilson_ray.tracking.mlflow_tracker import check_tracking_uri

    for flag, value in (
        ("--num-samples", args.num_samples),
        ("--workers-per-trial", args.workers_per_trial),
        ("--num-cpus", args.num_cpus),
    ):
        if value is not None and value < 1:
            raise UserError(f"{flag}: {value}, expected a positive integer")
    for flag, value in (("--gpus-per-worker", args.gpus_per_worker), ("--cpus-per-worker", args.cpus_per_worker)):
        if value is not None and value < 0:
            raise UserError(f"{flag}: {value}, expected a number >= 0")
    if args.tracking_uri and not args.no_mlflow:
        check_tracking_uri(args.tracking_uri)
    if args.optuna_storage:
        from wilson_ray.orchestration.backends import check_optuna_storage

        check_optuna_storage(args.optuna_storage)
    extra = _extra(args)
    space = load_search_space(args.space, extra)
    phases.mark("space")
    if args.name is not None and not args.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"--name: {args.name!r} has characters other than letters, digits, '-', '_', '.'")

    from wilson_ray.orchestration.tune_driver import SweepOptions, print_outcome, run_sweep

    phases.mark("driver_imports")
    opts = SweepOptions(
        space=space,
        storage=Path(args.storage),
        name=args.name,
        num_samples=args.num_samples,
        workers_per_trial=args.workers_per_trial,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        trainer=args.trainer,
        tracking_uri=args.tracking_uri,
        tracking=not args.no_mlflow,
        optuna_storage=args.optuna_storage,
        address=args.address,
        num_cpus=args.num_cpus,
        extra=extra,
        verbose=2 if args.verbose else 0 if args.quiet else 1,
        seed=args.seed,
        phases=phases,
    )
    if not args.verbose:
        quiet_python_warnings()
    sys.stdout.reconfigure(line_buffering=True)  # one line per trial event, also into a log file or a pipe
    outcome = run_sweep(opts)
    print_outcome(outcome)
    return 130 if outcome.interrupted else 0


def quiet_python_warnings() -> None:
    """No third-party deprecation/future/user warnings on the sweep's console (a user cannot act on them);
    --verbose keeps them. Ray workers inherit it through PYTHONWARNINGS."""
    import logging
    import os
    import warnings

    for name in ("mlflow", "alembic", "optuna"):  # "Creating initial MLflow database tables...", trial finished
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # mlflow sets its loggers' level on import
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning,ignore::UserWarning")


def cmd_report(args: argparse.Namespace) -> int:
    from wilson_ray.orchestration.report import build_report

    path = build_report(args.storage, args.name, args.out, args.optuna_storage)
    print(f"report: {path}")
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from wilson_ray.orchestration.results import export_best

    path, row = export_best(args.storage, args.name, args.out)
    metrics = ", ".join(
        f"{k} {row[k]:.2f}" for k in ("miou_old", "miou_new", "miou_all") if isinstance(row.get(k), (int, float))
    )
    print(f"best trial {row['trial']} ({metrics}): wrote {path}")
    from wilson_ray.tracking.mlflow_tracker import venv_command

    print(f"reproduce: {venv_command('wilson-ray')} train --config {path}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from wilson_ray.tracking import ui

    servers = ui.open_ui(
        args.storage,
        args.name,
        args.tracking_uri,
        port=args.port,
        dashboard_port=args.dashboard_port,
        dashboard=not args.no_dashboard,
    )
    return ui.serve_until_interrupted(servers)
