"""The learner core shared by the policy and the reward-model learners: model, strategy, version,
weight export and exact checkpoints. No Ray: a Ray `LearnerActor` builds one of these per rank.

A learner owns one trainable module (a VLM, optionally LoRA-wrapped by PEFT, or a reward model) and a
`Strategy` (plain torch or DeepSpeed ZeRO, see `strategy.py`). `version` counts optimizer steps: it is
the weight version rollouts are tagged with after `export_weights`.

Checkpoint layout (one directory, written by all ranks into a staging directory, then renamed):
    trainer.json                      version, seed, world size, strategy, LoRA flag, caller's `extra`
    model.safetensors                 trainable state (LoRA: adapter (+ heads); full: every weight)
    strategy_rank{r}.safetensors/json optimizer (+ ZeRO partition), schedule, counters of rank r
    rng_rank{r}.safetensors/json      torch/numpy/python RNG states of rank r
No pickle anywhere; loading refuses a checkpoint made with another world size, strategy or LoRA setting.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from medgr2_ray.checkpoint import (
    CheckpointError,
    capture_rng,
    commit_directory,
    load_json,
    load_state,
    load_tensors,
    restore_rng,
    rng_from_state,
    rng_to_state,
    save_json,
    save_state,
    save_tensors,
    staging_directory,
)
from medgr2_ray.config import LearnerConfig
from medgr2_ray.learner.strategy import Strategy, build_strategy
from medgr2_ray.sync.flat import pack_tensors
from medgr2_ray.types import FlatWeights


def select_device(local_rank: int) -> torch.device:
    """cuda:<local_rank> when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def is_peft(model: torch.nn.Module) -> bool:
    """Whether `model` is a PEFT wrapper (then only its adapters train)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def merged_lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's state with every LoRA delta folded in (W0 + scale * B @ A), under base names.

    The model itself is left unmerged, so training continues on the adapters.
    """
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    deltas: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                delta = module.get_delta_weight(adapter)
                deltas[name] = deltas[name] + delta if name in deltas else delta
    state: dict[str, torch.Tensor] = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        module_name = key.rsplit(".", 1)[0]
        if key.endswith(".weight") and module_name in deltas:
            value = value + deltas[module_name].to(value.dtype)
        state[key] = value.detach()
    return state


class Trainer:
    """Model + strategy + version counter + export + checkpoints; subclasses add the objectives."""

    def __init__(
        self, model: torch.nn.Module, learner_cfg: LearnerConfig, seed: int,
        rank: int = 0, world_size: int = 1, local_rank: int | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.cfg = learner_cfg
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = select_device(rank if local_rank is None else local_rank)
        self.model = model.to(self.device)
        self.lora = is_peft(model)
        self.strategy: Strategy = build_strategy(
            self.model, learner_cfg, world_size, rank if local_rank is None else local_rank
        )
        self.version = 0

    # ------------------------------------------------------------ training plumbing

    def _apply_step(self) -> dict[str, float]:
        """Finish an accumulated step: clip, update, schedule; bump the version."""
        lr = self.strategy.lr()
        grad_norm = self.strategy.step()
        self.version += 1
        return {"grad_norm": grad_norm, "lr": lr, "version": float(self.version)}

    def new_stage(self, learner_cfg: LearnerConfig) -> None:
        """Begin a new training stage on the current weights with `learner_cfg`'s rate and schedule (the
        solver's GRPO after its SFT, in the same long-lived learner)."""
        self.cfg = learner_cfg
        self.strategy.new_stage(learner_cfg)

    def trainable_parameters(self) -> dict[str, torch.Tensor]:
        """Parameters the optimizer updates, by name."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------ weight export
    #
    # Export is a *collective*: under DeepSpeed ZeRO-3 every rank holds only a shard of each parameter,
    # and gathering them (`strategy.gathered_parameters`, DeepSpeed's `GatheredParameters`) is an
    # all-gather that every rank of the process group must enter, in the same order. A publish made by
    # rank 0 alone hangs at its first weight update. So every rank calls `export_state`/`export_weights`
    # at the same point of its step; rank 0 gets the weights and publishes them, the others get None.
    # With the torch strategy and ZeRO-0/1/2 the gather is a no-op, but the contract is the same, so a
    # caller written for one strategy is right for all.

    @contextmanager
    def gathered_for_export(self) -> Iterator[bool]:
        """Collective context (every rank enters it together): parameters are whole inside; yields
        whether this rank is the exporter (rank 0), the one rank that should read them."""
        with self.strategy.gathered_parameters():
            yield self.rank == 0

    def _export_tensors(self, merged: bool) -> dict[str, torch.Tensor]:
        """The tensors to ship, as they live (the parameters themselves, no copy): adapters only when
        LoRA, the merged full state when asked, else everything. Valid only inside `gathered_for_export`
        (under ZeRO-3 the parameters are whole only there)."""
        if self.lora and merged:
            return merged_lora_state(self.model)
        if self.lora:
            return {n: p for n, p in self.model.named_parameters() if ".lora_" in n}
        return dict(self.model.state_dict())

    def export_state(self, merged: bool = False) -> dict[str, torch.Tensor] | None:
        """Named CPU tensors to ship, each a copy the caller owns (see `_export_tensors` for which).

        Collective: every rank must call it together (see above); rank 0 gets the tensors, others None."""
        with self.gathered_for_export() as exporter:
            if not exporter:
                return None
            return {n: t.detach().to("cpu").clone() for n, t in self._export_tensors(merged).items()}

    def export_weights(self, merged: bool = False) -> FlatWeights | None:
        """Weights for the rollout engines as `FlatWeights` (LoRA-only unless `merged` or full training).

        Packed straight from the parameters into the publish buffer: one copy per tensor, where
        `export_state` + `pack_tensors` would make two (a clone, then the pack). Collective: every rank of
        the learner must call it at the same point (under ZeRO-3 the export gathers every parameter,
        which all ranks must enter, or they deadlock); rank 0 returns the `FlatWeights` and publishes
        them, every other rank returns None."""
        with self.gathered_for_export() as exporter:
            if not exporter:
                return None
            return pack_tensors(self._export_tensors(merged), lora_only=self.lora and not merged)

    # ------------------------------------------------------------ checkpoints

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must match to be loaded into this learner."""
        return {
            "kind": type(self).__name__,
            "world_size": self.world_size,
            "strategy": self.cfg.strategy,
            "zero_stage": self.cfg.zero_stage if self.cfg.strategy == "deepspeed" else None,
            "lora": self.lora,
        }

    def _model_state(self) -> dict[str, torch.Tensor]:
        """What model.safetensors holds: the trainable parameters (frozen ones come from model_dir)."""
        return self.trainable_parameters()

    def save_checkpoint(self, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write an exact checkpoint to `directory` (all ranks call this together); returns the path."""
        final = Path(directory)
        staged = staging_directory(final)
        if self.rank == 0:
            shutil.rmtree(staged, ignore_errors=True)
            staged.mkdir(parents=True)
        _barrier()
        with self.strategy.gathered_parameters():
            if self.rank == 0:
                save_tensors(staged / "model.safetensors", self._model_state())
        save_state(staged, f"strategy_rank{self.rank}", self.strategy.state_dict())
        save_state(staged, f"rng_rank{self.rank}", rng_to_state(capture_rng()))
        if self.rank == 0:
            meta = {**self._identity(), "version": self.version, "seed": self.seed, "extra": dict(extra or {})}
            save_json(staged / "trainer.json", meta)
        _barrier()
        if self.rank == 0:
            commit_directory(staged, final)
        _barrier()
        return final

    def load_checkpoint(self, directory: str | Path) -> dict[str, Any]:
        """Restore weights, optimizer, schedule, version and RNG; returns the `extra` saved with it."""
        path = Path(directory)
        meta = load_json(path / "trainer.json")
        for key, want in self._identity().items():
            if meta.get(key) != want:
                raise CheckpointError(
                    f"{path}: saved with {key}={meta.get(key)!r} but this learner has {key}={want!r}; "
                    "resume with the configuration the checkpoint was written with"
                )
        tensors = load_tensors(path / "model.safetensors")
        self._load_model_state(tensors, path)
        self.strategy.load_state_dict(load_state(path, f"strategy_rank{self.rank}"))
        self.version = int(meta["version"])
        restore_rng(rng_from_state(load_state(path, f"rng_rank{self.rank}")))
        return dict(meta.get("extra", {}))

    def _load_model_state(self, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
        """Copy saved parameters into the model in place (names and shapes must match exactly)."""
        params = self.trainable_parameters()
        missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
        if missing or unexpected:
            raise CheckpointError(
                f"{path / 'model.safetensors'}: parameter names differ from this model "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it saved from another model?"
            )
        with self._gather_for_write(), torch.no_grad():
            for name, param in params.items():
                saved = tensors[name]
                if tuple(saved.shape) != tuple(param.shape):
                    raise CheckpointError(
                        f"{path / 'model.safetensors'}: '{name}' has shape {tuple(saved.shape)}, "
                        f"the model has {tuple(param.shape)}"
                    )
                param.copy_(saved.to(param.device, param.dtype))

    def _gather_for_write(self) -> Any:
        """A context in which parameters are whole and writes reach every partition (ZeRO-3), else a no-op."""
        if self.cfg.strategy == "deepspeed" and self.cfg.zero_stage == 3:
            import deepspeed

            return deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=0)
        return nullcontext()

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode (no dropout) and no autograd for the duration, restoring the previous mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was_training)
