"""The fit check adds up what the run's actors ask Ray for, exactly, and names what to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from medgr2_ray.capacity import FLYWHEEL, asks, check_fits, fit_problems
from medgr2_ray.config import ConfigError, load_config

TINY = Path(__file__).resolve().parents[1] / "configs" / "cpu-tiny.yaml"


def test_asks_add_up_pools_at_their_floor_and_learners_with_all_ranks() -> None:
    cfg = load_config(None, ["generator_pool.min_workers=2", "generator_pool.max_workers=4", "generator_pool.num_cpus=1.5",
                             "scorer_pool.num_cpus=0.5", "rollout_pool.min_workers=0",
                             "learner.num_ranks=2", "learner.num_cpus_per_rank=0.25"])
    table = asks(cfg)
    assert table["generator_pool"].cpus == 3.0  # 2 workers at the floor x 1.5, not 4 at the ceiling
    assert table["scorer_pool"].cpus == 0.5 and table["rollout_pool"].cpus == 0.0
    assert [table[p].cpus for p in ("G learner", "R learner", "P learner")] == [0.5, 0.5, 0.5]
    assert sum(a.cpus for a in table.values()) == 5.0


def test_the_flywheel_counts_everything_at_once() -> None:
    assert fit_problems(load_config(TINY), FLYWHEEL) == []  # ray.num_cpus=8: three pools, three learners of 1
    (problem,) = fit_problems(load_config(TINY, ["ray.num_cpus=4"]), FLYWHEEL)
    assert problem.startswith("the flywheel: 6 CPUs asked for at once, ray.num_cpus=4")
    assert "raise ray.num_cpus to 6" in problem


def test_the_message_names_the_largest_ask_and_rounds_cpus_up() -> None:
    cfg = load_config(None, ["ray.num_cpus=2", "rollout_pool.min_workers=3", "rollout_pool.max_workers=3",
                             "rollout_pool.num_cpus=0.5", "scorer_pool.num_cpus=0.5", "generator_pool.num_cpus=0"])
    (problem,) = fit_problems(cfg, FLYWHEEL)  # 0 + 0.5 + 1.5 + 3 x 1 = 5 > 2
    assert problem.startswith("the flywheel: 5 CPUs") and "lower rollout_pool.min_workers or rollout_pool.num_cpus" in problem
    cfg = load_config(None, ["ray.num_cpus=1", "scorer_pool.num_cpus=0.5", "rollout_pool.num_cpus=0.25",
                             "learner.num_cpus_per_rank=0.5", "generator_pool.num_cpus=0"])
    (problem,) = fit_problems(cfg, FLYWHEEL)  # 0 + 0.5 + 0.25 + 3 x 0.5 = 2.25
    assert "raise ray.num_cpus to 3" in problem


def test_nothing_to_check_without_a_local_cpu_count() -> None:
    big = ["learner.num_ranks=64"]
    assert fit_problems(load_config(None, big), FLYWHEEL) == []  # ray.num_cpus unset: Ray counts the machine
    assert fit_problems(load_config(None, [*big, "ray.num_cpus=4", "ray.address=10.0.0.1:6379"]), FLYWHEEL) == []


def test_check_fits_raises_one_line_per_problem() -> None:
    cfg = load_config(TINY, ["learner.num_ranks=4", "scorer_pool.min_workers=2"])
    with pytest.raises(ConfigError) as caught:
        check_fits(cfg, FLYWHEEL)
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("scorer_pool.min_workers=2 is above scorer_pool.max_workers=1")
    assert [line.split(":")[0] for line in lines[1:]] == ["the flywheel"]
