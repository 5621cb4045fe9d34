"""How gradients become parameter updates: plain torch data parallel, or DeepSpeed ZeRO.

Both strategies share one contract, so the objectives in `policy.py`/`reward.py` never branch on the
strategy:

* the caller runs forward through `strategy.module` and calls `backward(loss)` once per micro-batch,
  where `loss` is already divided by the *global* normaliser (tokens or sequences over all micro-batches
  and all ranks), so gradients must be **summed** over micro-batches and ranks, never averaged;
* `step()` then reduces, clips to `max_grad_norm`, applies AdamW and advances the warm-up + schedule;
* every rank must call `backward` the same number of times per step (ZeRO-2/3 reduce inside backward):
  `microbatch.synced_micro_batch_count` pads the short ranks with zero-weight micro-batches.

The torch strategy reduces gradients with one flat `all_reduce` at the step instead of wrapping the
model in DDP: DDP needs `find_unused_parameters` for text-only batches (the vision tower gets no
gradient) and averages where our global normaliser wants a sum; one all-reduce at the boundary is what
DDP with `no_sync` over the accumulation would do anyway. The process group (gloo on CPU, NCCL on GPU)
is initialised by the caller — a Ray learner actor per rank; DeepSpeed with one rank makes its own.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Protocol

import torch
import torch.distributed as dist

from medgr2_ray.config import LearnerConfig
from medgr2_ray.learner.zero3 import install_vision_keepalive

# Fields of a DeepSpeed ZeRO optimizer state_dict that hold live objects (loss scaler, enums, fragment
# maps derived from the parameter layout): they are
# not stored; on load they come from the freshly built optimizer's own state_dict.
_DS_LIVE_KEYS = ("loss_scaler", "zero_stage", "ds_version", "param_slice_mappings")


def lr_multiplier(cfg: LearnerConfig) -> Callable[[int], float]:
    """Learning-rate multiplier of optimizer step `s`: linear warm-up, then constant/cosine/linear decay."""

    def multiplier(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / (cfg.warmup_steps + 1)  # never exactly 0: step 0 must still learn
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, cfg.schedule_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


class Strategy(Protocol):
    """What a learner needs from a training strategy (see the module docstring for the contract)."""

    module: torch.nn.Module  # call this for training forwards (DeepSpeed's engine wraps the model)

    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> float: ...
    def lr(self) -> float: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def gathered_parameters(self) -> Any: ...  # a context in which every parameter is whole (ZeRO-3)
    def new_stage(self, cfg: LearnerConfig) -> None: ...  # a new training stage: its own rate and schedule


def _world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class TorchStrategy:
    """AdamW + LambdaLR on the trainable parameters; gradients summed over ranks by one flat all-reduce."""

    def __init__(self, model: torch.nn.Module, cfg: LearnerConfig, world_size: int = 1) -> None:
        self.module = model
        self.cfg = cfg
        self.world_size = world_size
        if world_size > 1 and _world()[1] != world_size:
            raise RuntimeError(
                f"learner world_size={world_size} but torch.distributed is "
                f"{'not initialised' if _world()[1] == 1 else f'of size {_world()[1]}'}; "
                "initialise the process group (gloo/NCCL) on every rank before building the learner"
            )
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters (is LoRA targeting existing modules?)")
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(cfg))

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate this micro-batch's gradient (the loss carries the global normaliser)."""
        loss.backward()

    def _all_reduce_grads(self) -> None:
        """Sum gradients over ranks in one flat buffer (a missing grad counts as zeros)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def step(self) -> float:
        """Reduce, clip, update, advance the schedule; returns the pre-clip global gradient norm."""
        if self.world_size > 1:
            self._all_reduce_grads()
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def lr(self) -> float:
        """The learning rate the next step will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Optimizer and schedule state (identical on every rank)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def gathered_parameters(self) -> Any:
        """Parameters are always whole here."""
        return nullcontext()

    def new_stage(self, cfg: LearnerConfig) -> None:
        """Start a new training stage (SFT -> GRPO) on the same weights: a fresh AdamW and schedule with
        `cfg`'s rate, as if the stage had built its own learner from the last stage's weights."""
        self.cfg = cfg
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(cfg))


class DeepSpeedStrategy:
    """DeepSpeed ZeRO stage 0-3 around the same AdamW and schedule (import deferred to construction)."""

    def __init__(self, model: torch.nn.Module, cfg: LearnerConfig, world_size: int = 1, local_rank: int = 0) -> None:
        import deepspeed  # the optional `deepspeed` extra

        deepspeed.utils.logger.setLevel(logging.WARNING)
        if not torch.cuda.is_available():
            # DeepSpeed's CPU accelerator JIT-compiles a shared-memory all-reduce op (~70 s) on first use.
            # Gloo does the same reductions; marking the op incompatible makes DeepSpeed fall back to it.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        # DeepSpeed insists on LOCAL_RANK even when the process group already exists (it picks the device).
        os.environ.setdefault("LOCAL_RANK", str(local_rank))
        if not dist.is_initialized():
            if world_size != 1:
                raise RuntimeError("DeepSpeed with world_size > 1 needs the caller to initialise torch.distributed")
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        self.cfg = cfg
        self.world_size = world_size
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg))
        dtype = next(model.parameters()).dtype
        ds_config = {
            "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
            "gradient_accumulation_steps": 1,
            # We own the accumulation boundary: the number of micro-batches varies per step.
            "managed_gradient_accumulation": False,
            "gradient_clipping": cfg.max_grad_norm,
            "zero_optimization": {"stage": cfg.zero_stage},
            "bf16": {"enabled": dtype == torch.bfloat16},
            "fp16": {"enabled": dtype == torch.float16},
            "steps_per_print": 1 << 30,
            "wall_clock_breakdown": False,
        }
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        self.module = self.engine
        self._params = params
        self._zero3 = cfg.zero_stage == 3
        self._touch: torch.Tensor | None = None
        self.engine.register_forward_pre_hook(self._before_forward)
        # ZeRO-3 all-gathers a module's parameters when it runs: a rank whose micro-batch has no image
        # would skip the vision tower's gathers while the others join them (learner/zero3.py).
        self.vision_keepalive = install_vision_keepalive(model) if self._zero3 and world_size > 1 else None

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate; DeepSpeed averages over ranks, so scale by world size to get our sum."""
        if self._touch is not None:
            loss = loss + self._touch
            self._touch = None
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def _before_forward(self, *_: Any) -> None:
        """Build the zero-valued "touch" of every parameter *before* the model's forward (see below).

        ZeRO-2 reduces gradients from per-parameter hooks into buckets, in the order the hooks fire, and
        assumes that order is the same on every rank. It is not when ranks run different parameters (the
        vision tower on an image micro-batch, not on a text-only one): buckets then pair up the wrong
        parameters and the sums are silently wrong. Adding 0 * (one element of every parameter) to the
        loss gives every parameter a gradient on every rank; building that term before the forward gives
        its autograd nodes the lowest sequence numbers, so they run last in backward and every
        parameter's hook fires at the end, in parameter-list order, identically on all ranks.
        """
        if self.world_size > 1 and not self._zero3 and torch.is_grad_enabled():
            self._touch = 0.0 * torch.stack([p.reshape(-1)[0] for p in self._params]).sum()

    def step(self) -> float:
        """DeepSpeed reduces, clips, updates and steps the scheduler at this boundary."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def lr(self) -> float:
        """The learning rate the next step will use."""
        return float(self.engine.get_lr()[0])

    def state_dict(self) -> dict[str, Any]:
        """This rank's ZeRO partition of optimizer + fp32 master weights, the schedule and counters."""
        opt = {k: v for k, v in self.optimizer.state_dict().items() if k not in _DS_LIVE_KEYS}
        counters = {
            "global_steps": self.engine.global_steps,
            "global_samples": self.engine.global_samples,
            "micro_steps": self.engine.micro_steps,
            "skipped_steps": self.engine.skipped_steps,
        }
        return {"optimizer": opt, "scheduler": self.scheduler.state_dict(), "counters": counters}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore this rank's partition (same world size and ZeRO stage as when saved)."""
        merged = self.optimizer.state_dict()  # supplies the live objects we did not store
        merged.update(state["optimizer"])
        self.optimizer.load_state_dict([merged] * self.world_size, load_optimizer_states=True, load_from_fp32_weights=True)
        self.scheduler.load_state_dict(state["scheduler"])
        for key, value in state["counters"].items():
            setattr(self.engine, key, value)

    def new_stage(self, cfg: LearnerConfig) -> None:
        """Start a new training stage: `cfg`'s rate and a new schedule. DeepSpeed owns the (partitioned)
        AdamW moments, which are kept: only the rate and its schedule start over."""
        self.cfg = cfg
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr
            group["initial_lr"] = cfg.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(cfg))
        self.engine.lr_scheduler = self.scheduler

    @contextmanager
    def gathered_parameters(self) -> Iterator[None]:
        """Under ZeRO-3 parameters are partitioned; gather them whole for export or saving."""
        if not self._zero3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None):
            yield


def build_strategy(model: torch.nn.Module, cfg: LearnerConfig, world_size: int = 1, local_rank: int = 0) -> Strategy:
    """The strategy `cfg.strategy` names, around `model` (already on its device)."""
    if cfg.strategy == "deepspeed":
        try:
            import deepspeed  # noqa: F401  (probe only; DeepSpeedStrategy imports it for use)
        except ImportError as exc:
            raise ImportError(
                "learner.strategy=deepspeed needs DeepSpeed: pip install 'medgr2_ray[deepspeed]' "
                "(DS_BUILD_OPS=0 on CPU); or set learner.strategy=torch"
            ) from exc
        return DeepSpeedStrategy(model, cfg, world_size, local_rank)
    return TorchStrategy(model, cfg, world_size)
