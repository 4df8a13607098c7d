"""Search strategies, every one an Optuna sampler, so that all of them run on Optuna's engine:
its storage (in memory, SQLite here, PostgreSQL/MySQL across machines), its parallel workers
asking and telling one study, and its resumption after a kill.

- ``random``: ``optuna.samplers.RandomSampler``, the control every strategy is measured against.
- ``tpe``: ``optuna.samplers.TPESampler`` (multivariate), the Tree-structured Parzen Estimator.
- ``nsga2``: ``optuna.samplers.NSGAIISampler`` for several objectives (the Pareto front).
- ``evolution``: ``RegularizedEvolutionSampler``, aging evolution (Real et al. 2019): the
  population is the ``population`` most recently finished trials, a parent is the best of
  ``sample`` of them drawn at random, the child is the parent with one choice changed. Written
  here: Optuna has no aging evolution (its GA sampler, NSGA-II, keeps the fittest, not the newest).
- ``reinforce``: ``ReinforceSampler``, REINFORCE (Williams 1992) on a factorised categorical policy,
  one softmax per choice, as the NAS-Bench-201 paper's RL baseline reduces Zoph & Le's controller:
  reward = the objective, an exponential moving average as the baseline. Written here: Optuna has
  no policy-gradient sampler.

The two samplers of our own hold no state between calls: each ``ask`` rebuilds what it needs from
the study's finished trials (the population; the policy, by replaying the rewards in trial
order). So workers on other processes or machines sharing one storage search together, and a
study resumed after a kill continues where its trials left off. Both search categorical spaces
(every dimension ``suggest_categorical``); other parameters are drawn at random.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from slimkit.core.errors import ConfigError
from slimkit.core.registry import Registry


def finished(study: Study) -> list[FrozenTrial]:
    """Complete trials in trial-number order (the order they were asked in)."""
    return sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)


def _categorical(space: dict[str, BaseDistribution]) -> dict[str, CategoricalDistribution]:
    return {k: d for k, d in sorted(space.items()) if isinstance(d, CategoricalDistribution) and len(d.choices) > 1}


def _single_objective(study: Study, who: str) -> int:
    """+1 to maximise, -1 to minimise; several objectives are refused with the alternative."""
    if len(study.directions) != 1:
        raise ConfigError(f"{who} optimises one objective; use nsga2 for several")
    return 1 if study.direction == StudyDirection.MAXIMIZE else -1


class _OwnSampler(BaseSampler):
    """Shared plumbing: the categorical search space of the finished trials, random independent
    sampling for anything else (and before there is a space)."""

    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._rng = np.random.RandomState(seed)
        self._random = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:  # Optuna calls this in forked workers (n_jobs)
        self._rng.seed()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return _categorical(optuna.search_space.intersection_search_space(finished(study)))

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)


class RegularizedEvolutionSampler(_OwnSampler):
    """Aging evolution (Real et al. 2019); see the module docstring. Until ``population`` trials
    have finished, candidates are drawn at random (the initial population)."""

    def __init__(self, population: int = 20, sample: int = 5, seed: int | None = None) -> None:
        if population < 2 or not 1 <= sample <= population:
            raise ConfigError(f"evolution: need population >= 2 and 1 <= sample <= population, got population "
                              f"{population}, sample {sample}")
        super().__init__(seed)
        self.population, self.sample = population, sample

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
                        ) -> dict[str, Any]:
        sign = _single_objective(study, "evolution")
        space = _categorical(search_space)
        done = [t for t in finished(study) if all(k in t.params for k in space)]
        if not space or len(done) < self.population:
            return {}
        alive = done[-self.population:]  # aging: the newest trials are the population
        drawn = [alive[i] for i in self._rng.choice(len(alive), self.sample, replace=False)]
        parent = max(drawn, key=lambda t: sign * t.value)
        child = {k: parent.params[k] for k in space}
        name = list(space)[self._rng.randint(len(space))]
        others = [c for c in space[name].choices if c != child[name]]
        child[name] = others[self._rng.randint(len(others))]
        return child


class ReinforceSampler(_OwnSampler):
    """REINFORCE on independent softmax policies, one per categorical parameter; see the module
    docstring. ``policy(study)`` gives the current probabilities."""

    def __init__(self, lr: float = 0.05, momentum: float = 0.9, seed: int | None = None) -> None:
        if lr <= 0 or not 0 <= momentum < 1:
            raise ConfigError(f"reinforce: need lr > 0 and 0 <= momentum < 1, got lr {lr}, momentum {momentum}")
        super().__init__(seed)
        self.lr, self.momentum = lr, momentum

    def policy(self, study: Study, space: dict[str, CategoricalDistribution] | None = None
               ) -> dict[str, np.ndarray]:
        """{parameter: choice probabilities} after replaying every finished trial's reward."""
        sign = _single_objective(study, "reinforce")
        space = _categorical(space if space is not None else self.infer_relative_search_space(study, None))
        logits = {k: np.zeros(len(d.choices)) for k, d in space.items()}
        baseline: float | None = None
        for t in finished(study):
            if not all(k in t.params for k in space):
                continue
            reward = sign * float(t.value)
            baseline = reward if baseline is None else self.momentum * baseline + (1 - self.momentum) * reward
            advantage = reward - baseline
            for k, d in space.items():
                p = _softmax(logits[k])
                grad = -p
                grad[d.choices.index(t.params[k])] += 1.0  # d log p(choice) / d logits
                logits[k] += self.lr * advantage * grad
        return {k: _softmax(v) for k, v in logits.items()}

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
                        ) -> dict[str, Any]:
        space = _categorical(search_space)
        if not space:
            return {}
        probs = self.policy(study, space)
        return {k: d.choices[self._rng.choice(len(d.choices), p=probs[k])] for k, d in space.items()}


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


STRATEGIES: Registry[Callable[..., BaseSampler]] = Registry("search strategy")
STRATEGIES.register("random", summary="uniform random sampling (the control)")(
    lambda seed=None, **kw: RandomSampler(seed=seed, **kw))
STRATEGIES.register("tpe", summary="Optuna's multivariate Tree-structured Parzen Estimator")(
    lambda seed=None, **kw: optuna.samplers.TPESampler(seed=seed, multivariate=True, **kw))
STRATEGIES.register("nsga2", summary="Optuna's NSGA-II, for several objectives")(
    lambda seed=None, **kw: optuna.samplers.NSGAIISampler(seed=seed, **kw))
STRATEGIES.register("evolution", summary="regularized (aging) evolution, Real et al. 2019")(
    lambda seed=None, **kw: RegularizedEvolutionSampler(seed=seed, **kw))
STRATEGIES.register("reinforce", summary="REINFORCE on a factorised categorical policy")(
    lambda seed=None, **kw: ReinforceSampler(seed=seed, **kw))


def make_sampler(name: str, seed: int | None = None, **options: Any) -> BaseSampler:
    """The strategy ``name`` as an Optuna sampler (options: its constructor's keyword arguments)."""
    factory = STRATEGIES.get(name)
    try:
        return factory(seed=seed, **options)
    except TypeError as err:
        raise ConfigError(f"strategy {name!r}: {err}") from None


def quiet_optuna() -> None:
    """Optuna logs every trial at INFO: slimkit shows progress bars and tables instead."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def best_so_far(values: Sequence[float], maximize: bool = True) -> list[float]:
    """The running best of ``values`` (the search curve)."""
    out, best = [], -math.inf if maximize else math.inf
    for v in values:
        best = max(best, v) if maximize else min(best, v)
        out.append(best)
    return out
