"""GPU smoke check: the GPU path end to end on one card in a few minutes, with nothing downloaded.

    python benchmarks/gpu_smoke.py --out benchmarks/results/gpu_smoke.md     # one H100/H200, ~3-5 min
    python benchmarks/gpu_smoke.py --device cpu --tiny                        # CI (tests/test_gpu_smoke.py)

What it does, through the project's own code (engines/hf.py, learner/policy.py, sync/flat.py):
1. builds a Qwen2.5-VL-3B *architecture* from its config with random weights in bf16 (the tokenizer is
   trained offline, as for the tiny models: no hub access); `--tiny` builds the same architecture at
   toy size in float32;
2. generates with the HF engine (tokens/s);
3. one GRPO step with LoRA and one with full weights (step time, peak GPU memory; a warm-up step first);
4. export -> publish -> load into the engine on the same GPU, for the LoRA adapter and the full weights
   (the refit seconds, split into export, publish and load), then the engine's behaviour log-probs
   against the learner's teacher-forced ones for the same tokens (max |difference|; bf16 on the GPU).

What it needs: torch, transformers (5.17 or later), peft, accelerate, safetensors, tokenizers, numpy, pyyaml,
pillow and pydantic; not Ray, vLLM or the network. This repository's code is imported from the checkout
(no install). On a bare CUDA machine missing pydantic or pillow, bring them as wheels (9.6 MB for
CPython 3.12): `bash scripts/gpu_smoke_wheels.sh` where there is network, carry `.cache/gpu_smoke_wheels`,
then `pip install --no-index --find-links .cache/gpu_smoke_wheels pydantic pillow` on the GPU machine.
"Publish" goes through the Ray object store when Ray is importable (`--publish ray`), else the
`FlatWeights` are handed over in-process (`--publish none`; the default `auto` picks).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "numpy", "yaml", "PIL",
          "pydantic")
# Qwen2.5-VL-3B-Instruct's architecture (its config.json), with our offline tokenizer's special ids.
QWEN25VL_3B_TEXT = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                        num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000)
QWEN25VL_3B_VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                          window_size=112, fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2)
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2048, max_position_embeddings=4096)
TINY_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, window_size=112,
                   fullatt_block_indexes=[1], tokens_per_second=2)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy-size model (CI): same architecture and steps")
    parser.add_argument("--publish", choices=["auto", "ray", "none"], default="auto")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="completions per prompt (GRPO group)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="write the results as markdown here (+ .json)")
    return parser.parse_args(argv)


def _check_imports() -> None:
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"gpu_smoke: missing {missing}; install them (see this script's docstring: pydantic and "
                         "pillow travel as wheels to a machine without network)")


def build_model_dir(out: Path, tiny: bool, dtype: Any, device: str, seed: int = 0) -> Path:
    """A Qwen2.5-VL directory with random weights: model, offline-trained tokenizer, image processor."""
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
    )

    from medgr2_ray.config import TinyModelConfig
    from medgr2_ray.models.tiny import _mrope_section, tiny_image_processor
    from medgr2_ray.models.tokenizer import train_tokenizer

    text, vision = (TINY_TEXT, TINY_VISION) if tiny else (QWEN25VL_3B_TEXT, QWEN25VL_3B_VISION)
    tokenizer = train_tokenizer(2048)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>",
                                                            "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    config = Qwen2_5_VLConfig(
        text_config={**text, "rms_norm_eps": 1e-6, "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0,
                                         "mrope_section": _mrope_section(head_dim)}},
        vision_config={**vision, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=not tiny,  # as the 3B checkpoint has it
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype).eval()
    model.generation_config = GenerationConfig(eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
                                               pad_token_id=ids["<|endoftext|>"], do_sample=False)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    tiny_image_processor(TinyModelConfig(image_size=224)).save_pretrained(out)
    del model
    return out


def _requests(n: int) -> list[Any]:
    """`n` prompts, half with a synthetic scan-like image (two sizes), half text only."""
    import numpy as np

    from medgr2_ray.types import GenerationRequest

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        images = ()
        if i % 2 == 0:
            size = 112 + 56 * (i % 4 == 0)
            grey = (rng.random((size, size)) * 255).astype(np.uint8)
            images = (np.repeat(grey[:, :, None], 3, axis=2),)
        out.append(GenerationRequest(f"q{i}", f"Question {i}: which organ is shown here?", images))
    return out


def _groups(requests: list[Any], rollouts: list[Any]) -> list[Any]:
    """Scored groups with a reward that varies inside every group (so the GRPO step has a gradient)."""
    import numpy as np

    from medgr2_ray.types import ScoredGroup

    out = []
    for request in requests:
        mine = tuple(r for r in rollouts if r.request_id == request.request_id)
        rewards = np.asarray([float(r.completion_token_ids[0] % 7) + 0.1 * r.index for r in mine], np.float32)
        out.append(ScoredGroup(request.request_id, request, mine, rewards))
    return out


class Clock:
    """Seconds of a block, with the GPU synchronised so asynchronous kernels are counted."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()


def _peak_memory(cuda: bool, reset: bool = True) -> float:
    """Peak GPU memory allocated since the last reset (GiB), or this process's peak RSS on the CPU."""
    if cuda:
        import torch

        peak = torch.cuda.max_memory_allocated() / 2**30
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _publisher(mode: str) -> tuple[str, Any]:
    """('ray' | 'none', publish(flat, version) -> FlatWeights as the reader sees it)."""
    use_ray = mode == "ray" or (mode == "auto" and importlib.util.find_spec("ray") is not None)
    if not use_ray:
        return "none", lambda flat, version: flat
    import ray

    from medgr2_ray.sync.weights import fetch_weights, publish_weights

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    return "ray", lambda flat, version: fetch_weights(publish_weights(flat, version))


def _refit(learner: Any, engine: Any, publish: Any, clock: Clock) -> dict[str, float]:
    """Export -> publish -> load into the engine, timed per part."""
    t0 = clock.now()
    flat = learner.export_weights()
    t1 = clock.now()
    seen = publish(flat, learner.version)
    t2 = clock.now()
    engine.load_weights(seen, learner.version)
    t3 = clock.now()
    return {"export_s": t1 - t0, "publish_s": t2 - t1, "load_s": t3 - t2, "refit_s": t3 - t0,
            "bytes": float(flat.num_bytes)}


def _logprob_gap(engine: Any, learner: Any, requests: list[Any], new_tokens: int) -> float:
    """Max |engine behaviour log-prob - learner teacher-forced log-prob| over sampled tokens."""
    from medgr2_ray.types import SamplingParams

    rollouts = engine.generate(requests, SamplingParams(n=2, temperature=1.0, max_new_tokens=new_tokens, seed=7))
    by_id = {r.request_id: r for r in requests}
    mine = learner.score_completions([by_id[r.request_id] for r in rollouts],
                                     [r.completion_token_ids for r in rollouts], temperature=1.0)
    return max(float(abs(m - r.logprobs).max()) for m, r in zip(mine, rollouts))


def _train_phase(name: str, learner: Any, engine: Any, requests: list[Any], rollouts: list[Any],
                 args: argparse.Namespace, publish: Any, clock: Clock) -> dict[str, float]:
    """A warm-up GRPO step, a timed one, the refit into the engine and the log-prob agreement."""
    groups = _groups(requests, rollouts)
    learner.grpo_step(groups)  # warm-up: first-call allocations and kernel selection
    t0 = clock.now()
    metrics = learner.grpo_step(groups)
    step_s = clock.now() - t0
    if metrics.get("skipped"):
        raise RuntimeError(f"{name}: the GRPO step was skipped (no trainable token)")
    out = {"step_s": step_s, **_refit(learner, engine, publish, clock)}
    out["logprob_max_diff"] = _logprob_gap(engine, learner, requests, args.new_tokens)
    out["peak_gib"] = _peak_memory(clock.cuda)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole check; returns the results (also printed)."""
    import torch

    from medgr2_ray.config import (
        EngineConfig,
        GRPOConfig,
        LearnerConfig,
        LoraConfig,
        ModelConfig,
    )
    from medgr2_ray.engines.hf import HFEngine
    from medgr2_ray.learner.policy import PolicyLearner
    from medgr2_ray.types import SamplingParams

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("gpu_smoke: --device cuda but torch sees no GPU (use --device cpu --tiny off a GPU)")
    dtype_name = "float32" if args.tiny else "bfloat16"
    clock = Clock(cuda)
    publish_mode, publish = _publisher(args.publish)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if cuda else "cpu",
                               "model": "Qwen2.5-VL tiny" if args.tiny else "Qwen2.5-VL-3B architecture, random",
                               "dtype": dtype_name, "torch": torch.__version__, "publish": publish_mode}
    import transformers

    results["transformers"] = transformers.__version__
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        t0 = time.perf_counter()
        model_dir = build_model_dir(Path(tmp) / "model", args.tiny, getattr(torch, dtype_name), args.device)
        results["build_s"] = time.perf_counter() - t0
        model_cfg = ModelConfig(dtype=dtype_name)
        lora = ModelConfig(dtype=dtype_name, lora=LoraConfig(enabled=True, r=16, alpha=32))
        # The engine knows the LoRA shape (r, alpha) to merge adapter updates; it serves the plain model.
        engine = HFEngine(model_dir, lora, EngineConfig(max_batch_size=args.prompts * args.group), seed=0)
        requests = _requests(args.prompts)
        sampling = SamplingParams(n=args.group, temperature=1.0, max_new_tokens=args.new_tokens, seed=1)
        engine.generate(requests[:1], SamplingParams(max_new_tokens=2))  # warm-up
        t0 = clock.now()
        rollouts = engine.generate(requests, sampling)
        seconds = clock.now() - t0
        tokens = sum(len(r.completion_token_ids) for r in rollouts)
        results["generate"] = {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}
        grpo = GRPOConfig(temperature=1.0, dynamic_sampling=False, group_size=args.group,
                          max_new_tokens=args.new_tokens)
        learner_cfg = LearnerConfig(lr=1e-5, micro_batch_size=4)
        _peak_memory(cuda)  # reset: each phase reports its own peak (the engine's weights included)
        learner = PolicyLearner(model_dir, lora, learner_cfg, grpo, seed=0)
        results["lora"] = _train_phase("lora", learner, engine, requests, rollouts, args, publish, clock)
        del learner
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        learner = PolicyLearner(model_dir, model_cfg, learner_cfg, grpo, seed=0)
        results["full"] = _train_phase("full", learner, engine, requests, rollouts, args, publish, clock)
    return results


def render(results: dict[str, Any]) -> str:
    """The results as a markdown page (benchmarks/results/gpu_smoke.md)."""
    rows = [("LoRA (r=16, q/k/v/o)", results["lora"]), ("full weights", results["full"])]
    generate = results["generate"]
    lines = [
        "# GPU smoke check (`benchmarks/gpu_smoke.py`)", "",
        (f"{results['model']} in {results['dtype']} on {results['device']}; torch {results['torch']}, "
         f"transformers {results['transformers']}; publish through {results['publish']}."), "",
        (f"Model build {results['build_s']:.1f} s. HF engine generation: {generate['tokens']} tokens in "
         f"{generate['seconds']:.2f} s = **{generate['tokens_per_s']:.1f} tokens/s**."), "",
        "| update | GRPO step s | refit s (export + publish + load) | MB shipped | engine vs learner max abs log-prob diff | peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(f"| {name} | {r['step_s']:.3f} | **{r['refit_s']:.3f}** ({r['export_s']:.3f} + {r['publish_s']:.3f} + "
                     f"{r['load_s']:.3f}) | {r['bytes'] / 2**20:.1f} | {r['logprob_max_diff']:.2e} | {r['peak_gib']:.2f} |")
    lines += ["", ("Peak: GPU memory allocated during the phase (engine and learner on one card); on the CPU, the "
                   "process's peak RSS. For comparison, NeMo-RL publishes 0.21-0.34 s refits for a 4B model."), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: everything stays on the CPU
    sys.path.insert(0, str(ROOT))
    _check_imports()
    results = run(args)
    page = render(results)
    print(page)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(page)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
