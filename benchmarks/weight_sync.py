"""Weight sync against the memory-bandwidth limit: export (pack) -> publish (`ray.put`) -> fetch
(`ray.get` in another actor on the same node) -> serve in the engine, for Qwen2-VL models of ~10M to
~500M parameters, full weights and LoRA adapters only.

Everything runs through the project's own code: `PolicyLearner.export_weights` (learner side),
`sync.weights.publish_weights` / `fetch_weights`, and `HFEngine.load_weights` inside a Ray actor.
Measured side by side in each repetition: memcpy, `np.copyto` of the same number of bytes into an
already-touched buffer (the physical limit of one copy on this machine).

Copy arithmetic (issue 17): export is one copy (parameters -> the publish buffer, no clone); publish is
one copy (that buffer -> shared memory, `ray.put`); fetch maps the shared memory (no copy on one node);
load makes the engine's parameters read-only views of it (no copy; `engines/served.py`), and a LoRA
update swaps the adapters of unmerged LoRA hooks. So publish+fetch+load is one copy: its ceiling is 1.0
of memcpy. The first repetitions touch fresh object-store pages and are not recorded (`--warmup`); the
table gives the median, the range and every repetition, so slow puts (the store's reuse of freed memory
as versions come and go) show as outliers instead of hiding in a mean.

    .venv/bin/python benchmarks/weight_sync.py [--quick] [--sizes 150M,500M] [--reps 10]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (sets the offline/one-thread environment before torch is imported)

import numpy as np  # noqa: E402
import ray  # noqa: E402

from medgr2_ray.config import GRPOConfig, LearnerConfig, LoraConfig, ModelConfig, TinyModelConfig  # noqa: E402
from medgr2_ray.learner.policy import PolicyLearner  # noqa: E402
from medgr2_ray.models.tiny import ensure_model_dir  # noqa: E402
from medgr2_ray.sync.weights import object_store_bytes_used, publish_weights  # noqa: E402
from medgr2_ray.types import WeightVersion  # noqa: E402

GB = 1e9
LORA = LoraConfig(enabled=True, r=8, alpha=16)
GOAL_FULL = 0.9  # full-weight sync / memcpy, medians, at 150M and 500M
GOAL_LORA = 0.10  # LoRA sync ms / full sync ms at 500M
GOAL_SIZES = ("150M", "500M")


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
    copied_bytes: int
    num_bytes: int


@ray.remote(num_cpus=1)
class SyncReader:
    """A rollout-actor stand-in: holds an HF engine and takes published weights into it."""

    def __init__(self, model_dir: str, model_cfg: ModelConfig) -> None:
        import common as _  # noqa: F401  (offline env in the worker)
        import torch

        from medgr2_ray.config import EngineConfig
        from medgr2_ray.engines.hf import HFEngine

        torch.set_num_threads(1)
        self.engine = HFEngine(model_dir, model_cfg, EngineConfig(max_batch_size=1), seed=0)

    def fetch_and_load(self, weights: WeightVersion) -> ReaderTiming:
        from medgr2_ray.sync.weights import fetch_weights

        fetch_s, flat = common.timed(lambda: fetch_weights(weights))
        load_s, _ = common.timed(lambda: self.engine.load_weights(flat, weights.version))
        return ReaderTiming(fetch_s, load_s, self.engine.last_load.copied_bytes, flat.num_bytes)


class Memcpy:
    """The physical limit, measured beside each version: `np.copyto` (libc memcpy) of the bytes just
    packed (warm: export wrote them) into a destination touched once per case, so the baseline pays no
    page faults and holds one extra copy of the weights, not two."""

    def __init__(self) -> None:
        self.dst: np.ndarray | None = None

    def seconds(self, src: np.ndarray) -> float:
        """One copy of `src`'s bytes."""
        flat = src.view(np.uint8).reshape(-1)
        if self.dst is None or self.dst.nbytes < flat.nbytes:
            self.dst = np.zeros(flat.nbytes, dtype=np.uint8)
        dst = self.dst[: flat.nbytes]
        return common.timed(lambda: np.copyto(dst, flat))[0]


def measure_case(model_dir: Path, model_cfg: ModelConfig, reps: int, warmup: int) -> dict[str, list[float]]:
    """Every stage and the memcpy baseline, `reps` times after `warmup` unrecorded versions, for one
    model and one mode (full or LoRA)."""
    learner = PolicyLearner(model_dir, model_cfg, LearnerConfig(), GRPOConfig(kl_coef=0.0), seed=0)
    reader = SyncReader.remote(str(model_dir), model_cfg)
    ray.get(reader.__ray_ready__.remote())
    memcpy = Memcpy()
    keys = ("export", "put", "fetch", "load", "memcpy", "copied", "store_mb")
    out: dict[str, list[float]] = {k: [] for k in keys}
    for version in range(1, warmup + reps + 1):
        export_s, flat = common.timed(learner.export_weights)
        put_s, published = common.timed(partial(publish_weights, flat, version))
        num_bytes = flat.num_bytes
        memcpy_s = sum(memcpy.seconds(buffer) for buffer in flat.buffers.values())
        del flat  # the learner's packed buffer: the store holds the version now
        timing = ray.get(reader.fetch_and_load.remote(published))
        del published  # as the controller does: only the engine holds the version from here on
        gc.collect()
        if version <= warmup:
            continue
        for key, value in (("export", export_s), ("put", put_s), ("fetch", timing.fetch_s), ("load", timing.load_s),
                           ("memcpy", memcpy_s), ("copied", float(timing.copied_bytes)),
                           ("store_mb", object_store_bytes_used() / 1e6)):
            out[key].append(value)
    out["bytes"] = [float(num_bytes)]
    out["params"] = [float(sum(p.numel() for p in learner.model.parameters()))]
    ray.kill(reader)
    del learner, memcpy
    gc.collect()
    return out


def summarize_case(name: str, mode: str, m: dict[str, list[float]]) -> dict[str, Any]:
    """GB/s per stage and ratios to memcpy, per repetition, summarised."""
    nbytes = m["bytes"][0]
    gbps = lambda secs: [nbytes / GB / s for s in secs]  # noqa: E731
    sync = [p + f + l for p, f, l in zip(m["put"], m["fetch"], m["load"])]
    full = [e + s for e, s in zip(m["export"], sync)]
    ratios = [c / s for c, s in zip(m["memcpy"], sync)]
    return {
        "model": name, "mode": mode, "params": m["params"][0], "bytes": nbytes,
        "memcpy_gbps": common.summarize(gbps(m["memcpy"])),
        "sync_gbps": common.summarize(gbps(sync)),
        "sync_ms": common.summarize([s * 1e3 for s in sync]),
        "sync_vs_memcpy": common.ratio_stat(m["memcpy"], sync),
        "sync_vs_memcpy_reps": ratios,
        "with_export_vs_memcpy": common.ratio_stat(m["memcpy"], full),
        "export_vs_memcpy": common.ratio_stat(m["memcpy"], m["export"]),
        "put_vs_memcpy": common.ratio_stat(m["memcpy"], m["put"]),
        "fetch_ms": common.summarize([s * 1e3 for s in m["fetch"]]),
        "load_ms": common.summarize([s * 1e3 for s in m["load"]]),
        "copied_mb": max(m["copied"]) / 1e6,
        "store_mb": common.summarize(m["store_mb"]),
        "raw": m,
    }


def _reps(values: list[float]) -> str:
    """Every repetition's ratio, in order (outliers stay visible)."""
    return " ".join(f"{v:.2f}" for v in values)


def run(args: argparse.Namespace) -> None:
    common.single_thread()
    sizes = args.sizes.split(",") if args.sizes else (["10M"] if args.quick else ["150M", "500M"])
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        raise SystemExit(f"--sizes: unknown {unknown}; choose from {sorted(SIZES)}")
    reps = args.reps or (3 if args.quick else 10)
    report = common.Report("weight_sync", args.quick, {
        "sizes": {s: SIZES[s].model_dump() for s in sizes}, "reps": reps, "warmup": args.warmup,
        "lora": LORA.model_dump(), "object_store_memory_gib": args.object_store_gib, "dtype": "float32",
    })
    ray.init(num_cpus=2, object_store_memory=int(args.object_store_gib * 2**30), include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent)}}, log_to_driver=False)
    cache = Path(args.cache or tempfile.mkdtemp(prefix="medgr2-bench-"))
    cases = []
    for size in sizes:
        for mode, lora in (("full", LoraConfig()), ("lora", LORA)):
            cfg = ModelConfig(tiny=SIZES[size], lora=lora)
            model_dir = ensure_model_dir(ModelConfig(tiny=SIZES[size]), cache, seed=0, role="policy")
            case = summarize_case(size, mode, measure_case(model_dir, cfg, reps, args.warmup))
            print(f"{size} {mode}: sync {case['sync_ms'].fmt()} ms, {case['sync_vs_memcpy'].fmt()} of memcpy "
                  f"(reps {_reps(case['sync_vs_memcpy_reps'])})", flush=True)
            cases.append(case)
    ray.shutdown()
    rows = [[c["model"], c["mode"], f"{c['params'] / 1e6:.0f}M", f"{c['bytes'] / 1e6:.1f}", c["memcpy_gbps"].fmt(),
             c["sync_ms"].fmt(), c["sync_vs_memcpy"].fmt(), _reps(c["sync_vs_memcpy_reps"]), c["put_vs_memcpy"].fmt(),
             c["fetch_ms"].fmt(), c["load_ms"].fmt(), f"{c['copied_mb']:.1f}", c["export_vs_memcpy"].fmt(),
             c["with_export_vs_memcpy"].fmt(), c["store_mb"].fmt()] for c in cases]
    report.table("Weight sync: publish -> fetch (other actor, same node) -> serve in the engine", [
        "model", "mode", "params", "MB", "memcpy GB/s", "sync ms", "sync / memcpy", "sync / memcpy, each rep",
        "put / memcpy", "fetch ms", "load ms", "load copied MB", "export / memcpy", "incl. export / memcpy",
        "store MB after"], rows)
    report.data["cases"] = cases
    goals(report, cases)
    plot(report, cases)
    report.save()


def goals(report: common.Report, cases: list[dict[str, Any]]) -> None:
    """The issue's two goals on whichever sizes ran (the committed run has 150M and 500M)."""
    full = {c["model"]: c for c in cases if c["mode"] == "full"}
    lora = {c["model"]: c for c in cases if c["mode"] == "lora"}
    judged = [full[s] for s in GOAL_SIZES if s in full] or list(full.values())
    met = all(c["sync_vs_memcpy"].median >= GOAL_FULL for c in judged)
    slow = {c["model"]: sum(r < GOAL_FULL for r in c["sync_vs_memcpy_reps"]) for c in judged}
    report.goals.append(common.Goal(
        f"full-weight sync >= {GOAL_FULL} of memcpy (publish+fetch+load, one node, medians)",
        f">= {GOAL_FULL} at " + " and ".join(GOAL_SIZES),
        ", ".join(f"{c['model']} {c['sync_vs_memcpy'].fmt()} ({slow[c['model']]} of {len(c['sync_vs_memcpy_reps'])} "
                  f"reps below {GOAL_FULL})" for c in judged), met,
        "" if met else "the engine serves the published buffers (load copies "
        + ", ".join(f"{c['model']} {c['copied_mb']:.0f} MB" for c in judged) + "), so what remains is the put: "
        + ", ".join(f"{c['model']} {c['put_vs_memcpy'].fmt()} of memcpy" for c in judged)
        + "; a put into object-store pages not touched since they were freed pays page faults",
    ))
    size = next((s for s in reversed(GOAL_SIZES) if s in full and s in lora), None)
    if size is None:
        size = max((s for s in full if s in lora), key=lambda s: full[s]["bytes"], default=None)
    if size is not None:
        share = lora[size]["sync_ms"].median / full[size]["sync_ms"].median
        report.goals.append(common.Goal(
            f"LoRA sync at {size} <= {GOAL_LORA:.0%} of the full-weight sync (same run)", f"<= {GOAL_LORA:.0%}",
            f"{share:.1%} (LoRA {lora[size]['sync_ms'].fmt()} ms, {lora[size]['bytes'] / 1e6:.1f} MB; full "
            f"{full[size]['sync_ms'].fmt()} ms)", share <= GOAL_LORA,
            "" if share <= GOAL_LORA else "a LoRA update costs a put, a fetch and swapping the unmerged adapters; "
            f"load {lora[size]['load_ms'].fmt()} ms, fetch {lora[size]['fetch_ms'].fmt()} ms",
        ))
    report.notes.append(
        "Copies per update: export (pack straight from the parameters into the publish buffer) is one copy, "
        "export / memcpy " + ", ".join(f"{c['model']} {c['export_vs_memcpy'].fmt()}" for c in full.values())
        + " (it writes a freshly allocated buffer, so it also pays that buffer's page faults); publish is one "
        "copy; fetch and load copy nothing ('load copied MB' is what the engine copied: 0 when it serves "
        "the buffers as views).")
    report.notes.append(
        "LoRA updates swap the adapters of unmerged LoRA hooks (x @ W0^T + s * (x @ A^T) @ B^T) instead of "
        "rebuilding W0 + s*B@A for every adapted matrix, so their cost follows the adapter's size ("
        + ", ".join(f"{c['model']} {c['bytes'] / 1e6:.1f} MB" for c in lora.values()) + ").")
    report.notes.append("'store MB after': object-store bytes after each recorded version was served and the "
                        "driver let go: one version (the one the engine serves), not a growing pile.")


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
    parser.add_argument("--quick", action="store_true", help="10M model only, 3 repetitions (results/quick/)")
    parser.add_argument("--sizes", help=f"comma-separated model sizes among {sorted(SIZES)} (default 150M,500M)")
    parser.add_argument("--reps", type=int, help="recorded repetitions per case (default 10; 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=2, help="unrecorded versions first (touch the store's pages)")
    parser.add_argument("--cache", help="directory for the built models (default: a fresh temp dir)")
    parser.add_argument("--object-store-gib", type=float, default=7.0,
                        help="Ray object store size (500M fp32 = 2 GB; a served, a new and a freeing version)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
