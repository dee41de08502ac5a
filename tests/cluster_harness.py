"""Two hosts on one machine for the cluster test: Linux network namespaces joined by a veth pair
(198.18.0.1/24 head, 198.18.0.2/24 worker, from the range reserved for network tests; nothing outside the two
namespaces is ever contacted), and helpers to run the README's cluster recipe in them.

``Hosts`` creates the namespaces; ``Hosts.close()`` SIGKILLs every process left in them (Ray, PostgreSQL, MLflow,
the job client), deletes them (the veth pair goes with them) and removes the test's folder. Needs root and
iproute2 (``ip``). Run as ``python tests/cluster_harness.py collect ...`` inside the head namespace, this file also
reads back what a sweep left in MLflow, Optuna and Ray (the servers are only reachable there).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAD_IP, WORKER_IP = "198.18.0.1", "198.18.0.2"
IFACE = "eth0"


def have_netns() -> tuple[bool, str]:
    """Whether this process can make network namespaces (root and iproute2), and why not."""
    if os.geteuid() != 0:
        return False, "needs root (network namespaces)"
    if not shutil.which("ip"):
        return False, "needs iproute2 (`ip`)"
    return True, ""


def sh(*argv: str, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {out.returncode}: {out.stdout[-2000:]}{out.stderr[-2000:]}")
    return out


class Hosts:
    """Two network namespaces, ``head`` and ``worker``, joined by a veth pair."""

    def __init__(self, tag: str | None = None):
        tag = tag or str(os.getpid())
        self.head, self.worker = f"wrh{tag}", f"wrw{tag}"
        self.root = Path(tempfile.mkdtemp(prefix="wrcl-", dir="/tmp"))  # short: Ray's socket paths < 108 chars
        self.root.chmod(0o755)  # PostgreSQL (as nobody) reaches its data folder through it
        self.procs: list[subprocess.Popen] = []
        self.made: list[str] = []

    def up(self) -> "Hosts":
        try:
            for ns in (self.head, self.worker):
                sh("ip", "netns", "add", ns)
                self.made.append(ns)
            vh, vw = f"v{self.head}", f"v{self.worker}"  # <= 15 characters
            sh("ip", "link", "add", vh, "type", "veth", "peer", "name", vw)
            sh("ip", "link", "set", vh, "netns", self.head)
            sh("ip", "link", "set", vw, "netns", self.worker)
            for ns, dev, ip in ((self.head, vh, HEAD_IP), (self.worker, vw, WORKER_IP)):
                # each host's interface is eth0, as on two machines (names are per namespace)
                sh("ip", "-n", ns, "link", "set", dev, "name", IFACE)
                sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", IFACE)
                sh("ip", "-n", ns, "link", "set", IFACE, "up")
                sh("ip", "-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def run_in(ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def popen(self, ns: str, argv: list[str], log: Path, env: dict[str, str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(
            [*self.run_in(ns), *argv],
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            **kw,
        )
        self.procs.append(proc)
        return proc

    def pids(self, ns: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split() if p.strip().isdigit()]

    def kill_all(self, ns: str, timeout: float = 60) -> int:
        """SIGKILL every process in ``ns`` until none is left; returns how many were killed."""
        killed: set[int] = set()
        deadline = time.time() + timeout
        while True:
            pids = self.pids(ns)
            if not pids:
                return len(killed)
            if time.time() > deadline:
                raise RuntimeError(f"processes left in namespace {ns}: {pids}")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.3)

    def close(self) -> None:
        """Every process in the namespaces killed, the namespaces deleted, the folder removed; raises if anything
        of the test is left (after trying to remove all of it)."""
        problems = []
        for ns in self.made:
            try:
                self.kill_all(ns)
            except Exception as err:  # noqa: BLE001 - go on cleaning, report at the end
                problems.append(str(err))
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except Exception:  # noqa: BLE001
                problems.append(f"process {proc.pid} did not end")
        for ns in self.made:
            if sh("ip", "netns", "del", ns, check=False).returncode != 0:
                problems.append(f"ip netns del {ns} failed")
        self.made = []
        # Ray's processes carry the folder on their command line (--temp-dir, session paths): none may remain
        left = subprocess.run(["pgrep", "-f", str(self.root)], capture_output=True, text=True).stdout.split()
        for pid in left:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        if left:
            problems.append(f"processes of {self.root} outside the namespaces: {left}")
        shutil.rmtree(self.root, ignore_errors=True)
        if problems:
            raise RuntimeError("; ".join(problems))


def wait_for(
    predicate,
    timeout: float,
    what: str,
    interval: float = 1.0,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
):
    t0 = time.time()
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise AssertionError(f"{what}: the process exited ({proc.returncode}) first\n{tail}")
        if time.time() - t0 > timeout:
            tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------------------------
# Read-back, run inside the head namespace: python tests/cluster_harness.py <command> ...


def ray_placement(address: str) -> dict:
    """Alive Ray Train workers and the node address each runs on, and the nodes Ray knows (state API)."""
    from ray.util.state import list_actors, list_nodes

    nodes = {n.node_id: n for n in list_nodes(address=address, limit=100, raise_on_missing_output=False)}
    workers = [
        a
        for a in list_actors(
            address=address, filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False
        )
        if "TrainWorker" in (a.class_name or "")
    ]
    return {
        "workers": [
            {"class": a.class_name, "node_ip": nodes[a.node_id].node_ip if a.node_id in nodes else None, "pid": a.pid}
            for a in workers
        ],
        "nodes": [{"ip": n.node_ip, "state": n.state, "head": bool(n.is_head_node)} for n in nodes.values()],
    }


def collect(storage: str, name: str, tracking_uri: str, optuna_url: str) -> dict:
    """What the sweep left: Tune's trials, the summary, MLflow runs with each metric's epochs, Optuna trials."""
    import optuna
    from mlflow.tracking import MlflowClient

    sweep = Path(storage) / name
    newest = max(sweep.glob("experiment_state-*.json"))
    tune_trials = [json.loads(t[0])["trial_id"] for t in json.loads(newest.read_text())["trial_data"]]
    summary = json.loads((sweep / "summary.json").read_text())
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    runs = []
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        metrics = {k: [m.step for m in client.get_metric_history(r.info.run_id, k)] for k in r.data.metrics}
        runs.append(
            {
                "role": r.data.tags.get("wilson_ray.role"),
                "trial": r.data.tags.get("wilson_ray.trial_id"),
                "status": r.info.status,
                "metrics": metrics,
            }
        )
    from wilson_ray.sweep_record import TrialRecord
    from wilson_ray.tracking.mlflow_tracker import SKIP_METRICS, mlflow_metric

    # what each trial's record holds per epoch (the metrics MLflow must have once each, at that step; the tracker
    # leaves out the duplicate series it skips, e.g. iou_background = iou/background)
    recorded = {
        p.name: {
            e: sorted({mlflow_metric(k) for k in m if k not in SKIP_METRICS} | {"epoch"})
            for e, m in TrialRecord(p).epochs().items()
        }
        for p in (sweep / "trials").iterdir()
        if p.is_dir()
    }
    study = optuna.load_study(study_name=name, storage=optuna_url)
    return {
        "tune_trials": tune_trials,
        "summary": summary["trials"],
        "runs": runs,
        "optuna": [{"state": t.state.name, "params": t.params, "value": t.value} for t in study.trials],
        "records": sorted(recorded),
        "recorded": recorded,
    }


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    result = ray_placement(*args) if command == "placement" else collect(*args)
    print("RESULT " + json.dumps(result, default=str))
