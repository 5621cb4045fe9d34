"""The rounds mode (`cycle.mode=rounds`): MedGR²'s co-evolution as the paper runs it, on the flywheel's actors.

Round 0 bootstraps G (SFT on the template seeds) and R (answer, then grade the graded seeds); rounds
1..N each generate for `images_per_round` training images, wait for every candidate, select over the whole
round, fine-tune G and refresh R on that round's kept samples, and wait again (`Flywheel.run_round`).

Resume (`round_state.py` has the file rules): after round 0 and after every round k, exact checkpoints of
G and R (weights, optimizer, schedule, version, RNG; safetensors) go to `checkpoints/rounds/round_k/`,
then `data/round_k/DONE.json`. `--resume` restores the learners from the last complete round's
checkpoints and the store from the complete rounds' kept samples, and runs the rounds after it as if
there had been no interruption; a config that changes what the rounds produce is refused, naming the field.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path

import ray

from medgr2_ray.checkpoint import load_json
from medgr2_ray.config import Config
from medgr2_ray.data.store import write_samples
from medgr2_ray.eval.rundata import CycleData
from medgr2_ray.loop.flywheel import Flywheel
from medgr2_ray.loop.round_state import (KEEP_CHECKPOINTS, IncompatibleRunError, RoundRecord, check_resumable,
                                         completed_rounds, forget_rounds, prune_checkpoints, round_checkpoint,
                                         round_dir, rounds_fingerprint, write_done)
from medgr2_ray.types import MedImage


def round_images(cfg: Config, train: Sequence[MedImage], k: int) -> list[MedImage]:
    """The training images round k writes about (seeded, independent of every other round)."""
    rng = random.Random(f"{cfg.run.seed}|round|{k}")
    return rng.sample(list(train), min(cfg.cycle.images_per_round, len(train)))


def fingerprint(cfg: Config, data: CycleData) -> dict[str, object]:
    """The config fields and image sets that shape the rounds (see `round_state.rounds_fingerprint`)."""
    return rounds_fingerprint(cfg, [i.image_id for i in data.pool.images], [i.image_id for i in data.train])


def complete_round(wheel: Flywheel, run_dir: Path, k: int, kept: int, print_: dict[str, object],
                   previous: RoundRecord | None) -> RoundRecord:
    """Checkpoint G and R after round k, then mark it complete (DONE.json last); prune old checkpoints."""
    extra = {"round": k, "previous": previous.digest if previous else ""}
    where = round_checkpoint(run_dir, k)
    g, r = wheel.sys.g_learner, wheel.sys.r_learner
    assert g is not None and r is not None
    # Each recipe's step counter seeds its batch draws: a resumed round must draw what the straight one did.
    g.save_checkpoint(where / "generator", {**extra, "recipe_steps": wheel.g.step_counters()})
    r.save_checkpoint(where / "reward_model", {**extra, "recipe_steps": wheel.r.step_counters()})
    record = write_done(run_dir, k, wheel.g.weights.version if wheel.g.weights else 0,
                        wheel.r.weights.version if wheel.r.weights else 0, kept, print_,
                        previous.digest if previous else None)
    prune_checkpoints(run_dir, k)
    return record


def restore(wheel: Flywheel, run_dir: Path, last: RoundRecord) -> None:
    """Bring G and R back to the end of round `last` (the store preloads the kept samples itself)."""
    where = round_checkpoint(run_dir, last.round)
    for name in ("generator", "reward_model"):
        trainer = where / name / "trainer.json"
        meta = load_json(trainer).get("extra", {}) if trainer.is_file() else {}
        if meta.get("round") != last.round or meta.get("previous") != (last.previous or ""):
            raise IncompatibleRunError(
                f"{where / name}: no checkpoint written by round {last.round} of the rounds that {last.path} "
                f"completes (only the last {KEEP_CHECKPOINTS} rounds' checkpoints are kept); "
                "run without --resume to start the rounds over")
    assert wheel.sys.g_learner is not None and wheel.sys.r_learner is not None
    wheel.g.set_step_counters(wheel.sys.g_learner.load_checkpoint(where / "generator").get("recipe_steps", {}))
    wheel.r.set_step_counters(wheel.sys.r_learner.load_checkpoint(where / "reward_model").get("recipe_steps", {}))
    wheel.g.weights, wheel.r.weights = wheel.sys.g_learner.latest(), wheel.sys.r_learner.latest()
    wheel.lane.g_weights, wheel.lane.r_weights = wheel.g.weights, wheel.r.weights
    wheel.kept_total = int(ray.get(wheel.sys.store.status.remote()).kept)


def run_rounds(wheel: Flywheel, cfg: Config, data: CycleData, run_dir: Path, done: Sequence[RoundRecord],
               budget_s: float | None = None) -> None:
    """Round 0 (unless resumed past it) and rounds 1..N (module docstring); `done` from `plan_rounds`.
    With `budget_s` (benchmarks) no round starts once that many seconds passed after the bootstrap."""
    print_ = fingerprint(cfg, data)
    if done:
        restore(wheel, run_dir, done[-1])
        wheel.progress("rounds: resumed after round", done[-1].round, cfg.cycle.rounds)
        last: RoundRecord | None = done[-1]
    else:
        write_samples(round_dir(run_dir, 0) / "seeds.jsonl", list(data.seeds))
        wheel.bootstrap()
        wheel.train_generator_and_reward("round 0: bootstrap G and R")
        last = complete_round(wheel, run_dir, 0, 0, print_, None)
    wheel.marks["bootstrapped"] = time.time()
    for k in range(len(done) or 1, cfg.cycle.rounds + 1):
        if budget_s is not None and time.time() - wheel.marks["bootstrapped"] >= budget_s:
            break
        summary = wheel.run_round(k, round_images(cfg, data.train, k))
        last = complete_round(wheel, run_dir, k, int(summary["kept"]), print_, last)
    wheel.marks["data_end"] = time.time()


def plan_rounds(cfg: Config, data: CycleData, run_dir: Path, resume: bool) -> list[RoundRecord]:
    """The complete rounds a resume continues after (refusing an incompatible config), or [] when the
    rounds start over (then every earlier DONE marker in the run directory is forgotten)."""
    done = completed_rounds(run_dir) if resume else []
    check_resumable(done, fingerprint(cfg, data), cfg.cycle.rounds)
    if not done:
        forget_rounds(run_dir)
    return done
