"""Weight sync against the memory-bandwidth limit: export (pack) -> publish (`ray.put`) -> fetch
(`ray.get` in another actor on the same node) -> load into the engine's live model, for Qwen2-VL models
of ~10M to ~500M parameters, full weights and LoRA adapters only.

Everything runs through the project's own code: `PolicyLearner.export_weights` (learner side),
`sync.weights.publish_weights` / `fetch_weights`, and `HFEngine.load_weights` inside a Ray actor.
Measured side by side in each repetition:
* memcpy: `np.copyto` of the same number of bytes into an already-touched buffer (the physical limit
  of one copy on this machine);
* the thing we avoid: `ray.put` of the learner's dict of torch tensors and `ray.get` of it in the actor.

Stage arithmetic: publish is one copy (learner memory -> shared memory), fetch maps the shared memory
(no copy on the same node), load is one copy (shared memory -> the engine's parameters). Two copies,
so publish+fetch+load is bounded by 0.5 of memcpy; export adds two more (`export_state` clones, then
`pack_tensors` copies into the flat buffer).

    .venv/bin/python benchmarks/weight_sync.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline/one-thread environment before torch is imported)

import numpy as np  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

from medgr2_ray.config import GRPOConfig, LearnerConfig, LoraConfig, ModelConfig, TinyModelConfig  # noqa: E402
from medgr2_ray.learner.policy import PolicyLearner  # noqa: E402
from medgr2_ray.models.tiny import ensure_model_dir  # noqa: E402
from medgr2_ray.sync.weights import publish_weights  # noqa: E402
from medgr2_ray.types import WeightVersion  # noqa: E402

GB = 1e9
LORA = LoraConfig(enabled=True, r=8, alpha=16)


def text_tower(hidden: int, layers: int) -> TinyModelConfig:
    """A Qwen2-VL config whose size is decided by its text tower (8 heads, 2 KV heads, MLP 3x);
    the vision tower is kept minimal because it does not change what sync does per byte."""
    return TinyModelConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
        intermediate_size=3 * hidden, vision_embed_dim=64, vision_depth=1, vision_num_heads=2,
    )


# ~11.5 h^2 parameters per layer plus 2 x 2048 x h of embeddings.
SIZES = {"10M": text_tower(256, 12), "50M": text_tower(512, 16), "150M": text_tower(1024, 12),
         "500M": text_tower(1536, 18)}


@dataclass(frozen=True)
class ReaderTiming:
    """What the reading actor measured for one version."""

    fetch_s: float
    load_s: float
    num_bytes: int


@ray.remote(num_cpus=1)
class SyncReader:
    """A rollout-actor stand-in: holds an HF engine and takes published weights into it."""

    def __init__(self, model_dir: str, model_cfg: ModelConfig) -> None:
        import common as _  # noqa: F401  (offline env in the worker)
        from medgr2_ray.config import EngineConfig
        from medgr2_ray.engines.hf import HFEngine

        torch.set_num_threads(1)
        self.engine = HFEngine(model_dir, model_cfg, EngineConfig(max_batch_size=1), seed=0)

    def fetch_and_load(self, weights: WeightVersion) -> ReaderTiming:
        from medgr2_ray.sync.weights import fetch_weights

        fetch_s, flat = common.timed(lambda: fetch_weights(weights))
        load_s, _ = common.timed(lambda: self.engine.load_weights(flat, weights.version))
        return ReaderTiming(fetch_s, load_s, flat.num_bytes)

    def get_dict(self, refs: list[Any]) -> float:
        """Seconds to `ray.get` a dict of torch tensors (refs wrapped in a list: not auto-resolved)."""
        seconds, state = common.timed(lambda: ray.get(refs[0]))
        assert isinstance(state, dict) and state
        return seconds


def memcpy_seconds(num_bytes: int) -> tuple[float, float]:
    """Seconds of one plain copy of `num_bytes` into a warm destination (`np.copyto`: libc memcpy), and of
    the same copy by torch `Tensor.copy_` at one thread (what the engine's load does per tensor)."""
    src = np.ones(num_bytes // 4, dtype=np.float32)
    dst = np.zeros_like(src)
    np.copyto(dst, src)  # touch every page of both first
    memcpy_s = common.timed(lambda: np.copyto(dst, src))[0]
    torch_s = common.timed(lambda: torch.from_numpy(dst).copy_(torch.from_numpy(src)))[0]
    return memcpy_s, torch_s


def measure_case(model_dir: Path, model_cfg: ModelConfig, reps: int) -> dict[str, list[float]]:
    """Every stage and both baselines, `reps` times, for one model and one mode (full or LoRA)."""
    learner = PolicyLearner(model_dir, model_cfg, LearnerConfig(), GRPOConfig(), seed=0)
    reader = SyncReader.remote(str(model_dir), model_cfg)
    ray.get(reader.__ray_ready__.remote())
    out: dict[str, list[float]] = {k: [] for k in ("export", "put", "fetch", "load", "dict_put", "dict_get", "memcpy",
                                                   "torch_copy")}
    for version in range(reps + 1):  # version 0 warms up every path and is not recorded
        export_s, flat = common.timed(learner.export_weights)
        put_s, published = common.timed(lambda: publish_weights(flat, version + 1))
        timing = ray.get(reader.fetch_and_load.remote(published))
        num_bytes = flat.num_bytes
        del flat, published
        state = learner.export_state()
        dict_put_s, ref = common.timed(lambda: ray.put(state))
        dict_get_s = ray.get(reader.get_dict.remote([ref]))
        del ref, state
        gc.collect()
        memcpy_s, torch_copy_s = memcpy_seconds(num_bytes)
        if version == 0:
            continue
        for key, value in (("export", export_s), ("put", put_s), ("fetch", timing.fetch_s), ("load", timing.load_s),
                           ("dict_put", dict_put_s), ("dict_get", dict_get_s), ("memcpy", memcpy_s),
                           ("torch_copy", torch_copy_s)):
            out[key].append(value)
    out["bytes"] = [float(num_bytes)]
    out["params"] = [float(sum(p.numel() for p in learner.model.parameters()))]
    ray.kill(reader)
    del learner
    gc.collect()
    return out


def summarize_case(name: str, mode: str, m: dict[str, list[float]]) -> dict[str, Any]:
    """GB/s per stage and ratios to memcpy, per repetition, summarised."""
    nbytes = m["bytes"][0]
    gbps = lambda secs: [nbytes / GB / s for s in secs]  # noqa: E731
    sync = [p + f + l for p, f, l in zip(m["put"], m["fetch"], m["load"])]
    full = [e + s for e, s in zip(m["export"], sync)]
    dict_rt = [p + g for p, g in zip(m["dict_put"], m["dict_get"])]
    flat_rt = [p + f for p, f in zip(m["put"], m["fetch"])]
    return {
        "model": name, "mode": mode, "params": m["params"][0], "bytes": nbytes,
        "memcpy_gbps": common.summarize(gbps(m["memcpy"])),
        "sync_gbps": common.summarize(gbps(sync)),
        "sync_ms": common.summarize([s * 1e3 for s in sync]),
        "sync_vs_memcpy": common.ratio_stat(m["memcpy"], sync),
        "with_export_vs_memcpy": common.ratio_stat(m["memcpy"], full),
        "put_vs_memcpy": common.ratio_stat(m["memcpy"], m["put"]),
        "load_vs_memcpy": common.ratio_stat(m["memcpy"], m["load"]),
        "torch_copy_vs_memcpy": common.ratio_stat(m["memcpy"], m["torch_copy"]),
        "fetch_ms": common.summarize([s * 1e3 for s in m["fetch"]]),
        "flat_vs_dict": common.ratio_stat(dict_rt, flat_rt),
        "raw": m,
    }


def run(args: argparse.Namespace) -> None:
    common.single_thread()
    sizes = ["10M"] if args.quick else list(SIZES)
    reps = 2 if args.quick else 5
    report = common.Report("weight_sync", args.quick, {
        "sizes": {s: SIZES[s].model_dump() for s in sizes}, "reps": reps, "lora": LORA.model_dump(),
        "object_store_memory_gib": args.object_store_gib, "dtype": "float32",
    })
    ray.init(num_cpus=2, object_store_memory=int(args.object_store_gib * 2**30), include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent)}}, log_to_driver=False)
    cache = Path(args.cache or tempfile.mkdtemp(prefix="medgr2-bench-"))
    cases = []
    for size in sizes:
        for mode, lora in (("full", LoraConfig()), ("lora", LORA)):
            cfg = ModelConfig(tiny=SIZES[size], lora=lora)
            model_dir = ensure_model_dir(ModelConfig(tiny=SIZES[size]), cache, seed=0, role="policy")
            case = summarize_case(size, mode, measure_case(model_dir, cfg, reps))
            print(f"{size} {mode}: sync {case['sync_gbps'].fmt()} GB/s, {case['sync_vs_memcpy'].fmt()} of memcpy", flush=True)
            cases.append(case)
    ray.shutdown()
    rows = [[c["model"], c["mode"], f"{c['params'] / 1e6:.0f}M", f"{c['bytes'] / 1e6:.1f}", c["memcpy_gbps"].fmt(),
             c["sync_ms"].fmt(), c["sync_gbps"].fmt(), c["sync_vs_memcpy"].fmt(), c["put_vs_memcpy"].fmt(), c["load_vs_memcpy"].fmt(),
             c["torch_copy_vs_memcpy"].fmt(),
             c["fetch_ms"].fmt(), c["with_export_vs_memcpy"].fmt(), c["flat_vs_dict"].fmt()] for c in cases]
    report.table("Weight sync: publish -> fetch (other actor, same node) -> load into the engine", [
        "model", "mode", "params", "MB", "memcpy GB/s", "sync ms", "sync GB/s", "sync / memcpy", "put / memcpy",
        "load / memcpy", "torch copy_ / memcpy", "fetch ms", "incl. export / memcpy", "flat vs torch-dict put+get"], rows)
    report.data["cases"] = cases
    goal(report, cases)
    plot(report, cases)
    report.save()


def goal(report: common.Report, cases: list[dict[str, Any]]) -> None:
    full = [c for c in cases if c["mode"] == "full"]
    worst = min(full, key=lambda c: c["sync_vs_memcpy"].median)
    met = all(c["sync_vs_memcpy"].median >= 0.5 for c in full)
    report.goals.append(common.Goal(
        "full-weight sync >= 0.5 of memcpy (publish+fetch+load, one node)", ">= 0.5 for every size",
        ", ".join(f"{c['model']} {c['sync_vs_memcpy'].fmt()}" for c in full), met,
        "" if met else f"worst {worst['model']}: sync makes two copies (learner -> shared memory in ray.put, shared "
        "memory -> engine parameters in load), so 0.5 is its ceiling. Put reaches "
        f"{worst['put_vs_memcpy'].fmt()} of memcpy (it also faults in fresh shared-memory pages); load reaches "
        f"{worst['load_vs_memcpy'].fmt()}: it copies tensor by tensor with np.copyto into the parameters' numpy "
        "views (torch `copy_` at one thread ran at "
        f"{worst['torch_copy_vs_memcpy'].fmt()} of memcpy on the same bytes in this run), one call per tensor "
        "and into pages the engine has not touched since its last load; past 0.5 needs the engine to use the "
        "shared buffers as its (read-only) parameters instead of copying them",
    ))
    lora = [c for c in cases if c["mode"] == "lora"]
    report.notes.append(
        "LoRA-only payloads are small (" + ", ".join(f"{c['model']} {c['bytes'] / 1e6:.1f} MB" for c in lora)
        + "): their sync time is the fixed cost of a put, an actor call and W = W0 + s*B@A over the adapted "
        "matrices, so their 'GB/s' is not a bandwidth; compare their 'sync ms' with the full rows.")
    report.notes.append("'incl. export' adds PolicyLearner.export_weights: export_state clones every tensor, then "
                        "pack_tensors copies it into the flat buffer (two more copies; the clone could be skipped "
                        "by packing straight from the parameters).")


def plot(report: common.Report, cases: list[dict[str, Any]]) -> None:
    fig, axes = common.new_figure(2)
    for mode, ax in zip(("full", "lora"), axes):
        sel = [c for c in cases if c["mode"] == mode]
        xs = [c["params"] / 1e6 for c in sel]
        common.errorbar(ax, xs, [c["memcpy_gbps"] for c in sel], "memcpy")
        common.errorbar(ax, xs, [c["sync_gbps"] for c in sel], "publish+fetch+load")
        ax.set(xscale="log", yscale="log", xlabel="model parameters (M)", ylabel="GB/s (payload bytes)",
               title=f"weight sync, {mode}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(report.png_path(), dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10M model only, 2 repetitions (results/quick/)")
    parser.add_argument("--cache", help="directory for the built models (default: a fresh temp dir)")
    parser.add_argument("--object-store-gib", type=float, default=5.0, help="Ray object store size (500M fp32 = 2 GB)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
