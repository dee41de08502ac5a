"""Deterministic kill points for the fault-tolerance tests (no effect unless the test environment asks).

``WILSON_RAY_TEST_KILL_AT=<point>`` and ``WILSON_RAY_TEST_KILL_MARKER=<file>``: the first process of the sweep that
reaches ``<point>`` creates ``<file>`` and then blocks, so nothing after the point happens; the test waits for the
file and SIGKILLs the sweep's whole session (driver, local cluster, trials), like a lost job. The marker is
created with ``O_EXCL``: the point fires once per sweep run, however many trials pass it. Ray's local cluster
inherits the driver's environment, so trial processes see the same variables. Points:

``first_report``    a trial's record and MLflow run exist, its step is about to train: nothing reported yet
``mid_epoch``       epoch 1 reported (record, MLflow, Tune checkpoint), epoch 2 not: no state is written inside
                    an epoch, so this stands for every moment within epoch 2
``trial_end``       the driver has handled a trial's completion (outcome written, Optuna told); the next trial
                    is not created yet
``next_trial_start`` a trial started after another one ended (completed or stopped by ASHA): its record exists,
                    it has not trained
``confirm_trial_start`` the same for a trial of the seed confirmation stage (``confirm``)
``before_summary``  every trial finished (``Tuner.fit`` returned), the summary is not written
"""

from __future__ import annotations

import os
import time
from typing import Callable

ENV_POINT = "WILSON_RAY_TEST_KILL_AT"
ENV_MARKER = "WILSON_RAY_TEST_KILL_MARKER"
POINTS = ("first_report", "mid_epoch", "trial_end", "next_trial_start", "confirm_trial_start", "before_summary")


def kill_point(name: str, when: Callable[[], bool] | None = None) -> None:
    """Block forever at ``name`` after creating the marker file, when the test environment names this point
    (and ``when()``, evaluated only then, is true)."""
    if os.environ.get(ENV_POINT) != name or not os.environ.get(ENV_MARKER) or (when is not None and not when()):
        return
    try:
        fd = os.open(os.environ[ENV_MARKER], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return  # another process already stopped here; this one goes on until the test kills it
    os.write(fd, f"{name} {os.getpid()}\n".encode())
    os.close(fd)
    while True:  # the test SIGKILLs the session; a timeout there ends a hang here
        time.sleep(60)
