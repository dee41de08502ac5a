"""Tracking: MLflow runs (parent per sweep, child per trial), per-epoch metrics, artifacts and plots.

The only package that imports ``mlflow`` (lazily, inside functions). ``plots`` draws with matplotlib only.
"""

from wilson_ray.tracking.mlflow_tracker import (
    SweepRun,
    TrackingInfo,
    TrialTracker,
    check_tracking_uri,
    default_artifact_location,
    default_tracking_uri,
    is_local_store,
    sweep_runs,
    ui_command,
)

__all__ = [
    "SweepRun",
    "TrackingInfo",
    "TrialTracker",
    "check_tracking_uri",
    "default_artifact_location",
    "default_tracking_uri",
    "is_local_store",
    "sweep_runs",
    "ui_command",
]
