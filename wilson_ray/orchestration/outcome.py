"""Driver-side bookkeeping: how each trial ended, written to its record and synced to MLflow."""

from __future__ import annotations

from ray import tune

from wilson_ray.orchestration.kill_points import kill_point
from wilson_ray.orchestration.settings import SweepSettings
from wilson_ray.orchestration.trial import sync_record, trial_config_dict
from wilson_ray.sweep_record import TrialRecord, record_id


def one_line(err: BaseException) -> str:
    """The innermost ``Type: message`` line of a (wrapped) error, at most 500 characters."""
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # the innermost "Type: message" line of a wrapped traceback
        if ":" in ln and not ln.startswith(("File ", "Traceback", "^")):
            return ln[:500]
    return (lines[-1] if lines else type(err).__name__)[:500]


class TrialOutcomeCallback(tune.Callback):
    """Records how each trial ended (completed / stopped early by ASHA / failed + reason) and syncs MLflow."""

    def __init__(self, settings: SweepSettings):
        self.settings = settings

    def _record(self, trial) -> TrialRecord:
        trials = self.settings.trials_dir
        return TrialRecord(trials / record_id(trials, trial.trial_id))

    def on_trial_complete(self, iteration, trials, trial, **info):
        rec = self._record(trial)
        if rec.trial() is None:
            return
        epoch = float((trial.last_result or {}).get("epoch", 0) or 0)
        if rec.failure() is None:
            if rec.final() is not None:
                rec.set_outcome("completed")
            elif epoch < self.settings.epochs:
                rec.set_outcome("stopped_early", f"ASHA stopped it after epoch {int(epoch)}")
            else:
                rec.set_outcome("completed")
        sync_record(self.settings, rec)
        kill_point("trial_end")

    def on_trial_error(self, iteration, trials, trial, **info):
        rec = self._record(trial)
        if rec.trial() is None:
            values = {k: trial.config.get(k) for k in self.settings.space.keys}
            cfg = trial_config_dict(self.settings, values)
            rec.write_trial(rec.dir.name, str(trial), values, cfg, self.settings.step, self.settings.name)
        reason = rec.failure()
        if reason is None:
            err = None
            try:
                err = trial.get_error()
            except Exception:  # noqa: BLE001
                pass
            reason = one_line(err) if err is not None else "trial errored"
        rec.set_outcome("failed", reason)
        sync_record(self.settings, rec)
