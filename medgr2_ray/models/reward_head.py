"""The MedGR² reward model R: a VLM backbone plus a scalar regression head, R(image, question, answer).

A verifier head (`VerifierInit`, on by default in the cycle) also reads R's own answer to the sample:
score = head(last hidden state) + verdict_weight * p(stated answer | image, question) (see
`verifier.py` for why). The scalar alone learns which texts are garbled; the verdict carries whether
the answer fits the image.

The head reads the final hidden state (after the backbone's last norm) of the last non-padding
token, which with the chat template is the end of the rendered sample, so left and right padding
give the same score. The head runs in float32 whatever the backbone dtype (a regression target in
[-6, 10] needs no bf16 rounding).

On disk a reward model is an ordinary Hugging Face model directory (the backbone, loadable by
`load_vlm`) plus `reward_head.safetensors` and `reward_head.json`. A LoRA-wrapped backbone is saved
merged, so a reader never needs PEFT.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from medgr2_ray.models.loading import LoadedVLM, load_vlm
from medgr2_ray.models.processing import VLMInputs, forward_kwargs, vlm_core
from medgr2_ray.models.verifier import Verdict, VerdictInputs, verdicts

HEAD_FILE = "reward_head.safetensors"
HEAD_META = "reward_head.json"
VERDICT_KEY = "verdict_weight"  # in HEAD_FILE beside the head's weight and bias, for a verifier head


@dataclass(frozen=True)
class VerifierInit:
    """How a new verifier head starts: score = low + (high - low) * p(stated answer), so an untrained R
    already ranks answers by its belief and regression only has to calibrate (Adam moves a scalar by
    about the learning rate per step: starting at 0 it would take thousands of steps to span 16 points)."""

    low: float
    high: float


@dataclass(frozen=True)
class RewardOutput:
    """R's scores and, for a verifier, its verdicts (the answer term of the loss needs them)."""

    score: torch.Tensor  # [B] float32
    verdict: Verdict | None


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row (works for left and right padding)."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(1).float().argmax(dim=1)


class RewardModel(torch.nn.Module):
    """VLM backbone + scalar head (+ the verdict term). Call the module or `score` on `encode_prompts`
    output of the rendered samples (and, for a verifier, `encode_verdicts` output of the same batch)."""

    def __init__(self, loaded: LoadedVLM, head: torch.nn.Linear | None = None, seed: int = 0,
                 verifier: VerifierInit | None = None, verdict_weight: torch.Tensor | None = None):
        super().__init__()
        self.loaded = loaded
        self.backbone = loaded.model
        hidden = int(self.backbone.config.get_text_config().hidden_size)
        if head is None:
            head = torch.nn.Linear(hidden, 1)
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                head.weight.normal_(0.0, 0.02, generator=generator)
                head.bias.fill_(verifier.low if verifier is not None else 0.0)
        if head.in_features != hidden or head.out_features != 1:
            raise ValueError(f"reward head is {head.in_features}->{head.out_features}, backbone needs {hidden}->1")
        self.head = head.float()
        if verdict_weight is None and verifier is not None:
            verdict_weight = torch.tensor(verifier.high - verifier.low)
        self.verdict_weight = None if verdict_weight is None else torch.nn.Parameter(verdict_weight.float().reshape(()))

    @property
    def is_verifier(self) -> bool:
        """Whether the score has the verdict term (and so needs `VerdictInputs`)."""
        return self.verdict_weight is not None

    def forward(self, inputs: VLMInputs | None, verdict_inputs: VerdictInputs | None = None,
                verdict_only: bool = False) -> RewardOutput:
        """Scores of a batch; a verifier needs `verdict_inputs` unless no sample has a question (then
        every verdict is 0). `verdict_only` skips the scalar head and its inputs (may be None; the score
        is then 0): R learning to answer before it learns to grade needs only the verdict."""
        if verdict_only:
            if verdict_inputs is None:
                raise ValueError("verdict_only needs verdict inputs: there is nothing else to compute")
            answer_row = verdict_inputs.answer_row
            score = torch.zeros(answer_row.shape[0], device=answer_row.device)
        elif inputs is None:
            raise ValueError("the scalar head needs the rendered samples' inputs")
        else:
            hidden = vlm_core(self.backbone)(**forward_kwargs(inputs), use_cache=False).last_hidden_state
            rows = torch.arange(hidden.shape[0], device=hidden.device)
            last = hidden[rows, last_token_index(inputs.attention_mask).to(hidden.device)]
            score = self.head(last.float()).squeeze(-1)
        if self.verdict_weight is None:
            return RewardOutput(score, None)
        if verdict_inputs is None:
            zeros = torch.zeros_like(score)
            return RewardOutput(score, Verdict(zeros, torch.zeros_like(score, dtype=torch.bool)))
        verdict = verdicts(self.backbone, verdict_inputs)
        # The regression calibrates the verdict's weight but does not train the verdict itself: through
        # p it learned "a right answer scores low" (two of the three low-target kinds keep the right
        # answer), ranking perturbed samples above faithful ones. The answer term trains p.
        return RewardOutput(score + self.verdict_weight * verdict.prob.detach(), verdict)

    def score(self, inputs: VLMInputs, verdict_inputs: VerdictInputs | None = None) -> torch.Tensor:
        """One scalar per row, shape [B] (float32)."""
        return self.forward(inputs, verdict_inputs).score

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Backbone as a HF directory (tokenizer and image processor included) + the head in safetensors."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        backbone = self.backbone
        if hasattr(backbone, "merge_and_unload"):  # PEFT: save W0 + scale * B @ A as plain weights
            backbone = copy.deepcopy(backbone).merge_and_unload()
        backbone.save_pretrained(out, safe_serialization=True)
        self.loaded.tokenizer.save_pretrained(out)
        self.loaded.image_processor.save_pretrained(out)
        head = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        if self.verdict_weight is not None:
            head[VERDICT_KEY] = self.verdict_weight.detach().cpu().reshape(1).contiguous()
        save_file(head, str(out / HEAD_FILE))
        meta = {"format": 2, "hidden_size": self.head.in_features, "verifier": self.is_verifier}
        (out / HEAD_META).write_text(json.dumps(meta))
        return out

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: str = "float32", trust_remote_code: bool = False) -> "RewardModel":
        """Load a reward model saved by `save_pretrained`."""
        head_path = Path(path) / HEAD_FILE
        if not head_path.is_file():
            raise FileNotFoundError(
                f"'{path}' has no {HEAD_FILE}: it is not a saved reward model; "
                "start a new head on a plain VLM directory with RewardModel.from_backbone"
            )
        loaded = load_vlm(path, dtype, trust_remote_code)
        state = load_file(str(head_path))
        verdict_weight = state.pop(VERDICT_KEY, None)
        head = torch.nn.Linear(state["weight"].shape[1], 1)
        head.load_state_dict(state)
        return cls(loaded, head, verdict_weight=verdict_weight)

    @classmethod
    def from_backbone(
        cls, path: str | Path, dtype: str = "float32", trust_remote_code: bool = False, seed: int = 0,
        verifier: VerifierInit | None = None,
    ) -> "RewardModel":
        """A plain VLM directory (tiny or real) with a freshly initialised head (seeded), a verifier
        head when `verifier` says how it starts."""
        return cls(load_vlm(path, dtype, trust_remote_code), seed=seed, verifier=verifier)
