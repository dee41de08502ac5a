"""What a user sees in a browser after a sweep (issue 29): headless Chromium on the MLflow UI started by
``wilson-ray ui`` and on the sweep report. The sweep is a small fake one (four trial records, one stopped by ASHA)
uploaded by the real tracker; no Ray. Skipped, with the reason, where Debian's ``chromium`` is not installed
(``.ci/run`` installs it)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ports import free_port

from tests.sweeps.test_sweep_report import fake_sweep
from wilson_ray.orchestration import results as R
from wilson_ray.orchestration.report import build_report
from wilson_ray.tracking.mlflow_tracker import SweepRun, TrackingInfo, TrialTracker, default_tracking_uri, share_view

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)"
)


def dom(url: str, budget_ms: int = 20000, screenshot: Path | None = None) -> str:
    """The page's DOM after its scripts ran (Chromium's virtual time lets the single-page apps render)."""
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--virtual-time-budget={budget_ms}"]
    if screenshot is not None:
        subprocess.run(
            [*base, "--window-size=1500,1000", f"--screenshot={screenshot}", url],
            capture_output=True,
            timeout=120,
        )
    out = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    return out.stdout


@pytest.fixture
def tracked_sweep(tmp_path):
    storage, name = fake_sweep(tmp_path)
    uri = default_tracking_uri(storage)
    info = TrackingInfo(uri=uri, experiment=name, sweep=name)
    parent = SweepRun(info)
    parent.open()
    for rec in R.records(storage, name):
        assert TrialTracker(info, rec).sync()
    rows = R.trial_rows(storage, name)
    best = R.best_row(rows, "miou_hm", "max")
    parent.finish({"miou_hm": best["miou_hm"]}, [], tags={"outcome": "sweep: 4 trials"})
    share_view(info, info.parent_run_id, ["lr", "alpha"], ["miou_hm", "miou_old", "miou_new"])
    return storage, name


def stop_ui(proc: subprocess.Popen, storage: Path, timeout: float = 30) -> None:
    """Ctrl-C the ``wilson-ray ui`` process; it must stop its servers and exit within ``timeout`` s. When it does
    not, the failure says what it printed and what the MLflow server logged last (did it get its SIGTERM?)."""
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout)
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-f", f"backend-store-uri sqlite:///{storage}"], check=False)  # its own session
        out = proc.communicate(timeout=30)[0] or ""
        log = storage / "ui-logs" / "mlflow.log"
        tail = log.read_text(errors="replace").splitlines()[-5:] if log.is_file() else []
        pytest.fail(
            f"wilson-ray ui did not exit within {timeout:.0f} s of Ctrl-C; it printed {out[-1500:]!r}; "
            f"mlflow.log ends {tail!r}"
        )


def test_mlflow_ui_shows_trials_and_the_stopped_marker(tracked_sweep, tmp_path):
    storage, name = tracked_sweep
    port = free_port()
    cmd = [sys.executable, "-m", "wilson_ray", "ui", "--storage", str(storage), "--name", name, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        url = None
        deadline = time.monotonic() + 180
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "wilson-ray ui exited early"
            m = re.search(r"MLflow:\s+(http://127\.0\.0\.1:\d+/\S+)", line)
            url = m.group(1) if m else None
        assert url and "#/experiments/" in url and "viewStateShareKey=wilson-ray" in url, url
        page = dom(url, screenshot=tmp_path / "mlflow_experiment.png")
        # the sweep's run with its 4 trials nested under it: 5 runs
        assert "<strong>5</strong> matching runs" in page and ">sw</" in page
        assert (tmp_path / "mlflow_experiment.png").stat().st_size > 10_000
        from mlflow.tracking import MlflowClient

        runs = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}").search_runs(["1"])
        by_trial = {r.data.tags.get("wilson_ray.trial_id"): r for r in runs}
        base = url.split("/#/")[0]
        stopped = dom(f"{base}/#/experiments/1/runs/{by_trial['t3'].info.run_id}")
        # the ASHA-stopped trial: its status, the short outcome column and why, on its page
        assert "trial_t3" in stopped and "Killed" in stopped and "stopped@2" in stopped
        assert "stopped by ASHA at the epoch-2 rung" in stopped
        done = dom(f"{base}/#/experiments/1/runs/{by_trial['t2'].info.run_id}", screenshot=tmp_path / "trial.png")
        assert "trial_t2" in done and "Finished" in done and "completed" in done and "Killed" not in done
    finally:
        stop_ui(proc, storage)
    assert proc.returncode == 0  # Ctrl-C stops the servers cleanly


def test_report_page_has_a_figure_per_section(tmp_path):
    storage, name = fake_sweep(tmp_path)
    report = build_report(storage, name)
    page = dom(report.as_uri(), budget_ms=3000)
    sections = re.split(r"<h2>", page)[1:]
    titles = [s.split("</h2>", 1)[0] for s in sections]
    assert titles[:3] == ["Trials", "Learning curves", "Search"], titles
    by_title = dict(zip(titles, sections))
    assert by_title["Trials"].count("<tr") == 5  # header + 4 trials
    assert "stopped by ASHA" in by_title["Trials"]
    assert by_title["Learning curves"].count("<img") == 1
    assert by_title["Search"].count("<img") == 3  # parallel coordinates, importances, best so far
    assert "too few" in by_title["Search"] or "rough hint" in by_title["Search"]  # 3 completed trials < 10
