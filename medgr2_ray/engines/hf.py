"""The Hugging Face rollout engine: batched VLM sampling with a KV cache, behaviour log-probs, and
weight updates without a rebuild: it serves published buffers as its parameters (read-only views, no
copy, on the CPU) and LoRA adapters unmerged (`engines/served.py`). The CPU default; it runs unchanged
on a GPU (one bucketed host -> device copy per update).

Why our own decode loop instead of `model.generate`: we need (1) the log-probs of the distribution
actually sampled from (see `engines/base.py`), (2) explicit M-RoPE positions identical to the
learner's teacher-forced forward (`models/processing.py`), (3) sampling that ignores whatever
generation_config.json a checkpoint ships (Qwen's sets repetition penalties), and (4) a private,
seedable RNG. The loop is a prefill over the left-padded prompts, then one token per step through
the KV cache; a finished row keeps feeding padding, masked out, until the batch is done.

A request with n > 1 samples is encoded and prefilled once: its image goes through the image processor
and the vision tower once, and its prompt's KV cache is copied to its n rows for decoding (as vLLM's
prefix caching does for parallel sampling). GRPO's groups are exactly that, so generation costs about one
prompt per group plus the decoding, not one per completion.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medgr2_ray.config import EngineConfig, ModelConfig
from medgr2_ray.engines.served import LoadStats, UnmergedLora, serve_tensors
from medgr2_ray.models.loading import load_vlm
from medgr2_ray.models.logprobs import kv_cache_argument
from medgr2_ray.models.processing import VLMInputs, distinct_requests, encode_prompts, forward_kwargs
from medgr2_ray.sync.flat import unpack_tensors
from medgr2_ray.types import FlatWeights, GenerationRequest, Rollout, SamplingParams

log = logging.getLogger(__name__)

_LORA_NAME = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def processed_logprobs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """log_softmax of logits after temperature, top-k, then top-p (removed tokens get -inf).

    Greedy (temperature <= 0) returns the plain log_softmax (temperature 1, no truncation).
    """
    if temperature <= 0:
        return torch.log_softmax(logits.float(), dim=-1)
    scaled = logits.float() / temperature
    if 0 < top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass (keeps >= 1).
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return torch.log_softmax(scaled, dim=-1)


@dataclass
class _Row:
    """Decoding state of one batch row."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str = "length"
    done: bool = False


def _first_stop(text: str, stop: Sequence[str]) -> int | None:
    """Index of the earliest stop string in text, or None."""
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return min(hits) if hits else None


class HFEngine:
    """`RolloutEngine` on transformers models (see engines/base.py for the contract)."""

    def __init__(self, model_dir: str | Path, model_cfg: ModelConfig, engine_cfg: EngineConfig, seed: int = 0):
        self.loaded = load_vlm(model_dir, model_cfg.dtype, model_cfg.trust_remote_code)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = self.loaded.model.to(self.device).eval()
        self.model_cfg = model_cfg
        self.engine_cfg = engine_cfg
        self.seed = seed
        self.weight_version = 0
        self._calls = 0
        self._views: set[str] = set()  # state keys now served as views of published buffers
        self._lora = UnmergedLora()  # adapters applied in the forward pass, W0 untouched
        # The newest full and LoRA versions served, held so their buffers (views point into them) stay
        # alive until replaced. Each view also holds its own buffer (torch.from_numpy keeps the array),
        # so a partial update never frees what other parameters still serve.
        self._held: dict[str, FlatWeights] = {}
        self.last_load = LoadStats()
        tok = self.loaded.tokenizer
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) | {tok.eos_token_id}
        self._eos_ids = {int(i) for i in eos_ids if i is not None}
        self._pad_id = int(tok.pad_token_id)
        self._cache_arg = kv_cache_argument(self.model)

    # ---- generation -------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingParams) -> list[Rollout]:
        """`sampling.n` rollouts per request, ordered by request then sample index."""
        if sampling.n < 1 or sampling.max_new_tokens < 1:
            raise ValueError(f"SamplingParams: n and max_new_tokens must be >= 1 (got {sampling})")
        seed = sampling.seed if sampling.seed is not None else self.seed * 1_000_003 + self._calls
        self._calls += 1
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        rows = [(request, index) for request in requests for index in range(sampling.n)]
        out: list[Rollout] = []
        size = self.engine_cfg.max_batch_size
        for start in range(0, len(rows), size):
            out.extend(self._generate_batch(rows[start : start + size], sampling, generator))
        return out

    def _generate_batch(
        self, rows: Sequence[tuple[GenerationRequest, int]], sampling: SamplingParams, generator: torch.Generator
    ) -> list[Rollout]:
        distinct, row_of = distinct_requests([request for request, _ in rows])
        inputs = encode_prompts(self.loaded, distinct).to(self.device)
        states = self._decode(inputs, row_of, sampling, generator)
        prompt_ids = [tuple(inputs.row_token_ids(u)) for u in range(inputs.batch_size)]
        rollouts = []
        for b, ((request, index), state) in enumerate(zip(rows, states)):
            text = self.loaded.tokenizer.decode(state.tokens, skip_special_tokens=True)
            cut = _first_stop(text, sampling.stop)
            rollouts.append(Rollout(
                request_id=request.request_id, index=index, prompt_token_ids=prompt_ids[row_of[b]],
                completion_token_ids=tuple(state.tokens), text=text if cut is None else text[:cut],
                logprobs=np.asarray(state.logprobs, dtype=np.float32), finish_reason=state.finish,
                weight_version=self.weight_version,
            ))
        return rollouts

    @torch.no_grad()
    def _decode(
        self, inputs: VLMInputs, row_of: Sequence[int], sampling: SamplingParams, generator: torch.Generator
    ) -> list[_Row]:
        """Prefill the distinct prompts, give row b the KV cache of prompt `row_of[b]`, then sample token by
        token through the cache until every row is done."""
        batch = len(row_of)
        index = torch.tensor(list(row_of), dtype=torch.long, device=self.device)
        out = self.model(**forward_kwargs(inputs), use_cache=True, logits_to_keep=1)
        cache = getattr(out, self._cache_arg)
        cache.batch_select_indices(index)
        logits = out.logits[:, -1].index_select(0, index)
        attention = inputs.attention_mask.index_select(0, index)
        next_position = inputs.next_text_position().index_select(0, index)
        states = [_Row() for _ in range(batch)]
        for step in range(sampling.max_new_tokens):
            logp = processed_logprobs(logits, sampling.temperature, sampling.top_k, sampling.top_p)
            if sampling.temperature <= 0:
                tokens = logp.argmax(-1)
            else:
                tokens = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
            picked = logp.gather(-1, tokens[:, None]).squeeze(-1).tolist()
            for b, state in enumerate(states):
                if not state.done:
                    self._advance(state, int(tokens[b]), picked[b], sampling.stop)
            if all(s.done for s in states) or step == sampling.max_new_tokens - 1:
                break
            done = torch.tensor([s.done for s in states], device=self.device)
            feed = torch.where(done, torch.full_like(tokens, self._pad_id), tokens)
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            positions = (next_position + step).view(1, batch, 1).expand(3, batch, 1)
            out = self.model(input_ids=feed[:, None], attention_mask=attention, position_ids=positions,
                             use_cache=True, **{self._cache_arg: cache})
            cache, logits = getattr(out, self._cache_arg), out.logits[:, -1]
        return states

    def _advance(self, state: _Row, token: int, logprob: float, stop: Sequence[str]) -> None:
        """Append one sampled token to a row and decide whether the row is finished."""
        state.tokens.append(token)
        state.logprobs.append(logprob)
        if token in self._eos_ids:
            state.finish, state.done = "stop", True
        elif stop and _first_stop(self.loaded.tokenizer.decode(state.tokens, skip_special_tokens=True), stop) is not None:
            state.finish, state.done = "stop", True

    # ---- weights ----------------------------------------------------------------------------
    @torch.no_grad()
    def load_weights(self, weights: FlatWeights, version: int) -> None:
        """Serve new weights without a rebuild: full tensors as views of `weights`' buffers where the
        dtype matches on the CPU (else one copy, bucketed to a GPU), LoRA adapters unmerged on the
        kept W0 (`engines/served.py`). `weights` is held until the next update replaces it."""
        named = unpack_tensors(weights)
        if weights.lora_only:
            self.last_load = self._apply_lora(named)
            self._held["lora"] = weights
        else:
            self.last_load = self._serve_full(named)
            self._held = {"full": weights}  # adapters were dropped with the old base
        self.weight_version = int(version)
        log.info("engine loaded weight version %d (%s, %d tensors, %d bytes viewed, %d copied)", version,
                 "LoRA" if weights.lora_only else "full", len(named), self.last_load.viewed_bytes,
                 self.last_load.copied_bytes)

    def _serve_full(self, named: dict[str, torch.Tensor]) -> LoadStats:
        state = self.model.state_dict(keep_vars=True)
        targets: dict[str, torch.Tensor] = {}
        for name, tensor in named.items():
            key = name.removeprefix("base_model.model.").replace(".base_layer.", ".")
            if key not in state:
                raise KeyError(f"weight '{name}' is not a parameter of the engine's model "
                               f"({type(self.model).__name__}); export merged full weights or LoRA only")
            if tuple(state[key].shape) != tuple(tensor.shape):
                raise ValueError(f"weight '{name}': shape {tuple(tensor.shape)} != engine {tuple(state[key].shape)}")
            targets[key] = tensor
        # Validated first: a bad update changes nothing. New full weights are the base of any later LoRA
        # update, so adapters served on the old base are dropped (as a merged copy would overwrite them).
        self._lora.clear()
        return serve_tensors(state, targets, self._views)

    def _apply_lora(self, named: dict[str, torch.Tensor]) -> LoadStats:
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for name, tensor in named.items():
            match = _LORA_NAME.match(name)
            if match is None:
                raise KeyError(f"LoRA weight '{name}' is not a lora_A/lora_B matrix name")
            pairs.setdefault(match["module"], {})[match["ab"]] = tensor
        modules = dict(self.model.named_modules())
        lora = self.model_cfg.lora
        for path, ab in pairs.items():
            if set(ab) != {"A", "B"} or path not in modules or not isinstance(modules[path], torch.nn.Linear):
                raise KeyError(f"LoRA update for '{path}' needs lora_A and lora_B of an existing linear module")
            if ab["A"].shape[0] != lora.r:
                raise ValueError(f"LoRA rank {ab['A'].shape[0]} of '{path}' != model config lora.r={lora.r}")
            weight = modules[path].weight
            if (ab["B"].shape[0], ab["A"].shape[1]) != tuple(weight.shape) or ab["B"].shape[1] != lora.r:
                raise ValueError(f"LoRA B@A of '{path}' has shape {(ab['B'].shape[0], ab['A'].shape[1])}, "
                                 f"weight {tuple(weight.shape)}")
        return self._lora.update(modules, {p: (ab["A"], ab["B"]) for p, ab in pairs.items()}, lora.alpha / lora.r)
