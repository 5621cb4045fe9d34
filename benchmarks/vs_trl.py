"""Ours vs TRL's GRPOTrainer on the identical GRPO job, on CPU: samples/s, time to a target reward,
final reward. Ours twice: the asynchronous Ray loop as a user runs it, and the in-process loop beside it.

Identical on both sides: the tiny Qwen2-VL (same directory, same initial weights), the prompts (real CT
and MR slices with a two-option modality question, in the same order: TRL's shuffling is off), the
reward function (one plain Python function), group size, completion length (fixed: EOS is never a
reason to stop early for a near-uniform tiny model, and both sides cap at the same length), number of
steps, AdamW with the same constant learning rate and clipping, the loss (token-mean, clip 0.2/0.28,
no KL, advantages not divided by the std, one gradient step per generation batch), sampling at
temperature 1 without top-k/top-p, one torch thread, no gradient checkpointing.

Ours, asynchronous (`ray`): the project's GRPO loop as a user runs it, `ActorSystem.build` +
`Controller.run` with `grpo.max_staleness = 1` (generation of step k+1 overlaps training of step k): a
rollout actor, a scorer actor whose `reward.rule` is this job's reward, the learner hosted by Ray Train,
the rollout buffer; requests name their images by id. Its steps are timed from `run()`'s start (actors
built and ready) to each step's end. Ours, in process (`ours`): `HFEngine.generate` -> reward ->
`ScoredGroup`s -> `PolicyLearner.grpo_step` -> `export_weights` -> `HFEngine.load_weights` (the engine is
a second copy of the model, as rollout actors are; weight sync is in the timed step). TRL:
`GRPOTrainer.train()`, which generates with `model.generate` on the training model itself. A step's time
is measured from step start to step end (TRL through a `TrainerCallback`), so set-up is excluded from all.
Ray's workers run at this process's priority (`common.RAY_SYSTEM_CONFIG` says why). Every trainer runs
with the same glibc malloc settings: the Ray workers start with them (`loop/runtime.WORKER_MALLOC_ENV`,
as every run's workers do) and this process, where TRL and the in-process loop run, gets their thresholds
(`keep_freed_memory`). They are an allocator setting a TRL user can make too, and they made TRL's own run
47% faster here (52.9 -> 77.8 samples/s), so the ratio is the systems', not the allocator's.

One difference of the systems, not of the job: both of ours run each group's prompt (its image included)
once, in generation (one prefill, its KV cache copied to the group's rows) and in the learner (one prefill
per micro-batch's distinct prompt, `models/logprobs.shared_prompt_logprobs`, gradients equal to the full
forward's); TRL's `model.generate` and its loss forward run the prompt once per completion.

The reward (`letter_reward.py`): the share of non-space characters of the completion that are the correct
option's letter (A for CT, B for MR), case-insensitive. Dense enough for a near-uniform tiny model to
climb within tens of steps, and it depends on the image.

Vision placeholder tokens (<|image_pad|>, <|video_pad|>, <|vision_start|>, <|vision_end|>) are suppressed
in sampling on both sides: TRL suppresses <|image_pad|> for VLMs itself ("a sampled image token would
mismatch the image features"); our HFEngine has no such guard yet (a sampled one makes the learner's
M-RoPE index fail), so this script masks them in the engine's sampling distribution
(`common.suppress_vision_tokens`) and passes the same ids to TRL as `suppress_tokens`.

Needs the `bench` extra (trl, datasets). TRL's Qwen2-VL processor cannot be loaded without torchvision,
so it is assembled from the same tokenizer and PIL image processor our code loads (`_Processor`).

    .venv/bin/python benchmarks/vs_trl.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline/one-thread environment before torch is imported)

import numpy as np  # noqa: E402

import grpo_job  # noqa: E402
import proc_cpu  # noqa: E402
from letter_reward import LETTERS, letter_reward  # noqa: E402
from medgr2_ray.config import EngineConfig, GRPOConfig, LearnerConfig, ModelConfig  # noqa: E402
from medgr2_ray.engines.hf import HFEngine  # noqa: E402
from medgr2_ray.learner.policy import PolicyLearner  # noqa: E402
from medgr2_ray.loop.runtime import keep_freed_memory  # noqa: E402
from medgr2_ray.models.tiny import ensure_model_dir  # noqa: E402
from medgr2_ray.types import GenerationRequest, SamplingParams, ScoredGroup  # noqa: E402

QUESTION = "Which imaging modality is this? A. CT  B. MR. Answer with the letter."
# CT_small.dcm is a CT slice, MR_small.dcm an MR slice (common.medical_images order): letters A and B.
TRAINERS = ("ray", "ours", "trl")
ASYNC_STALENESS = 1


@dataclass(frozen=True)
class Job:
    """The GRPO job both trainers run."""

    steps: int
    prompts_per_step: int
    group_size: int
    max_new_tokens: int
    lr: float
    num_prompts: int
    target_reward: float


@dataclass
class Trace:
    """Per-step wall seconds and mean reward of one training run."""

    trainer: str
    seed: int
    step_s: list[float] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)  # of the trained groups (the Ray loop)


def prompts(num: int) -> tuple[list[np.ndarray], list[str]]:
    """Images and correct letters of the job's prompts (CT, MR, CT, ...)."""
    images = common.medical_images()
    return [images[i % 2] for i in range(num)], [LETTERS[i % 2] for i in range(num)]


# ---------------------------------------------------------------------------------------------- ours

def run_ours(model_dir: Path, job: Job, seed: int) -> Trace:
    """GRPO with the project's engine + learner in one process."""
    grpo = GRPOConfig(steps=job.steps, prompts_per_step=job.prompts_per_step, group_size=job.group_size,
                      max_new_tokens=job.max_new_tokens, temperature=1.0, clip_low=0.2, clip_high=0.28, kl_coef=0.0,
                      loss_agg="token_mean", scale_by_std=False, dynamic_sampling=False)
    learner_cfg = LearnerConfig(lr=job.lr, max_grad_norm=1.0, schedule="constant",
                                micro_batch_size=job.prompts_per_step * job.group_size)
    learner = PolicyLearner(model_dir, ModelConfig(), learner_cfg, grpo, seed=seed)
    engine = HFEngine(model_dir, ModelConfig(), EngineConfig(max_batch_size=job.prompts_per_step * job.group_size), seed=seed)
    tok = engine.loaded.tokenizer
    assert [tok.convert_tokens_to_ids(t) for t in common.VISION_TOKENS] == common.vision_token_ids()
    common.suppress_vision_tokens()
    images, letters = prompts(job.num_prompts)
    requests = [GenerationRequest(f"p{i}", QUESTION, (images[i],)) for i in range(job.num_prompts)]
    sampling = SamplingParams(n=job.group_size, temperature=1.0, max_new_tokens=job.max_new_tokens)
    trace = Trace("ours", seed)
    for step in range(job.steps):
        start = time.perf_counter()
        idx = [(step * job.prompts_per_step + k) % job.num_prompts for k in range(job.prompts_per_step)]
        rollouts = engine.generate([requests[i] for i in idx], sampling)
        groups = []
        for k, i in enumerate(idx):
            mine = rollouts[k * job.group_size:(k + 1) * job.group_size]
            rewards = letter_reward([r.text for r in mine], [letters[i]] * job.group_size)
            groups.append(ScoredGroup(f"s{step}-{i}", requests[i], tuple(mine), np.asarray(rewards, np.float32)))
        learner.grpo_step(groups)
        engine.load_weights(learner.export_weights(), learner.version)
        trace.step_s.append(time.perf_counter() - start)
        trace.reward.append(float(np.mean([g.rewards.mean() for g in groups])))
    return trace


def ray_config(job: Job, seed: int) -> Any:
    """The same job for the Ray loop: one rollout actor, one scorer (this job's reward), one learner rank."""
    from medgr2_ray.config import Config

    per_step = job.prompts_per_step * job.group_size
    return Config.model_validate({
        "run": {"seed": seed, "torch_threads": 1},
        "engine": {"max_batch_size": per_step},
        "rollout_pool": {"min_workers": 1, "max_workers": 1, "num_cpus": 1},
        "scorer_pool": {"min_workers": 1, "max_workers": 1, "num_cpus": 0.5},
        "learner": {"num_ranks": 1, "num_cpus_per_rank": 1, "micro_batch_size": per_step, "lr": job.lr,
                    "max_grad_norm": 1.0, "schedule": "constant"},
        "grpo": {"steps": job.steps, "prompts_per_step": job.prompts_per_step, "group_size": job.group_size,
                 "max_new_tokens": job.max_new_tokens, "temperature": 1.0, "clip_low": 0.2, "clip_high": 0.28,
                 "kl_coef": 0.0, "loss_agg": "token_mean", "scale_by_std": False, "dynamic_sampling": False,
                 "max_staleness": ASYNC_STALENESS, "buffer_size": 4 * job.prompts_per_step},
        "reward": {"alpha": 0.0, "beta": 1.0, "rule": "letter_reward:letter_accuracy"},
        "loop": {"requests_per_call": job.prompts_per_step, "checkpoint_every": 0},
    })


def run_ray(model_dir: Path, job: Job, seed: int) -> Trace:
    """GRPO with the project's asynchronous Ray loop (`ActorSystem` + `Controller`), as a user runs it."""
    from medgr2_ray.actors.system import ActorSystem
    from medgr2_ray.loop.controller import Controller
    from medgr2_ray.types import Modality, Sample, TaskType

    cfg = ray_config(job, seed)
    requests = []
    for i in range(job.num_prompts):
        answer, modality = ("CT", Modality.CT) if i % 2 == 0 else ("MR", Modality.MR)
        sample = Sample(f"s{i}", f"img{i % 2}", "", QUESTION, ("CT", "MR"), answer, TaskType.MODALITY, modality)
        requests.append(GenerationRequest(f"p{i}", QUESTION, image_ids=(f"img{i % 2}",), sample=sample))
    system = ActorSystem.build(cfg, model_dir, images=grpo_job.job_images())
    try:
        while system.rollout.num_ready < 1 or system.scorer.num_ready < 1:
            system.rollout.poll_ready(1.0)
            system.scorer.poll_ready(1.0)
        controller = Controller(cfg, system, requests)
        proc_cpu.wait_quiet(timeout_s=60.0)  # set-up is excluded, as for the others: its processes' imports too
        marks = [time.perf_counter()]
        ledger = controller.run(job.steps, lambda done: marks.append(time.perf_counter()))
        controller.close()
    finally:
        system.shutdown()
    trace = Trace("ray", seed, list(np.diff(marks)), [float(r) for r in ledger.rewards])
    trace.staleness = list(ledger.staleness)
    return trace


# ---------------------------------------------------------------------------------------------- TRL

def trl_processor(loaded: Any) -> Any:
    """A Qwen2VLProcessor from our tokenizer and PIL image processor (no video processor: no torchvision)."""
    from transformers import Qwen2VLProcessor

    class _Processor(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            # transformers looks the video-processor class up even when none is passed; without
            # torchvision that lookup fails. There is no video here, so a missing one is fine.
            if argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    return _Processor(image_processor=loaded.image_processor, tokenizer=loaded.tokenizer,
                      chat_template=loaded.tokenizer.chat_template)


def run_trl(model_dir: Path, job: Job, seed: int, out_dir: Path) -> Trace:
    """GRPO with TRL's GRPOTrainer on the same model, data, reward and hyper-parameters."""
    from datasets import Dataset
    from PIL import Image
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from medgr2_ray.models.loading import load_vlm

    loaded = load_vlm(model_dir)
    images, letters = prompts(job.num_prompts)
    message = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    data = Dataset.from_list([{"prompt": message, "image": Image.fromarray(images[i]), "letter": letters[i]}
                              for i in range(job.num_prompts)])

    def reward(completions: list[Any], letter: list[str], **_: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return letter_reward(texts, letter)

    trace = Trace("trl", seed)

    class Timer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            trace.step_s.append(time.perf_counter() - self.start)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            if logs and "reward" in logs:
                trace.reward.append(float(logs["reward"]))

    args = TRLConfig(
        output_dir=str(out_dir), per_device_train_batch_size=job.prompts_per_step * job.group_size,
        num_generations=job.group_size, max_completion_length=job.max_new_tokens, max_steps=job.steps,
        learning_rate=job.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        beta=0.0, loss_type="dapo", scale_rewards="none", epsilon=0.2, epsilon_high=0.28, num_iterations=1,
        temperature=1.0, top_k=0, top_p=1.0, shuffle_dataset=False, gradient_checkpointing=False, use_cpu=True,
        bf16=False, logging_steps=1, report_to="none", disable_tqdm=True, save_strategy="no", seed=seed,
        dataloader_num_workers=0, generation_kwargs={"suppress_tokens": common.vision_token_ids()},
    )
    trainer = GRPOTrainer(model=loaded.model, reward_funcs=reward, args=args, train_dataset=data,
                          processing_class=trl_processor(loaded), callbacks=[Timer()])
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the trace keeps what we need
    trainer.train()
    return trace


# ---------------------------------------------------------------------------------------------- report

def time_to_target(trace: Trace, target: float, window: int = 3) -> float | None:
    """Cumulative step seconds until the rolling mean reward (over `window` steps) first reaches target."""
    cum = np.cumsum(trace.step_s)
    for i in range(window - 1, len(trace.reward)):
        if np.mean(trace.reward[i - window + 1:i + 1]) >= target:
            return float(cum[i])
    return None


def summary(traces: list[Trace], job: Job) -> dict[str, Any]:
    """samples/s, time to target and final reward per trainer, over seeds; each of ours vs TRL per seed."""
    samples = job.prompts_per_step * job.group_size
    out: dict[str, Any] = {}
    for name in TRAINERS:
        mine = [t for t in traces if t.trainer == name]
        if not mine:
            continue
        reached = [time_to_target(t, job.target_reward) for t in mine]
        out[name] = {
            "samples_per_s": common.summarize([samples * len(t.step_s) / sum(t.step_s) for t in mine]),
            "final_reward": common.summarize([float(np.mean(t.reward[-5:])) for t in mine]),
            "first_reward": common.summarize([float(np.mean(t.reward[:3])) for t in mine]),
            "time_to_target_s": common.summarize([r for r in reached if r is not None]) if any(r is not None for r in reached) else None,
            "reached_target": sum(r is not None for r in reached), "runs": len(mine),
        }
    trl = [t for t in traces if t.trainer == "trl"]
    for name in ("ray", "ours"):
        mine = [t for t in traces if t.trainer == name]
        if mine and trl:
            out[f"speedup_{name}"] = common.ratio_stat([sum(t.step_s) / len(t.step_s) for t in trl],
                                                       [sum(t.step_s) / len(t.step_s) for t in mine])
    return out


RUNNERS = {"ray": lambda model_dir, job, seed: run_ray(model_dir, job, seed),
           "ours": lambda model_dir, job, seed: run_ours(model_dir, job, seed),
           "trl": lambda model_dir, job, seed: run_trl(model_dir, job, seed, Path(tempfile.mkdtemp(prefix="trl-out-")))}


def run(args: argparse.Namespace) -> None:
    import ray

    common.single_thread()
    keep_freed_memory()  # TRL and the in-process loop run here: the workers' malloc settings (module docstring)
    job = Job(steps=3 if args.quick else 40, prompts_per_step=4, group_size=8, max_new_tokens=8 if args.quick else 16,
              lr=args.lr, num_prompts=16, target_reward=args.target)
    seeds = [0] if args.quick else list(range(args.seeds))
    trainers = [t for t in args.trainers.split(",") if t]
    if sorted(set(trainers) - set(TRAINERS)) or "trl" not in trainers:
        raise SystemExit(f"--trainers: a comma-separated subset of {TRAINERS} that includes trl")
    report = common.Report("vs_trl", args.quick, {"job": job.__dict__, "seeds": seeds, "trl": _trl_version(),
                                                  "trainers": trainers, "ray_max_staleness": ASYNC_STALENESS})
    cache = Path(args.cache or tempfile.mkdtemp(prefix="medgr2-bench-"))
    model_dir = ensure_model_dir(ModelConfig(), cache, seed=0, role="policy")
    if "ray" in trainers:
        grpo_job.ray_init()
    traces: list[Trace] = []
    try:
        for seed in seeds:  # interleaved (in turn forwards and backwards): all see the same load on average
            for name in trainers if seed % 2 == 0 else trainers[::-1]:
                traces.append(RUNNERS[name](model_dir, job, seed))
                print(f"{name:4s} seed {seed}: {sum(traces[-1].step_s):.1f} s, rewards "
                      f"{np.round(traces[-1].reward, 3).tolist()}", flush=True)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    tables(report, summary(traces, job), job, traces)
    plot(report, traces)
    report.save()


def tables(report: common.Report, res: dict[str, Any], job: Job, traces: list[Trace]) -> None:
    fmt = lambda s: s.fmt() if s is not None else "not reached"  # noqa: E731
    label = {"ray": f"ours, async Ray loop (max_staleness={ASYNC_STALENESS})", "ours": "ours, in process (sync)",
             "trl": "TRL GRPOTrainer"}
    rows = [[label[name], res[name]["samples_per_s"].fmt(), fmt(res[name]["time_to_target_s"]),
             f"{res[name]['reached_target']}/{res[name]['runs']}", res[name]["first_reward"].fmt(),
             res[name]["final_reward"].fmt()] for name in TRAINERS if name in res]
    report.table(f"GRPO on the tiny VLM, {job.steps} steps x {job.prompts_per_step} prompts x {job.group_size} "
                 f"completions of {job.max_new_tokens} tokens (CPU, 1 thread per process)",
                 ["trainer", "samples/s", f"s to reward >= {job.target_reward}", "reached", "reward, first 3 steps",
                  "reward, last 5 steps"], rows)
    ratios = [[label[n], res[f"speedup_{n}"].fmt()] for n in ("ray", "ours") if f"speedup_{n}" in res]
    report.table("Ratio to TRL", ["ours", "samples/s / TRL's (per seed, same job)"], ratios)
    report.notes.append("ours run each group's prompt (image included) once, in generation and in the learner; "
                        "TRL runs it once per completion in both (module docstring)")
    stale = [s for t in traces if t.trainer == "ray" for s in t.staleness]
    if stale:
        report.notes.append(f"staleness of the Ray loop's trained groups: {np.bincount(stale).tolist()} (count per lag)")
    report.data = {"summary": res, "traces": [t.__dict__ for t in traces]}
    for name in ("ray", "ours"):
        if f"speedup_{name}" in res:
            goal(report, res, name, label[name], 3.0 if name == "ray" else 1.5)


def goal(report: common.Report, res: dict[str, Any], name: str, label: str, target: float) -> None:
    speed = res[f"speedup_{name}"]
    ours_r, trl_r = res[name]["final_reward"], res["trl"]["final_reward"]
    # "Equal final reward": the medians differ by no more than the larger seed-to-seed spread (or 10%):
    # same algorithm, same data, so a smaller difference is sampling noise.
    spread = max(ours_r.hi - ours_r.lo, trl_r.hi - trl_r.lo, 0.1 * max(ours_r.median, trl_r.median))
    equal = abs(ours_r.median - trl_r.median) <= spread
    met = speed.median >= target and equal
    why = ""
    if not met:
        medians = res[name]["samples_per_s"].median / res["trl"]["samples_per_s"].median
        why = ("final rewards differ by more than the seed-to-seed spread; " if not equal else "") + (
            f"the per-seed ratios span {speed.lo:.2f}-{speed.hi:.2f}x (ratio of the median samples/s: {medians:.2f}x), "
            f"load average {report.machine['loadavg_at_start'][0]:.1f} at start on 2 cores"
            if speed.median < target else "")
    report.goals.append(common.Goal(f"{label} >= {target:g}x TRL samples/s at equal final reward",
                                    f">= {target:g}x, final rewards within the seed spread",
                                    f"{speed.fmt()}x; final reward {ours_r.fmt()} vs TRL {trl_r.fmt()}", met, why))


def plot(report: common.Report, traces: list[Trace]) -> None:
    fig, axes = common.new_figure(1)
    ax = axes[0]
    colors = {"ray": "C2", "ours": "C0", "trl": "C1"}
    for trace in traces:
        ax.plot(np.cumsum(trace.step_s), trace.reward, color=colors[trace.trainer],
                label=f"{trace.trainer} seed {trace.seed}", alpha=0.8)
    ax.set(xlabel="wall seconds (sum of step times)", ylabel="mean reward of the step", title="GRPO: ours vs TRL")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(report.png_path(), dpi=110)


def _trl_version() -> str:
    try:
        import trl

        return trl.__version__
    except ImportError as exc:
        raise SystemExit(f"vs_trl needs the bench extra: pip install -e '.[bench]' ({exc})") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 steps, one seed (results/quick/)")
    parser.add_argument("--cache", help="directory for the built model (default: a fresh temp dir)")
    parser.add_argument("--seeds", type=int, default=4, help="repetitions (one seed each, trainers interleaved)")
    parser.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate (both trainers)")
    parser.add_argument("--target", type=float, default=0.25, help="target reward for time-to-target")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help=f"comma-separated subset of {TRAINERS}")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
