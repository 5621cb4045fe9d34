"""Will the run fit? What a run's actors ask Ray for, added up, against the CPUs the config gives Ray.

A run whose actors ask for more CPUs than the local cluster has does not fail: the surplus actors stay
pending and the run waits forever. This module adds up the asks from the config alone (no Ray, no
models) so `medgr2 run` can refuse such a config in a second, naming the section to change.

What runs at the same time is a list of phases (`Phases`). A run keeps one actor system alive from start
to end, in either mode (`cycle.mode`): the generator pool, the scorer pool, the policy rollout pool and
the three learners G, R and P all live at once (`FLYWHEEL`). Pools count at `min_workers`: the autoscaler
may grow them later, but their floor must fit. Learners count `num_ranks x num_cpus_per_rank` each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from medgr2_ray.config import Config, ConfigError, PoolConfig

GENERATOR_POOL, SCORER_POOL, ROLLOUT_POOL = "generator_pool", "scorer_pool", "rollout_pool"
G_LEARNER, R_LEARNER, P_LEARNER = "G learner", "R learner", "P learner"

Phases = Sequence[tuple[str, Sequence[str]]]  # (phase name, the parts that run at the same time)
FLYWHEEL: Phases = (("the flywheel", (GENERATOR_POOL, SCORER_POOL, ROLLOUT_POOL, G_LEARNER, R_LEARNER, P_LEARNER)),)


@dataclass(frozen=True)
class Ask:
    """What one part of the run asks Ray for, and which config keys set it."""

    part: str
    cpus: float
    how: str  # e.g. "1 x 1 CPU"
    keys: str  # the config keys to change to lower it


def _pool(name: str, pool: PoolConfig) -> Ask:
    return Ask(name, pool.min_workers * pool.num_cpus, f"{pool.min_workers} x {pool.num_cpus:g} CPU",
               f"{name}.min_workers or {name}.num_cpus")


def asks(cfg: Config) -> dict[str, Ask]:
    """Every part's CPU ask (pools at their floor, learners with all their ranks). R's learner in the
    staged rounds has one rank; it is counted with `learner.num_ranks` as the flywheel's will be."""
    learner = cfg.learner
    per_learner = learner.num_ranks * learner.num_cpus_per_rank
    how = f"{learner.num_ranks} rank{'s' if learner.num_ranks > 1 else ''} x {learner.num_cpus_per_rank:g} CPU"
    keys = "learner.num_ranks or learner.num_cpus_per_rank"
    return {
        GENERATOR_POOL: _pool(GENERATOR_POOL, cfg.generator_pool),
        SCORER_POOL: _pool(SCORER_POOL, cfg.scorer_pool),
        ROLLOUT_POOL: _pool(ROLLOUT_POOL, cfg.rollout_pool),
        **{part: Ask(part, per_learner, how, keys) for part in (G_LEARNER, R_LEARNER, P_LEARNER)},
    }


def pool_bound_problems(cfg: Config) -> list[str]:
    """Pools whose floor is above their ceiling (the autoscaler could never honour both)."""
    return [f"{name}.min_workers={pool.min_workers} is above {name}.max_workers={pool.max_workers}; "
            f"raise {name}.max_workers or lower {name}.min_workers"
            for name, pool in ((GENERATOR_POOL, cfg.generator_pool), (SCORER_POOL, cfg.scorer_pool),
                               (ROLLOUT_POOL, cfg.rollout_pool))
            if pool.min_workers > pool.max_workers]


def fit_problems(cfg: Config, phases: Phases = FLYWHEEL) -> list[str]:
    """One line per phase that asks for more CPUs than `ray.num_cpus` (nothing to check when it is
    unset or the run joins an existing cluster), naming the biggest ask and what to change."""
    problems = pool_bound_problems(cfg)
    if cfg.ray.num_cpus is None or cfg.ray.address is not None:
        return problems
    table = asks(cfg)
    for phase, parts in phases:
        wanted = [table[p] for p in parts]
        total = sum(a.cpus for a in wanted)
        if total <= cfg.ray.num_cpus + 1e-9:
            continue
        biggest = max(wanted, key=lambda a: a.cpus)
        detail = ", ".join(f"{a.part} {a.how}" for a in wanted)
        problems.append(
            f"{phase}: {total:g} CPUs asked for at once, ray.num_cpus={cfg.ray.num_cpus} ({detail}); raise "
            f"ray.num_cpus to {math.ceil(total - 1e-9)}, or lower {biggest.keys} (the largest ask, {biggest.part})")
    return problems


def check_fits(cfg: Config, phases: Phases = FLYWHEEL) -> None:
    """Raise `ConfigError` with every problem `fit_problems` finds (one line each)."""
    problems = fit_problems(cfg, phases)
    if problems:
        raise ConfigError("\n".join(problems))
