"""Every reach into private Ray / Optuna internals, in one place, each marked with the versions it was written
for (Ray 2.60, Optuna 5.0). When either is upgraded, this is the file to check.

* ``WilsonOptunaSearch`` overrides ``OptunaSearch.restore`` / ``on_trial_result``, reads
  ``OptunaSearch._ot_trials`` / ``_ot_study`` / ``_space`` and builds an ``optuna.trial.Trial`` from a stored
  trial's private ``_trial_id`` (Ray 2.60 ``ray.tune.search.optuna``, Optuna 5.0).
* ``trainer_class`` drops Train V2's private ``DatasetsCallback`` (Ray 2.60 ``ray.train.v2._internal``).
* ``ExplainedASHA`` reads ``AsyncHyperBandScheduler._trial_info`` / ``_metric_op`` / ``_time_attr`` / ``_max_t``
  and ``_Bracket._rungs`` / ``rf`` / ``cutoff`` (Ray 2.60 ``ray.tune.schedulers.async_hyperband``).
"""

from __future__ import annotations

import functools
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from wilson_ray.sweep_record import TrialRecord, asha_decision, record_id, set_alias

# Optuna user attribute naming the record (= first Tune trial id) of an Optuna trial; durable at ``ask`` time,
# long before Tune's experiment checkpoint names the Tune trial.
RECORD_ATTR = "wilson_ray.trial_id"


class WilsonOptunaSearch(OptunaSearch):
    """OptunaSearch whose trials survive the loss of the driver (issue 17).

    Tune saves its trial list and this searcher's state in an experiment checkpoint taken at most every 10 s and
    uploaded in the background, while a new trial starts at once. A driver killed in between leaves a Tune
    trial that the restored driver never heard of, yet whose Optuna trial was ``ask``ed and whose record and
    MLflow run may exist. After a restore, each such Optuna trial (in the study, unknown to the restored
    searcher, not WAITING) is handed to the next new Tune trial with the same parameters, and that Tune trial
    is made to continue the lost trial's record (``sweep_record.set_alias``), so there is one Optuna trial, one
    record and one MLflow run per Tune trial, and the restored Tune counter (``num_samples``) holds. The restored
    sampler is reseeded, so its next draws do not repeat those made between the checkpoint and the kill, and a
    restored trial that had finished before the kill may report its final result again.

    ``record_dir``: the sweep's ``trials`` folder (None: no aliases, e.g. in unit tests of the searcher).
    Written for Ray 2.60 / Optuna 5.0 (private ``_ot_trials``, ``_ot_study``, ``_space``, ``_trial_id``).
    """

    def __init__(self, *args, record_dir: str | Path | None = None, max_epochs: int | None = None, **kwargs):
        self._wr_record_dir = str(record_dir) if record_dir else None
        self._wr_max_epochs = max_epochs
        self._wr_reported: dict[str, set[int]] = {}
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        # optuna-dashboard and study.trials_dataframe() name the objective(s) instead of "Objective 0"
        names = list(self.metric) if isinstance(self.metric, list) else [self.metric]
        if self._ot_study.metric_names is None:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning: the API exists since Optuna 3.2
                self._ot_study.set_metric_names(names)

    # Intermediate values are keyed by the trial's ``epoch`` (Ray keys them by its result counter) and include
    # the last epoch, which Tune hands to ``on_trial_complete`` only; an ASHA stop is told to Optuna as PRUNED
    # (Ray tells COMPLETE), so the dashboard shows what happened.
    def _wr_report(self, trial_id: str, result: dict) -> None:
        if isinstance(self.metric, list) or trial_id not in self._ot_trials or not result:
            return
        epoch, value = result.get("epoch"), result.get(self.metric)
        if epoch is None or value is None or result.get("evaluated", 1) == 0:
            return
        if not hasattr(self, "_wr_reported"):  # a searcher unpickled from an older checkpoint
            self._wr_reported = {}
        done = self._wr_reported.setdefault(trial_id, set())
        if int(epoch) not in done:
            done.add(int(epoch))
            self._ot_trials[trial_id].report(float(value), int(epoch))

    def _wr_user_attrs(self, trial_id: str, outcome: str | None) -> None:
        import json

        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return
        ot_trial.set_user_attr("ray_trial_id", trial_id)
        if outcome:
            ot_trial.set_user_attr("outcome", outcome)
        record = ot_trial.user_attrs.get(RECORD_ATTR) if hasattr(ot_trial, "user_attrs") else None
        if getattr(self, "_wr_record_dir", None):
            path = Path(self._wr_record_dir) / str(record or trial_id) / "mlflow_run.json"
            try:
                ot_trial.set_user_attr("mlflow_run_id", json.loads(path.read_text())["run_id"])
            except (OSError, ValueError, KeyError):
                pass

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        self._wr_orphans = None  # computed at the first suggestion after the restore
        # The sampler comes back with the random state of the checkpoint: without a new seed, the draws after the
        # restore repeat the ones made between the checkpoint and the kill (a second trial with the lost trial's
        # values). ``reseed_rng`` is Optuna's public way to do that.
        self._ot_study.sampler.reseed_rng()

    def on_trial_result(self, trial_id: str, result: dict):
        import optuna

        if trial_id in self._completed_trials:
            return
        try:
            self._wr_report(trial_id, result)
        except optuna.exceptions.UpdateFinishedTrialError:
            # A trial that finished (and was told to Optuna) in the run the driver lost, restored by Tune as
            # unfinished, reports its final result again: Optuna already has it; a raise here ends the sweep.
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        import optuna

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        max_epochs = getattr(self, "_wr_max_epochs", None)
        stopped = (
            not error
            and result
            and max_epochs is not None
            and "epoch" in result
            and float(result["epoch"] or 0) < max_epochs
        )
        try:
            self._wr_report(trial_id, result or {})
            self._wr_user_attrs(trial_id, "failed" if error else "stopped_early" if stopped else "completed")
            if stopped:
                self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
                self._completed_trials.add(trial_id)
                return None
        except optuna.exceptions.UpdateFinishedTrialError:
            self._completed_trials.add(trial_id)
            return None
        return super().on_trial_complete(trial_id, result, error)

    def _orphans(self) -> list:
        if getattr(self, "_wr_orphans", "none") is None:
            import optuna

            known = {t._trial_id for t in self._ot_trials.values()}
            self._wr_orphans = [
                t
                for t in self._ot_study.get_trials(deepcopy=False)
                if t._trial_id not in known
                and t.state != optuna.trial.TrialState.WAITING
                # an unfinished trial, or a finished one that a lost Tune trial ran to its end
                and (t.state == optuna.trial.TrialState.RUNNING or RECORD_ATTR in t.user_attrs)
            ]
        return getattr(self, "_wr_orphans", None) or []

    def suggest(self, trial_id: str):
        orphans = self._orphans()
        if trial_id not in self._ot_trials and orphans and not callable(self._space):
            import optuna
            from ray.tune.utils.util import unflatten_dict

            frozen = orphans.pop(0)
            self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, frozen._trial_id)
            record = frozen.user_attrs.get(RECORD_ATTR)
            if record is None:  # asked, but the driver died before naming it: no record can exist yet
                self._ot_trials[trial_id].set_user_attr(RECORD_ATTR, trial_id)
            elif getattr(self, "_wr_record_dir", None):
                set_alias(self._wr_record_dir, trial_id, record)
            return unflatten_dict(dict(frozen.params))
        new = trial_id not in self._ot_trials
        params = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(RECORD_ATTR, trial_id)
        return params


@functools.lru_cache(maxsize=1)
def trainer_class():
    """``TorchTrainer`` without Ray Data's per-run ``DatasetManager`` actor: trials read their data with the
    engine's DataLoader and pass no ``datasets``, yet Train V2 starts that actor (a process importing Ray Data)
    for every run. Written for Ray 2.60 (private ``ray.train.v2._internal.callbacks.DatasetsCallback`` and
    ``TorchTrainer._create_default_callbacks``); if they change, this falls back to the plain TorchTrainer."""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks import DatasetsCallback
    except ImportError:
        return TorchTrainer

    class NoDatasetsTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [cb for cb in callbacks if not isinstance(cb, DatasetsCallback)]

    return NoDatasetsTorchTrainer


class ExplainedASHA(ASHAScheduler):
    """Ray's asynchronous successive halving, unchanged, which also writes down every rung decision in the
    trial's record (``TrialRecord.record_rung``): the trial's value, the cutoff it met and how many results the
    rung held at that moment. Asynchronous ASHA judges a trial only against the trials that reached the rung
    before it, so who passes depends on the order of arrival; the console, the summary and MLflow quote these
    numbers instead of guessing. ``trials_dir``: the sweep's ``trials`` folder (None: decisions are not kept).
    Written for Ray 2.60 (private ``_trial_info``, ``_metric_op``, ``_time_attr``, ``_max_t``, ``_Bracket``)."""

    def __init__(self, *args, trials_dir: str | Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.trials_dir = str(trials_dir) if trials_dir is not None else None

    def _pending_rung(self, trial, result: dict) -> tuple[int, float | None, int, float] | None:
        """(rung epoch, cutoff, results recorded there, rf) of the rung this result is judged at, or None."""
        if self._time_attr not in result or self._metric not in result:
            return None
        t = result[self._time_attr]
        if t >= self._max_t and self._stop_last_trials:
            return None  # the trial's last epoch: stopped because it is done, not judged
        bracket = self._trial_info.get(trial.trial_id)
        if bracket is None:
            return None
        for milestone, recorded in bracket._rungs:  # descending milestones, as _Bracket.on_result walks them
            if t >= milestone and trial.trial_id in recorded and not self._stop_last_trials:
                return None  # Ray's early exit: this trial was judged at this rung already
            if t < milestone or trial.trial_id in recorded:
                continue
            cutoff = bracket.cutoff(recorded)
            return int(milestone), None if cutoff is None else float(cutoff), len(recorded), float(bracket.rf)
        return None

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        pending = self._pending_rung(trial, result)
        action = super().on_trial_result(tune_controller, trial, result)
        if pending is not None and self.trials_dir is not None:
            rung, cutoff, compared, rf = pending
            sign = self._metric_op  # Ray compares sign * value; undo it for the reader
            decision = asha_decision(
                self._metric,
                "max" if sign > 0 else "min",
                float(result[self._metric]),
                None if cutoff is None else sign * cutoff,
                compared,
                rf,
                action == TrialScheduler.STOP,
            )
            try:
                TrialRecord(Path(self.trials_dir) / record_id(self.trials_dir, trial.trial_id)).record_rung(
                    rung, decision
                )
            except OSError:  # an explanation must never stop the sweep
                pass
        return action
