"""One GRPO job, run two ways, shared by async_vs_sync.py and orchestration_overhead.py:

* `run_loop`: the Ray system (`actors.system.ActorSystem` + `loop.controller.Controller`), as the main
  job runs it: one policy rollout actor, one scorer actor (accuracy reward only: `reward.alpha = 0`, so
  no reward model), one learner rank hosted by Ray Train, the rollout buffer, the monitor; requests name
  their images by id (the pixels were put in the object store once, as `grpo_stage.run_grpo` does);
  `grpo.max_staleness` decides sync (0) or async (>= 1); `loop` overrides pick how calls are chained.
  It keeps what the controller and the actors recorded about every call (`LoopTrace`).
* `run_plain`: the same steps in one Python process without Ray: `HFEngine.generate` -> the scorer's
  reward functions -> `PolicyLearner.grpo_step` -> `export_weights` -> `HFEngine.load_weights`, with each
  stage timed, which gives the stage times the theoretical limits are computed from.
* `run_interleaved`: both at once, in blocks of a few steps that take turns (the loop's blocks through
  its controller, the one-process blocks in this process while the loop's actors wait), so that each is
  compared with steps taken seconds apart. This machine's speed drifts by 10-20% within minutes
  (measured: the same generate call 232 ms, then 287 ms three minutes later), which is more than
  the orchestration being measured; runs a minute apart cannot resolve it. Each block's first step is
  left out of the step times (and of the hop cut): the loop's starts from an idle loop, not from the
  step before, and either side's first step follows the other side's turn on the cores.

Both use the same tiny VLM, prompts (real CT/MR slices with a two-option modality question carried as a
`Sample`), group size, completion length and seeds. Dynamic sampling is off so every step trains on the
same number of rows whatever the rewards are (the work per step is then fixed). Warm-up steps are run
first and not timed (optimizer state, allocator, first weight version).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import common
import proc_cpu
from medgr2_ray.config import Config
from medgr2_ray.types import GenerationRequest, Modality, Sample, TaskType

QUESTION = "Which imaging modality is this? A. CT  B. MR. Answer with the letter."


@dataclass(frozen=True)
class JobShape:
    """What one GRPO step does."""

    prompts_per_step: int
    group_size: int
    max_new_tokens: int
    steps: int
    warmup_steps: int = 2
    # Wait after the actor system is up until Ray's processes are quiet (at most this many seconds), before
    # the warm-up steps: building it starts a dozen processes (Ray Train's controller and helpers, the
    # actors) that import for seconds, and the last system's are still exiting; their CPU made the first
    # steps after a build up to twice as long (measured). 0: no wait.
    settle_s: float = 0.0


def job_config(shape: JobShape, max_staleness: int, seed: int = 0, loop: dict[str, Any] | None = None) -> Config:
    """The system config of the job (1 rollout actor, 1 scorer, 1 learner rank, 1 torch thread each)."""
    per_step = shape.prompts_per_step
    return Config.model_validate({
        "run": {"seed": seed, "torch_threads": 1},
        "engine": {"max_batch_size": per_step * shape.group_size},
        "rollout_pool": {"min_workers": 1, "max_workers": 1, "num_cpus": 1},
        "scorer_pool": {"min_workers": 1, "max_workers": 1, "num_cpus": 0.5},
        "learner": {"num_ranks": 1, "num_cpus_per_rank": 1, "micro_batch_size": per_step * shape.group_size, "lr": 1e-3},
        "grpo": {"steps": shape.steps + shape.warmup_steps, "prompts_per_step": per_step, "group_size": shape.group_size,
                 "max_new_tokens": shape.max_new_tokens, "dynamic_sampling": False, "max_staleness": max_staleness,
                 "buffer_size": 4 * per_step},
        "reward": {"alpha": 0.0, "beta": 1.0},
        # One generate call per step's prompts: the plain loop makes the same single call.
        "loop": {"requests_per_call": per_step, "checkpoint_every": 0, **(loop or {})},
    })


def job_requests(num: int, by_id: bool = False) -> list[GenerationRequest]:
    """CT and MR prompts (alternating), each with the `Sample` the scorer checks answers against; the
    pixels in the request, or (`by_id`) the image's id (`job_images` holds the pixels)."""
    images = common.medical_images()
    out = []
    for i in range(num):
        modality, answer = (Modality.CT, "CT") if i % 2 == 0 else (Modality.MR, "MR")
        sample = Sample(f"s{i}", f"img{i % 2}", f"img{i % 2}.png", QUESTION, ("CT", "MR"), answer,
                        TaskType.MODALITY, modality)
        pixels = {"image_ids": (f"img{i % 2}",)} if by_id else {"images": (images[i % 2],)}
        out.append(GenerationRequest(f"p{i}", QUESTION, sample=sample, **pixels))
    return out


def job_images() -> dict[str, Any]:
    """The prompts' pixels in the object store, by image id (put once, read by every actor)."""
    import ray

    return {f"img{k}": ray.put(image) for k, image in enumerate(common.medical_images())}


# How the loop submits its calls (orchestration_overhead.py compares them): variant -> (loop config
# overrides, the learner's item queued with a blocking round trip to its feed). `driver`: every call
# through the driver, as before issue 17; `next`: the loop as it runs by default.
VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "driver": ({"chain_calls": False, "take_ahead": False, "generate_ahead": False}, True),
    "feed": ({"chain_calls": False, "take_ahead": False, "generate_ahead": False}, False),
    "chain": ({"chain_calls": True, "take_ahead": False, "generate_ahead": False}, False),
    "ahead": ({"chain_calls": True, "take_ahead": True, "generate_ahead": False}, False),
    "next": ({"chain_calls": True, "take_ahead": True, "generate_ahead": True}, False),
}


def blocking_feed(on: bool) -> None:
    """Queue learner items as the loop did before: wait for the feed's answer, then ask for the result."""
    import ray

    from medgr2_ray.actors.learner_host import LearnerHost

    original = getattr(LearnerHost.start, "__wrapped__", LearnerHost.start)
    if not on:
        LearnerHost.start = original  # type: ignore[method-assign]
        return

    def start(self: LearnerHost, work: Any) -> Any:
        return self.result_ref(int(ray.get(self.feed.submit.remote(work, self._index(work)))))

    start.__wrapped__ = original  # type: ignore[attr-defined]
    LearnerHost.start = start  # type: ignore[method-assign]


@contextmanager
def _variant(variant: str) -> Iterator[dict[str, Any]]:
    """The loop overrides of one of `VARIANTS`, with its way of queueing learner items on meanwhile."""
    overrides, blocking = VARIANTS[variant]
    blocking_feed(blocking)
    try:
        yield overrides
    finally:
        blocking_feed(False)


def run_variant(shape: JobShape, max_staleness: int, policy_dir: Path, seed: int, variant: str) -> "LoopRun":
    """`run_loop` with one of `VARIANTS`."""
    with _variant(variant) as overrides:
        return run_loop(shape, max_staleness, policy_dir, seed, overrides)


@dataclass
class LoopTrace:
    """What the timed steps of a loop run left behind: the controller's calls (submit and finish as the
    driver saw them), rank 0's report of each step (from the last warm-up step on), the actors' spans,
    and the driver's own seconds (waiting, and CPU) over the timed steps."""

    calls: list[Any]
    step_dones: list[Any]
    spans: list[Any]
    driver_wait_s: float
    driver_cpu_s: float
    cpu_s: dict[str, float]  # CPU seconds of the timed steps, by process (proc_cpu.py)
    # Indices i into `step_dones` whose step (from step i-1's end to step i's end) is not cut into hops:
    # a step that started from an idle loop (`run_interleaved`: the first of each block).
    skip: frozenset[int] = frozenset()


@dataclass
class LoopRun:
    """A timed run of the Ray loop."""

    max_staleness: int
    wall_s: float
    steps: int
    samples: int
    staleness: list[int]
    dropped_stale: int
    trace: LoopTrace | None = None
    # Seconds of each step that followed the step before (`run_interleaved`); None: every step counts
    step_times: list[float] | None = None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s

    @property
    def step_s(self) -> float:
        if self.step_times:
            return float(np.mean(self.step_times))
        return self.wall_s / self.steps


@contextmanager
def _loop_system(shape: JobShape, max_staleness: int, policy_dir: Path, seed: int,
                 loop: dict[str, Any] | None) -> Iterator[tuple[Any, Any]]:
    """The actor system and its controller, its warm-up steps run; always shut down afterwards."""
    import ray

    from medgr2_ray.actors.system import ActorSystem
    from medgr2_ray.loop.controller import Controller

    cfg = job_config(shape, max_staleness, seed, loop)
    system = ActorSystem.build(cfg, policy_dir, images=job_images())
    try:
        while system.rollout.num_ready < 1 or system.scorer.num_ready < 1:
            system.rollout.poll_ready(1.0)
            system.scorer.poll_ready(1.0)
        controller = Controller(cfg, system, job_requests(4 * shape.prompts_per_step, by_id=True))
        if shape.settle_s > 0:
            proc_cpu.wait_quiet(timeout_s=shape.settle_s)
        controller.run(shape.warmup_steps)
        ray.get(system.monitor.drain_spans.remote())
        yield system, controller
    finally:
        system.shutdown()


@dataclass(frozen=True)
class _Mark:
    """Where the controller's records stood before the timed steps: from the last warm-up step's result on
    (the first timed step starts there)."""

    calls: int
    dones: int
    waited_s: float
    cpu_s: float
    trained: int
    stale: int

    @classmethod
    def of(cls, controller: Any) -> "_Mark":
        return cls(len(controller.calls) - 1, len(controller.step_dones) - 1, controller.waited_s,
                   controller.driver_cpu_s, len(controller.ledger.trained_ids), len(controller.ledger.staleness))


def _finish(shape: JobShape, max_staleness: int, system: Any, controller: Any, mark: _Mark, wall: float,
            cpu_s: dict[str, float], skip: frozenset[int] = frozenset()) -> "LoopRun":
    """The timed steps' `LoopRun`, with what the controller and the actors recorded since `mark`."""
    import ray

    controller.close()  # the actors send the spans they batched
    time.sleep(1.0)  # fire-and-forget calls to the monitor
    trace = LoopTrace(list(controller.calls)[mark.calls:], list(controller.step_dones)[mark.dones:],
                      ray.get(system.monitor.drain_spans.remote()), controller.waited_s - mark.waited_s,
                      controller.driver_cpu_s - mark.cpu_s, cpu_s, skip)
    ledger = controller.ledger
    trained = len(ledger.trained_ids) - mark.trained
    return LoopRun(max_staleness, wall, shape.steps, trained * shape.group_size, ledger.staleness[mark.stale:],
                   len(ledger.dropped_stale_ids), trace)


def run_loop(shape: JobShape, max_staleness: int, policy_dir: Path, seed: int = 0,
             loop: dict[str, Any] | None = None) -> LoopRun:
    """Build the actor system, run the warm-up steps, then time `shape.steps` more; always shuts down."""
    with _loop_system(shape, max_staleness, policy_dir, seed, loop) as (system, controller):
        mark = _Mark.of(controller)
        procs = proc_cpu.ray_processes()
        cpu_before = proc_cpu.cpu_seconds(procs)
        start = time.perf_counter()
        controller.run(shape.warmup_steps + shape.steps)
        wall = time.perf_counter() - start
        cpu_s = proc_cpu.per_name(cpu_before, proc_cpu.cpu_seconds(procs))
        return _finish(shape, max_staleness, system, controller, mark, wall, cpu_s)


@dataclass
class PlainRun:
    """Per-step stage seconds of the job run in one process without Ray."""

    step_s: list[float] = field(default_factory=list)
    generate_s: list[float] = field(default_factory=list)
    score_s: list[float] = field(default_factory=list)
    train_s: list[float] = field(default_factory=list)
    export_s: list[float] = field(default_factory=list)
    load_s: list[float] = field(default_factory=list)
    samples: int = 0

    @property
    def wall_s(self) -> float:
        return float(sum(self.step_s))

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s

    def median(self, name: str) -> float:
        return float(np.median(getattr(self, name)))

    def add(self, times: dict[str, float], samples: int) -> None:
        """One timed step (`PlainJob.step`'s seconds by field name) and the samples it trained on."""
        for name, value in times.items():
            getattr(self, name).append(value)
        self.samples += samples


def _score(requests: list[GenerationRequest], rollouts: list[Any], cfg: Config) -> list[Any]:
    """The scorer's arithmetic (accuracy only, alpha = 0), without the actor."""
    from medgr2_ray.actors.scorer import group_rollouts
    from medgr2_ray.algo.rewards import accuracy_reward
    from medgr2_ray.types import ScoredGroup

    out = []
    for request, group in zip(requests, group_rollouts(requests, rollouts)):
        acc = accuracy_reward([request.sample] * len(group), [r.text for r in group])
        out.append(ScoredGroup(request.request_id, request, group, cfg.reward.beta * np.asarray(acc, np.float32)))
    return out


class PlainJob:
    """The job in this process (the HF engine's vision tokens suppressed, as in the actors): engine,
    learner and prompts built once; `step` runs one step, each stage timed."""

    def __init__(self, shape: JobShape, policy_dir: Path, seed: int = 0) -> None:
        from medgr2_ray.engines.hf import HFEngine
        from medgr2_ray.learner.policy import PolicyLearner
        from medgr2_ray.types import SamplingParams

        common.suppress_vision_tokens()
        self.shape, self.cfg = shape, job_config(shape, 0, seed)
        self.engine = HFEngine(policy_dir, self.cfg.policy, self.cfg.engine, seed=seed + 1000)
        self.learner = PolicyLearner(policy_dir, self.cfg.policy, self.cfg.learner, self.cfg.grpo, seed)
        self.prompts = job_requests(4 * shape.prompts_per_step)
        self.sampling = SamplingParams(n=shape.group_size, temperature=self.cfg.grpo.temperature,
                                       max_new_tokens=shape.max_new_tokens)

    def step(self, step: int) -> dict[str, float]:
        """Step `step`: seconds of each stage (`PlainRun`'s field names) and of the whole step."""
        from dataclasses import replace

        start, per = time.perf_counter(), self.shape.prompts_per_step
        batch = [replace(self.prompts[(step * per + k) % len(self.prompts)], request_id=f"{step}:{k}")
                 for k in range(per)]
        gen_s, rollouts = common.timed(lambda: self.engine.generate(batch, self.sampling))
        score_s, groups = common.timed(lambda: _score(batch, rollouts, self.cfg))
        train_s, _ = common.timed(lambda: self.learner.grpo_step(groups))
        export_s, flat = common.timed(self.learner.export_weights)
        load_s, _ = common.timed(lambda: self.engine.load_weights(flat, self.learner.version))
        return {"step_s": time.perf_counter() - start, "generate_s": gen_s, "score_s": score_s,
                "train_s": train_s, "export_s": export_s, "load_s": load_s}


def run_plain(shape: JobShape, policy_dir: Path, seed: int = 0) -> PlainRun:
    """The same steps in this process (`PlainJob`), warm-up steps untimed."""
    job, run = PlainJob(shape, policy_dir, seed), PlainRun()
    for step in range(shape.warmup_steps + shape.steps):
        times = job.step(step)
        if step >= shape.warmup_steps:
            run.add(times, shape.prompts_per_step * shape.group_size)
    return run


def run_interleaved(shape: JobShape, policy_dir: Path, seed: int, variant: str,
                    block: int = 4) -> tuple[LoopRun, PlainRun]:
    """The synchronous loop (one of `VARIANTS`) and the one-process job in blocks of `block` steps that take
    turns (the loop first in even blocks), `shape.steps` steps each (module docstring). Both sides' step
    times leave out each block's first step; the loop's CPU counts its own blocks only."""
    job, plain = PlainJob(shape, policy_dir, seed), PlainRun()
    for step in range(shape.warmup_steps):
        job.step(step)
    with _variant(variant) as overrides:
        with _loop_system(shape, 0, policy_dir, seed, overrides) as (system, controller):
            mark, procs = _Mark.of(controller), proc_cpu.ray_processes()
            cpu: dict[str, float] = defaultdict(float)
            wall, kept, skip, done = 0.0, [], set(), shape.warmup_steps
            for b in range(-(-shape.steps // block)):
                k = min(block, shape.warmup_steps + shape.steps - done)
                if b % 2:
                    _plain_block(job, plain, done, k)
                first = len(controller.step_dones)
                skip.add(first - mark.dones)  # from the trace's first entry, the last warm-up step
                before, start = proc_cpu.cpu_seconds(procs), time.perf_counter()
                controller.run(done + k)
                wall += time.perf_counter() - start
                for name, seconds in proc_cpu.per_name(before, proc_cpu.cpu_seconds(procs)).items():
                    cpu[name] += seconds
                ends = [d.ended for d in list(controller.step_dones)[first:]]
                kept += [z - a for a, z in zip(ends, ends[1:])]
                if b % 2 == 0:
                    _plain_block(job, plain, done, k)
                done += k
            run = _finish(shape, 0, system, controller, mark, wall, dict(cpu), frozenset(skip))
    run.step_times = kept
    return run, plain


def _plain_block(job: PlainJob, run: PlainRun, first: int, steps: int) -> None:
    """One turn of the one-process job; its first step is left out as the loop's is, so that both sides
    count only steps that follow a step of their own (the other side just had the cores and caches)."""
    for step in range(first, first + steps):
        times = job.step(step)
        if step > first:
            run.add(times, job.shape.prompts_per_step * job.shape.group_size)


def ray_init(num_cpus: int = 4) -> None:
    """A local Ray cluster whose workers suppress vision tokens in the HF engine (common.py says why; the
    patch is applied in a worker only if it imports the engine)."""
    import os

    import ray

    from medgr2_ray.loop.runtime import keep_freed_memory, worker_malloc_env

    keep_freed_memory()  # this process runs the one-process side: the workers' malloc settings here too
    here = str(Path(__file__).resolve().parent)
    env = {"PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           **worker_malloc_env()}
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, namespace="medgr2-bench",
             object_store_memory=1 << 30, _system_config=common.RAY_SYSTEM_CONFIG,
             runtime_env={"env_vars": env, "worker_process_setup_hook": "common.suppress_vision_tokens_on_import"})


@dataclass
class OverlapRun:
    """Seconds per step of each stage while both run at once in two plain processes (no Ray, no hand-over):
    the machine's own limit for overlapping them, whatever orchestrates them."""

    rollout_s: list[float] = field(default_factory=list)  # load + generate + score, per step
    learner_s: list[float] = field(default_factory=list)  # train + export, per step

    def step_s(self) -> float:
        """The slower side's median: the overlapped step's length."""
        return max(float(np.median(self.rollout_s)), float(np.median(self.learner_s)))


def _overlap_side(side: str, shape: JobShape, policy_dir: Path, seed: int, barrier: Any, out: Any) -> None:
    """One side of `run_overlapped` in its own process: the rollout side reloads its weights and generates
    each step, the learner side trains on groups it generated once (before the timed steps) and exports."""
    from dataclasses import replace

    from medgr2_ray.engines.hf import HFEngine
    from medgr2_ray.learner.policy import PolicyLearner
    from medgr2_ray.types import SamplingParams

    from medgr2_ray.loop.runtime import keep_freed_memory

    common.single_thread()
    common.suppress_vision_tokens()
    keep_freed_memory()  # as in the loop's workers
    cfg = job_config(shape, 0, seed)
    engine = HFEngine(policy_dir, cfg.policy, cfg.engine, seed=seed + 1000)
    sampling = SamplingParams(n=shape.group_size, temperature=cfg.grpo.temperature, max_new_tokens=shape.max_new_tokens)
    prompts = job_requests(shape.prompts_per_step)
    learner = PolicyLearner(policy_dir, cfg.policy, cfg.learner, cfg.grpo, seed) if side == "learner" else None
    flat = PolicyLearner(policy_dir, cfg.policy, cfg.learner, cfg.grpo, seed).export_weights() if side == "rollout" else None
    groups = _score(prompts, engine.generate(prompts, sampling), cfg) if learner is not None else []
    times = []
    barrier.wait()  # both sides start their steps together
    for step in range(shape.warmup_steps + shape.steps):
        start = time.perf_counter()
        if learner is not None:
            learner.grpo_step(groups)
            learner.export_weights()
        else:
            engine.load_weights(flat, step + 1)
            batch = [replace(p, request_id=f"{step}:{k}") for k, p in enumerate(prompts)]
            _score(batch, engine.generate(batch, sampling), cfg)
        if step >= shape.warmup_steps:
            times.append(time.perf_counter() - start)
    out.put((side, times))


def run_overlapped(shape: JobShape, policy_dir: Path, seed: int = 0) -> OverlapRun:
    """The rollout side and the learner side of the job at the same time, each in its own plain process
    with one torch thread, as many steps each: what two cores give two overlapping stages here."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_overlap_side, args=(side, shape, policy_dir, seed, barrier, out))
             for side in ("rollout", "learner")]
    for p in procs:
        p.start()
    got = dict(out.get(timeout=1800) for _ in procs)
    for p in procs:
        p.join()
    return OverlapRun(got["rollout"], got["learner"])
