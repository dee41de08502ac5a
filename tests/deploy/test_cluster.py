"""A real two-node cluster on one machine (README "Running on a cluster", step by step): two network namespaces
joined by a veth pair, a Ray head in one and a Ray worker node in the other, PostgreSQL holding the MLflow store
and the Optuna study, an MLflow tracking server on it, and a sweep submitted with ``scripts/submit_sweep.sh``
(``ray job submit``) whose 2-worker trials put one worker on each node (checked with Ray's state API). The
storage is one folder both nodes see, as NFS would be. Mid-trial the worker node is SIGKILLed (its raylet and
every worker) and started again; the sweep must finish with one MLflow run per trial, every epoch logged once per
metric, and one Optuna trial per Tune trial. Everything the test made is removed in the finalizer, also when it
fails.

Deterministic kill: the head's and the worker's raylets are started with ``WILSON_RAY_TEST_KILL_AT=mid_epoch``
(``orchestration.kill_points``; worker processes inherit their raylet's environment), so the first trial's rank-0
worker stops after epoch 1 is reported and recorded; the test sees the marker, checks the placement and kills the
worker node while the trial waits there. The restarted worker node runs without the kill point.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from pathlib import Path

import pytest
from cluster_harness import HEAD_IP, IFACE, WORKER_IP, Hosts, have_netns, sh, wait_for
from pg_server import PostgresServer, have_postgres

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]
NAME = "cluster"
TRIALS = 2
# tiny synthetic data and short trials: 2 epochs of 2 iterations per trial, step 0 one iteration
FAST = [
    "--set",
    "step0.epochs=1",
    "--set",
    "step0.max_iters_per_epoch=1",
    "--set",
    "incremental.epochs=2",
    "--set",
    "incremental.max_iters_per_epoch=2",
    "--set",
    "data.batch_size=4",
    "--set",
    "data.val_batch_size=8",
    "--set",
    "data.num_workers=0",
]


def _env(hosts: Hosts, token: str, **extra: str) -> dict[str, str]:
    """The environment of every process of the cluster: the venv first on PATH, a private HOME (nothing lands in
    the user's ~/.ray or ~/.cache), token authentication with one token for both nodes (as compose does)."""
    home = hosts.root / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "WILSON_RAY_TEST_", "PYTEST_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        HOME=str(home),
        # torch's gloo finds its address from the host name, which /etc/hosts maps to loopback
        GLOO_SOCKET_IFNAME=IFACE,
        XDG_CACHE_HOME=str(home / ".cache"),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        # processes that look for "the" cluster (Train's PlacementGroupCleaner uses the state API without
        # an address) would otherwise find every Ray instance of this machine, other users' included
        RAY_ADDRESS=f"{HEAD_IP}:6379",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        **extra,
    )
    return env


def _worker_argv(temp: str) -> list[str]:
    return [
        "ray",
        "start",
        "--address",
        f"{HEAD_IP}:6379",
        "--node-ip-address",
        WORKER_IP,
        "--num-cpus",
        "1",
        "--object-store-memory",
        str(150 * 1024**2),
        "--temp-dir",
        temp,
        "--disable-usage-stats",
    ]


def _ray_start(hosts: Hosts, ns: str, argv, env: dict[str, str], name: str, logs: Path, attempts: int = 3) -> None:
    """``ray start`` in ``ns``; on the machine's 2 shared cores a raylet can miss Ray's fixed 30 s registration
    window, so a failed start is cleaned up (every process of the namespace: only Ray runs there yet) and tried
    again with a fresh temp dir."""
    for attempt in range(1, attempts + 1):
        temp = str(hosts.root / f"{name}{attempt}")
        out = sh(*hosts.run_in(ns), *argv(temp), env=env, cwd=ROOT, timeout=300, check=False)
        (logs / f"{name}{attempt}.log").write_text(out.stdout + out.stderr)
        if out.returncode == 0:
            return
        if attempt == attempts or "timed out during startup" not in out.stdout + out.stderr:
            raise AssertionError(f"ray start in {ns} failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
        hosts.kill_all(ns)


def _in_head(hosts: Hosts, env: dict[str, str], *args: str, timeout: float = 180) -> dict:
    out = sh(
        *hosts.run_in(hosts.head),
        sys.executable,
        str(ROOT / "tests" / "cluster_harness.py"),
        *args,
        env=env,
        timeout=timeout,
        check=False,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def _alive_nodes(hosts: Hosts, env: dict[str, str]) -> list[str]:
    nodes = _in_head(hosts, env, "placement", f"http://{HEAD_IP}:8265")["nodes"]
    return sorted(n["ip"] for n in nodes if n["state"] == "ALIVE")


@pytest.fixture()
def hosts():
    ok, why = have_netns()
    if not ok:
        pytest.skip(f"the cluster test {why}")
    if not have_postgres():
        pytest.skip("the cluster test needs PostgreSQL (initdb, postgres) on the PATH")
    h = Hosts().up()
    try:
        yield h
    finally:
        h.close()  # raises if anything of the test survived
        listed = sh("ip", "netns", "list").stdout.split()
        assert h.head not in listed and h.worker not in listed, listed
        assert not h.root.exists()


@pytest.mark.timeout(1500)
def test_two_node_sweep_survives_a_killed_worker_node(hosts):
    t_start = time.time()
    token = secrets.token_hex(32)
    shared = hosts.root / "shared"  # the "NFS" folder: data, sweep storage, step cache, MLflow artifacts
    logs = hosts.root / "logs"
    for d in (shared, logs):
        d.mkdir()
    marker = shared / "worker-kill-point"
    # PostgreSQL on the head's address (started after Ray, below): the MLflow store and the Optuna study; its
    # folder is inside the test's (removed with it), its processes die with the namespace
    pg = PostgresServer(host=HEAD_IP, port=5432, prefix=hosts.run_in(hosts.head), root=hosts.root / "pg")
    # URLs without the password: libpq reads PGPASSWORD where the driver and the MLflow server run (the head)
    mlflow_db, optuna_url = pg.url("mlflow", password=False), pg.url("optuna", password=False)
    env = _env(hosts, token, PGPASSWORD=pg.password)
    kill_env = {**env, "WILSON_RAY_TEST_KILL_AT": "mid_epoch", "WILSON_RAY_TEST_KILL_MARKER": str(marker)}

    # Ray head (scripts/start_head.sh) and worker node, one CPU each: a 2-worker trial must span both
    _ray_start(
        hosts,
        hosts.head,
        lambda temp: [
            "bash",
            str(ROOT / "scripts" / "start_head.sh"),
            "--node-ip-address",
            HEAD_IP,
            "--temp-dir",
            temp,
            "--object-store-memory",
            str(150 * 1024**2),
        ],
        {**kill_env, "NUM_CPUS": "1", "DASHBOARD_HOST": HEAD_IP},
        "rh",
        logs,
    )
    _ray_start(hosts, hosts.worker, lambda temp: _worker_argv(temp), kill_env, "rw", logs)
    wait_for(lambda: _alive_nodes(hosts, env) == [HEAD_IP, WORKER_IP], 180, "both Ray nodes alive", interval=2)

    pg.start(timeout=180)
    # MLflow tracking server on it (scripts/mlflow_server.sh, the README's command)
    mlflow_log = logs / "mlflow.log"
    mlflow = hosts.popen(
        hosts.head,
        ["bash", str(ROOT / "scripts" / "mlflow_server.sh"), str(shared)],
        mlflow_log,
        {**env, "BACKEND_STORE_URI": mlflow_db, "MLFLOW_HOST": HEAD_IP, "MLFLOW_PORT": "5000"},
        cwd=ROOT,
    )
    tracking = f"http://{HEAD_IP}:5000"
    health = f"import urllib.request; urllib.request.urlopen('{tracking}/health', timeout=5)"
    wait_for(
        lambda: sh(*hosts.run_in(hosts.head), sys.executable, "-c", health, check=False).returncode == 0,
        300,
        "the MLflow server",
        interval=2,
        proc=mlflow,
        log=mlflow_log,
    )

    # tiny synthetic data on the shared folder
    sh(
        sys.executable,
        "-m",
        "wilson_ray",
        "data",
        "synth",
        "--out",
        str(shared / "data"),
        "--train",
        "24",
        "--val",
        "6",
        "--size",
        "64",
        timeout=300,
        env=env,
    )

    # the README's cluster command: scripts/submit_sweep.sh -> ray job submit ... wilson-ray sweep
    job_log = logs / "job.log"
    job = hosts.popen(
        hosts.head,
        [
            "bash",
            str(ROOT / "scripts" / "submit_sweep.sh"),
            "--space",
            "search_spaces/demo.yaml",
            "--data-root",
            str(shared / "data"),
            "--storage",
            str(shared / "sweeps"),
            "--name",
            NAME,
            "--tracking-uri",
            tracking,
            "--optuna-storage",
            optuna_url,
            "--num-samples",
            str(TRIALS),
            "--workers-per-trial",
            "2",
            "--quiet",
            *FAST,
        ],
        job_log,
        {**env, "RAY_JOB_ADDRESS": f"http://{HEAD_IP}:8265"},
        cwd=ROOT,
    )

    # the first trial's rank 0 has reported and recorded epoch 1 and waits at the kill point
    wait_for(marker.is_file, 900, "the first trial's epoch 1 (kill point)", interval=1, proc=job, log=job_log)
    placement = _in_head(hosts, env, "placement", f"http://{HEAD_IP}:8265")
    assert sorted(w["node_ip"] for w in placement["workers"]) == [HEAD_IP, WORKER_IP], placement

    # the worker node dies: its raylet, agents and every worker process, at once
    killed = hosts.kill_all(hosts.worker)
    assert killed >= 3, killed  # at least the raylet, an agent and the Train worker
    wait_for(lambda: _alive_nodes(hosts, env) == [HEAD_IP], 180, "Ray to see the worker node dead", interval=2)
    _ray_start(hosts, hosts.worker, lambda temp: _worker_argv(temp), env, "rw-restart", logs)  # a new node id

    # the restarted trial again spans both nodes, on the new worker node
    def placed_again():
        p = _in_head(hosts, env, "placement", f"http://{HEAD_IP}:8265")
        return sorted(w["node_ip"] for w in p["workers"]) == [HEAD_IP, WORKER_IP] or job.poll() is not None

    wait_for(placed_again, 600, "a 2-worker trial placed on both nodes after the restart", interval=2)

    rc = job.wait(timeout=900)
    out = job_log.read_text(errors="replace")
    assert rc == 0, out[-6000:]
    assert "succeeded" in out and "best trial" in out, out[-3000:]
    assert pg.password not in out, "the database password reached the job log"

    got = _in_head(hosts, env, "collect", str(shared / "sweeps"), NAME, tracking, optuna_url, timeout=300)
    # every trial finished; nothing finished is lost
    assert len(got["tune_trials"]) == TRIALS, got["tune_trials"]
    rows = got["summary"]
    assert len(rows) == TRIALS and all(r["outcome"] in ("completed", "stopped_early") for r in rows), rows
    assert sorted(r["trial"] for r in rows) == got["records"]
    # MLflow (PostgreSQL behind the server): one sweep run, exactly one run per trial, one value per epoch
    runs = got["runs"]
    assert sum(r["role"] == "sweep" for r in runs) == 1, runs
    children = [r for r in runs if r["role"] == "trial"]
    assert sorted(c["trial"] for c in children) == sorted(r["trial"] for r in rows), (children, rows)
    by_trial = {r["trial"]: r for r in rows}
    for c in children:
        epochs = int(by_trial[c["trial"]]["epochs"])
        recorded = {int(e): keys for e, keys in got["recorded"][c["trial"]].items()}
        stopped = by_trial[c["trial"]]["outcome"] == "stopped_early"
        assert c["status"] == ("KILLED" if stopped else "FINISHED"), c  # an ASHA stop ends KILLED in MLflow
        assert sorted(recorded) == list(range(1, epochs + 1)), (c["trial"], sorted(recorded))
        assert c["metrics"]["epoch"] == list(range(1, epochs + 1)), c
        for key in set(k for keys in recorded.values() for k in keys) | set(c["metrics"]):
            # every recorded epoch of every metric exactly once, nothing else (no final/* copy of the last epoch)
            want = [e for e in sorted(recorded) if key in recorded[e]]
            assert c["metrics"].get(key) == want, (c["trial"], key, c["metrics"].get(key), want)
    assert max(int(r["epochs"]) for r in rows) == 2  # a trial ran to its end (the killed one resumed)
    # Optuna (PostgreSQL): one finished trial per Tune trial, distinct parameters
    assert len(got["optuna"]) == TRIALS, got["optuna"]
    assert all(t["state"] in ("COMPLETE", "PRUNED") for t in got["optuna"]), got["optuna"]
    assert len({json.dumps(t["params"], sort_keys=True) for t in got["optuna"]}) == TRIALS
    print(f"cluster test: {time.time() - t_start:.0f} s, {killed} processes killed on the worker node")
