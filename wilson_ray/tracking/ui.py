"""``wilson-ray ui``: the MLflow UI of a sweep (and optuna-dashboard when installed), started on 127.0.0.1.

The servers are the venv's own (``<python> -m mlflow server``, ``<python> -m optuna_dashboard``), so the command
works from any shell, activated venv or not. It waits until each server answers, prints the URL of the sweep's
runs (MLflow's experiment page with the stored view, not MLflow's landing page) and keeps them running until
Ctrl-C, then stops both.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from wilson_ray.errors import UserError
from wilson_ray.tracking.mlflow_tracker import VIEW_KEY, check_tracking_uri, default_tracking_uri


@dataclass
class Server:
    name: str
    url: str
    process: subprocess.Popen


def dashboard_installed() -> bool:
    return importlib.util.find_spec("optuna_dashboard") is not None


def install_hint(package: str = "optuna-dashboard>=0.21") -> str:
    """How to install ``package`` into this very environment (a bare ``pip`` may be another one)."""
    return f"{sys.executable} -m pip install '{package}'"


def mlflow_command(uri: str, port: int, host: str = "127.0.0.1") -> list[str]:
    """One light MLflow server process (no job runner, one worker) on ``uri``."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def dashboard_command(storage_url: str, port: int, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "optuna_dashboard", storage_url, "--host", host, "--port", str(port)]


def experiment_url(base: str, uri: str, experiment: str) -> str:
    """The runs page of ``experiment`` with the sweep's stored view (the trials under their sweep run, the swept
    values and mIoU as columns); the bare address when the experiment is not there yet."""
    try:
        from mlflow.tracking import MlflowClient

        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception:  # noqa: BLE001 - only a nicer URL
        exp = None
    if exp is None:
        return base
    return f"{base}/#/experiments/{exp.experiment_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"


def _wait_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"ui: {' '.join(map(str, process.args[:4]))} exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    raise UserError(f"ui: {url} did not answer within {timeout:.0f} s")


def start(argv: list[str], url: str, health: str, name: str, log: Path, timeout: float = 120.0) -> Server:
    """Start one server (output to ``log``), wait until ``health`` answers."""
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")  # noqa: SIM115 - the server writes to it for its whole life
    process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_http(health, process, timeout)
    except BaseException:
        stop([Server(name, url, process)])
        raise
    return Server(name, url, process)


def stop(servers: list[Server]) -> None:
    for s in servers:
        if s.process.poll() is None:
            os.killpg(s.process.pid, signal.SIGTERM)
    for s in servers:
        try:
            s.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(s.process.pid, signal.SIGKILL)
            s.process.wait()


def open_ui(
    storage: str | Path,
    name: str | None,
    tracking_uri: str | None = None,
    port: int = 5000,
    dashboard_port: int = 8080,
    dashboard: bool = True,
    host: str = "127.0.0.1",
    log=print,
) -> list[Server]:
    """Start the servers for the sweeps under ``storage`` (``name``: the experiment page and study of one sweep)
    and return them running; the caller stops them with ``stop``."""
    from wilson_ray.orchestration import results as R

    storage = Path(storage).expanduser().resolve()
    sweep = R.read_sweep(storage, name) if name else None
    if name and sweep is None:
        raise UserError(f"--name: no sweep '{name}' under {storage} (no {R.sweep_dir(storage, name) / R.SWEEP_FILE})")
    recorded = (sweep or {}).get("tracking_uri")
    if tracking_uri:
        uri = check_tracking_uri(tracking_uri)
    elif recorded and "***" not in recorded:  # a recorded URL with its password redacted cannot be reopened
        uri = recorded
    else:
        uri = default_tracking_uri(storage)
    if uri.startswith(("http://", "https://")):
        raise UserError(f"--tracking-uri: {uri} is already an MLflow server; open it in a browser")
    servers: list[Server] = []
    try:
        _start_servers(servers, storage, name, sweep, uri, host, port, dashboard_port, dashboard, log)
    except BaseException:  # Ctrl-C or an error while the second one starts: the first one must not outlive us
        stop(servers)
        raise
    return servers


def _start_servers(servers, storage, name, sweep, uri, host, port, dashboard_port, dashboard, log) -> None:
    """MLflow's server, then optuna-dashboard's where it applies, each appended to ``servers`` once it answers."""
    from wilson_ray.orchestration import results as R

    logs = storage / "ui-logs"
    base = f"http://{host}:{port}"
    servers.append(start(mlflow_command(uri, port, host), base, f"{base}/health", "MLflow", logs / "mlflow.log"))
    log(f"MLflow:  {experiment_url(base, uri, name) if name else base}   (store {uri}; log {logs / 'mlflow.log'})")
    study = (sweep or {}).get("optuna_storage")
    if name and study is None:
        study = f"sqlite:///{R.sweep_dir(storage, name) / 'optuna.db'}"
    if dashboard and study and "***" not in study:
        if dashboard_installed():
            url = f"http://{host}:{dashboard_port}"
            try:
                servers.append(
                    start(dashboard_command(study, dashboard_port, host), url, url, "optuna", logs / "optuna.log")
                )
                log(f"Optuna:  {url}/dashboard   (study {name}; log {logs / 'optuna.log'})")
            except UserError as err:
                log(f"Optuna:  not started ({err})")
        else:
            log(f"Optuna:  optuna-dashboard is not installed; to add it: {install_hint()}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def serve_until_interrupted(servers: list[Server], log=print) -> int:
    """Block until Ctrl-C or SIGTERM (or a server exits), then stop every server."""
    # Both signals are taken explicitly: a process started with SIGINT ignored (a background job of a script, a
    # child of a process that ignores it) would otherwise never see Ctrl-C, and a SIGTERM would leave the servers
    # running in their own sessions.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Printed inside the try: a signal sent the moment this line is read (a script, a test) lands in the
        # handler's KeyboardInterrupt below, not in the caller's (which exits 130).
        log("Ctrl-C stops the servers.")
        while all(s.process.poll() is None for s in servers):
            time.sleep(0.5)
        gone = [s.name for s in servers if s.process.poll() is not None]
        log(f"ui: {', '.join(gone)} exited; stopping the others")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(servers)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
