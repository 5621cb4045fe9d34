"""The rollout-engine protocol every backend (HF, vLLM) implements, and its numeric contract.

Contract on behaviour log-probs (agreed between the engines and the learner; tests hold both to it):

* `Rollout.logprobs[i]` is the log-probability of completion token i under the distribution the
  engine actually sampled it from: log_softmax(processed logits), where processing is
  temperature scaling, then top-k, then top-p (tokens outside the kept set get -inf, the rest is
  renormalised). For the GRPO default (top_k=0, top_p=1) this equals exactly what the learner
  computes: log_softmax(logits / temperature)[token] (`models.processing.completion_logprobs`).
  With top-k/top-p active the engine's number is the renormalised truncated distribution, so the
  learner's temperature-only log-prob is smaller or equal; the importance ratio then also corrects
  for the truncation (which is what an off-policy correction should see).
* Greedy decoding (temperature <= 0) reports log-probs at temperature 1 without truncation
  (the model's plain distribution), as vLLM's processed log-probs do.
* vLLM: use `logprobs_mode="processed_logprobs"` so its numbers follow this contract.
* The end-of-sequence token, when generated, is part of `completion_token_ids` and has a log-prob
  (the learner must learn to stop); it is not part of `text`. A stop string ends generation: the
  token that completed it is kept in the ids, the text is cut before the stop string.
* Prompt token ids are the model's input ids without padding, image placeholders expanded, built
  by `models.processing.encode_prompts`, so the learner re-creates the same sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from medgr2_ray.types import FlatWeights, GenerationRequest, Rollout, SamplingParams


@runtime_checkable
class RolloutEngine(Protocol):
    """Generates completions for chat prompts with images and takes weight updates in place."""

    weight_version: int
    """The version of the weights currently loaded (0 for the weights the engine started with)."""

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingParams) -> list[Rollout]:
        """`sampling.n` rollouts per request, ordered by request then sample index."""
        ...

    def load_weights(self, weights: FlatWeights, version: int) -> None:
        """Replace the weights without a rebuild: full tensors, or LoRA adapters applied on the engine's
        base weights (W = W0 + scale * B @ A; repeated updates never compound). An engine may serve
        `weights`' buffers themselves (then it keeps them until the next update and never writes them).
        Sets `weight_version`."""
        ...
