"""One search loop for every strategy: an Optuna study over a categorical space, optionally kept
in a storage that workers share and that a killed search resumes from.

``search(objective, space, strategy, trials)`` asks the strategy's sampler for ``trials``
candidates in total (the study's finished trials count, whichever worker or earlier run finished
them), evaluates ``objective(params)`` on each and returns the study. With ``storage`` (an Optuna
URL: ``sqlite:///nas.db`` on one machine, ``postgresql://...`` or ``mysql://...`` for workers on
several) and a ``study_name``, several processes running the same call search together, and
rerunning it after a kill adds only the trials still missing.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Sequence

import optuna
from optuna.trial import TrialState

from slimkit.core.errors import ConfigError
from slimkit.nas.strategies import finished, make_sampler, quiet_optuna

Objective = Callable[[dict[str, Any]], "float | Sequence[float]"]


def _check_space(space: dict[str, Sequence[Any]]) -> None:
    for name, choices in space.items():
        if len(choices) < 1 or len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"search space {name!r}: choices must be non-empty and distinct, got {list(choices)}")


def _open_study(storage: str | None, study_name: str | None, sampler: optuna.samplers.BaseSampler,
                directions: Sequence[str], attempts: int = 20) -> optuna.Study:
    """Create the study, or load it if a worker already did. Workers started together on a fresh
    storage race to create its tables (SQLite: "table alembic_version already exists"): the
    loser waits a moment and loads what the winner made."""
    rng = random.Random()
    for attempt in range(attempts):
        try:
            return optuna.create_study(storage=storage, study_name=study_name, load_if_exists=storage is not None,
                                       sampler=sampler, directions=list(directions))
        except Exception as err:
            if storage is None or not type(err).__module__.startswith(("sqlalchemy", "optuna")):
                raise
            text = str(err).lower()
            racing = any(m in text for m in ("already exists", "locked", "unique constraint"))
            if not racing:
                raise ConfigError(f"storage {storage!r}: {str(err).splitlines()[0]}") from None
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 + rng.random() * 0.4)
    raise AssertionError("unreachable")


def search(objective: Objective, space: dict[str, Sequence[Any]], strategy: str = "random", trials: int = 100, *,
           seed: int | None = None, directions: Sequence[str] = ("maximize",), storage: str | None = None,
           study_name: str | None = None, options: dict[str, Any] | None = None, timeout: float | None = None,
           callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None) -> optuna.Study:
    """Search ``space`` ({dimension: choices}) with ``strategy`` until the study holds ``trials``
    finished trials, or ``timeout`` seconds have passed (the trial running then finishes); see the
    module docstring. ``objective(params)`` returns the value (a sequence for several objectives),
    or ``{"value": ..., "attrs": {...}, "constraints": {name: v}}`` to store attributes with the
    trial (in the storage, for every worker) and constraints (feasible when every ``v <= 0``; the
    samplers that honour constraints, NSGA-II and TPE, rank by them). ``callback(study, trial)`` after each trial."""
    _check_space(space)
    if trials < 1:
        raise ConfigError(f"trials must be >= 1, got {trials}")
    if storage is not None and not study_name:
        raise ConfigError("a shared storage needs a study_name (workers find the study by it)")
    quiet_optuna()
    study = _open_study(storage, study_name, make_sampler(strategy, seed, **(options or {})), directions)
    if [d.name.lower() for d in study.directions] != [d.lower() for d in directions]:
        raise ConfigError(f"study {study_name!r} in {storage} optimises {[d.name.lower() for d in study.directions]}, "
                          f"not {list(directions)}")
    names = list(space)

    def run(trial: optuna.Trial) -> Any:
        params = {n: trial.suggest_categorical(n, list(space[n])) for n in names}
        value = objective(params)
        if isinstance(value, dict):
            for key, attr in value.get("attrs", {}).items():
                trial.set_user_attr(key, attr)
            for key, bound in value.get("constraints", {}).items():  # feasible at <= 0 (NSGA-II ranks by them)
                trial.set_constraint(key, bound)
            value = value["value"]
        return tuple(value) if isinstance(value, (list, tuple)) else value

    left = trials - len(finished(study))
    if left > 0:
        stop = optuna.study.MaxTrialsCallback(trials, states=(TrialState.COMPLETE,))
        callbacks = [stop] + ([callback] if callback else [])
        study.optimize(run, n_trials=left, timeout=timeout, callbacks=callbacks, catch=())
    return study
