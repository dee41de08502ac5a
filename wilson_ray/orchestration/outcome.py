"""Driver-side bookkeeping: how each trial ended, written to its record and synced to MLflow."""

from __future__ import annotations

from ray import tune

from wilson_ray.orchestration.kill_points import kill_point
from wilson_ray.orchestration.settings import SweepSettings
from wilson_ray.orchestration.trial import sync_record, trial_config_dict, trial_values
from wilson_ray.sweep_record import TrialRecord, explain_rung, record_id


def one_line(err: BaseException) -> str:
    """The innermost ``Type: message`` line of a (wrapped) error, at most 500 characters."""
    text = str(err).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):  # the innermost "Type: message" line of a wrapped traceback
        if ":" in ln and not ln.startswith(("File ", "Traceback", "^")):
            return ln[:500]
    return (lines[-1] if lines else type(err).__name__)[:500]


def write_summary(rec: TrialRecord) -> None:
    """``summary/``: the trial's learning curves and the per-class IoU of its last evaluation, drawn from the
    record by the driver, so every trial (one ASHA stopped too) has its figures in MLflow."""
    import sys
    import traceback

    from wilson_ray.atomic import atomic_write_text
    from wilson_ray.tracking import plots

    folder = rec.dir / "summary"
    try:
        epochs = rec.epochs()
        if not epochs:
            return
        trial = rec.trial() or {}
        plots.learning_curves_png({trial.get("trial_id", rec.dir.name): epochs}, folder / "curves.png")
        last = rec.last_eval()
        per_class = {k[4:]: v for k, v in last.items() if k.startswith("iou/")} or (
            (rec.final() or {}).get("per_class_iou") or {}
        )
        if per_class:
            new = new_classes(rec, trial, list(per_class))
            plots.iou_bar_png(
                per_class,
                folder / "iou_bar.png",
                new_classes=new,
                title=f"per-class IoU at epoch {max(epochs)} (trial {trial.get('trial_id')})",
            )
        atomic_write_text(folder / "done", "1")
    except Exception:  # noqa: BLE001 - a figure must not fail the sweep
        print("wilson-ray: warning: trial summary figures failed:\n" + traceback.format_exc(), file=sys.stderr)


def new_classes(rec: TrialRecord, trial: dict, names: list[str]) -> list[str]:
    """The classes among ``names`` that the trial's step adds (none at step 0): as its worker wrote them in
    ``final.json``, else (a trial ASHA stopped before its end) from the old classes its worker wrote into
    ``trial.json``; only a record older than both fields has its config resolved here."""
    step = int(trial.get("step") or 0)
    if step <= 0:
        return []
    recorded = (rec.final() or {}).get("new_classes")
    if recorded is not None:
        added = set(recorded)
        return [n for n in names if n in added]
    from wilson_ray.step_setup import added_classes

    old = trial.get("old_classes")
    if old is not None:
        return added_classes(names, old)
    from wilson_ray.config import config_from_dict
    from wilson_ray.step_setup import old_class_names

    return added_classes(names, old_class_names(config_from_dict(trial.get("config") or {}, "trial config"), step))


def stop_reason(rec: TrialRecord, epoch: int, settings: SweepSettings) -> str:
    """Why ASHA stopped the trial at ``epoch``, with the numbers of its decision when the scheduler recorded them."""
    head = f"stopped by ASHA at the epoch-{epoch} rung (of {settings.epochs})"
    decision = rec.rungs().get(epoch)
    if decision is None:
        return f"{head}: {settings.space.metric} below the cutoff of the results recorded there before it"
    return f"{head}: {explain_rung(decision)}"


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
                rec.set_outcome("stopped_early", stop_reason(rec, int(epoch), self.settings), rung=int(epoch))
            else:
                rec.set_outcome("completed")
        write_summary(rec)
        sync_record(self.settings, rec)
        kill_point("trial_end")

    def on_trial_error(self, iteration, trials, trial, **info):
        rec = self._record(trial)
        if rec.trial() is None:
            values, confirm = trial_values(self.settings, trial.config)
            cfg = trial_config_dict(self.settings, values)
            rec.write_trial(
                rec.dir.name, str(trial), values, cfg, self.settings.step, self.settings.name, confirm=confirm
            )
        reason = rec.failure()
        if reason is None:
            err = None
            try:
                err = trial.get_error()
            except Exception:  # noqa: BLE001
                pass
            reason = one_line(err) if err is not None else "trial errored"
        rec.set_outcome("failed", reason)
        write_summary(rec)
        sync_record(self.settings, rec)
