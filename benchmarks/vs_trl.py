"""Ours vs TRL's GRPOTrainer on the identical GRPO job, on CPU: samples/s, time to a target reward,
final reward.

Identical on both sides: the tiny Qwen2-VL (same directory, same initial weights), the prompts (real CT
and MR slices with a two-option modality question, in the same order: TRL's shuffling is off), the
reward function (one plain Python function), group size, completion length (fixed: EOS is never a
reason to stop early for a near-uniform tiny model, and both sides cap at the same length), number of
steps, AdamW with the same constant learning rate and clipping, the loss (token-mean, clip 0.2/0.28,
no KL, advantages not divided by the std, one gradient step per generation batch), sampling at
temperature 1 without top-k/top-p, one torch thread, no gradient checkpointing.

Ours: the in-process loop of the project's parts: `HFEngine.generate` -> reward -> `ScoredGroup`s ->
`PolicyLearner.grpo_step` -> `export_weights` -> `HFEngine.load_weights` (the engine is a second copy of
the model, as rollout actors are; weight sync is in the timed step). TRL: `GRPOTrainer.train()`, which
generates with `model.generate` on the training model itself. A step's time is measured from step
start to step end on both sides (TRL through a `TrainerCallback`), so set-up is excluded from both.

The reward: the share of non-space characters of the completion that are the correct option's letter
(A for CT, B for MR), case-insensitive. Dense enough for a near-uniform tiny model to climb within tens
of steps, and it depends on the image.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline/one-thread environment before torch is imported)

import numpy as np  # noqa: E402

from medgr2_ray.config import EngineConfig, GRPOConfig, LearnerConfig, ModelConfig  # noqa: E402
from medgr2_ray.engines.hf import HFEngine  # noqa: E402
from medgr2_ray.learner.policy import PolicyLearner  # noqa: E402
from medgr2_ray.models.tiny import ensure_model_dir  # noqa: E402
from medgr2_ray.types import GenerationRequest, SamplingParams, ScoredGroup  # noqa: E402

QUESTION = "Which imaging modality is this? A. CT  B. MR. Answer with the letter."
LETTERS = ("A", "B")  # CT_small.dcm is a CT slice, MR_small.dcm an MR slice (common.medical_images order)


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


def letter_reward(texts: Sequence[str], letters: Sequence[str]) -> list[float]:
    """Share of non-space characters that are the correct letter (case-insensitive)."""
    out = []
    for text, letter in zip(texts, letters):
        chars = [c for c in text.upper() if not c.isspace()]
        out.append(sum(c == letter for c in chars) / max(1, len(chars)))
    return out


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
    """samples/s, time to target and final reward per trainer, over seeds."""
    samples = job.prompts_per_step * job.group_size
    out: dict[str, Any] = {}
    for name in ("ours", "trl"):
        mine = [t for t in traces if t.trainer == name]
        reached = [time_to_target(t, job.target_reward) for t in mine]
        out[name] = {
            "samples_per_s": common.summarize([samples * len(t.step_s) / sum(t.step_s) for t in mine]),
            "final_reward": common.summarize([float(np.mean(t.reward[-5:])) for t in mine]),
            "first_reward": common.summarize([float(np.mean(t.reward[:3])) for t in mine]),
            "time_to_target_s": common.summarize([r for r in reached if r is not None]) if any(r is not None for r in reached) else None,
            "reached_target": sum(r is not None for r in reached), "runs": len(mine),
        }
    ours = [t for t in traces if t.trainer == "ours"]
    trl = [t for t in traces if t.trainer == "trl"]
    out["speedup"] = common.ratio_stat([sum(t.step_s) for t in trl], [sum(t.step_s) for t in ours])
    return out


def run(args: argparse.Namespace) -> None:
    common.single_thread()
    job = Job(steps=3 if args.quick else 40, prompts_per_step=4, group_size=8, max_new_tokens=8 if args.quick else 16,
              lr=args.lr, num_prompts=16, target_reward=args.target)
    seeds = [0] if args.quick else list(range(args.seeds))
    report = common.Report("vs_trl", args.quick, {"job": job.__dict__, "seeds": seeds, "trl": _trl_version()})
    cache = Path(args.cache or tempfile.mkdtemp(prefix="medgr2-bench-"))
    model_dir = ensure_model_dir(ModelConfig(), cache, seed=0, role="policy")
    traces: list[Trace] = []
    for seed in seeds:  # interleaved, so both trainers see the same machine load on average
        traces.append(run_ours(model_dir, job, seed))
        print(f"ours seed {seed}: {sum(traces[-1].step_s):.1f} s, rewards {np.round(traces[-1].reward, 3).tolist()}", flush=True)
        traces.append(run_trl(model_dir, job, seed, Path(tempfile.mkdtemp(prefix="trl-out-"))))
        print(f"trl  seed {seed}: {sum(traces[-1].step_s):.1f} s, rewards {np.round(traces[-1].reward, 3).tolist()}", flush=True)
    res = summary(traces, job)
    fmt = lambda s: s.fmt() if s is not None else "not reached"  # noqa: E731
    rows = [[name, res[name]["samples_per_s"].fmt(), fmt(res[name]["time_to_target_s"]),
             f"{res[name]['reached_target']}/{res[name]['runs']}", res[name]["first_reward"].fmt(),
             res[name]["final_reward"].fmt()] for name in ("ours", "trl")]
    report.table(f"GRPO on the tiny VLM, {job.steps} steps x {job.prompts_per_step} prompts x {job.group_size} "
                 f"completions of {job.max_new_tokens} tokens (CPU, 1 thread)",
                 ["trainer", "samples/s", f"s to reward >= {job.target_reward}", "reached", "reward, first 3 steps",
                  "reward, last 5 steps"], rows)
    report.table("Ratio", ["ours / TRL samples/s (per seed, same job)"], [[res["speedup"].fmt()]])
    report.data = {"summary": res, "traces": [t.__dict__ for t in traces]}
    goal(report, res)
    plot(report, traces)
    report.save()


def goal(report: common.Report, res: dict[str, Any]) -> None:
    speed = res["speedup"]
    ours_r, trl_r = res["ours"]["final_reward"], res["trl"]["final_reward"]
    # "Equal final reward": the medians differ by no more than the larger seed-to-seed spread (or 10%):
    # same algorithm, same data, so a smaller difference is sampling noise.
    spread = max(ours_r.hi - ours_r.lo, trl_r.hi - trl_r.lo, 0.1 * max(ours_r.median, trl_r.median))
    equal = abs(ours_r.median - trl_r.median) <= spread
    met = speed.median >= 1.5 and equal
    why = ""
    if not met:
        medians = res["ours"]["samples_per_s"].median / res["trl"]["samples_per_s"].median
        why = ("final rewards differ by more than the seed-to-seed spread; " if not equal else "") + (
            f"the per-seed ratios span {speed.lo:.2f}-{speed.hi:.2f}x (ratio of the median samples/s: {medians:.2f}x): "
            f"with load average {report.machine['loadavg_at_start'][0]:.1f} on 2 cores the machine's load changed "
            "by more than the gap between the trainers within one run, so the median pair decides"
            if speed.median < 1.5 else "")
    report.goals.append(common.Goal("ours >= 1.5x TRL samples/s at equal final reward", ">= 1.5x, final rewards within the seed spread",
                                    f"{speed.fmt()}x; final reward ours {ours_r.fmt()}, TRL {trl_r.fmt()}", met, why))


def plot(report: common.Report, traces: list[Trace]) -> None:
    fig, axes = common.new_figure(1)
    ax = axes[0]
    for trace in traces:
        ax.plot(np.cumsum(trace.step_s), trace.reward, color="C0" if trace.trainer == "ours" else "C1",
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
    run(parser.parse_args())


if __name__ == "__main__":
    main()
