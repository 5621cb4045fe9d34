"""The MedGR² reward model R: a VLM backbone plus a scalar regression head, R(image, question, answer).

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
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from medgr2_ray.models.loading import LoadedVLM, load_vlm
from medgr2_ray.models.processing import VLMInputs, forward_kwargs, vlm_core

HEAD_FILE = "reward_head.safetensors"
HEAD_META = "reward_head.json"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row (works for left and right padding)."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.flip(1).float().argmax(dim=1)


class RewardModel(torch.nn.Module):
    """VLM backbone + scalar head. Call `score(inputs)` (or the module) on `encode_prompts` output."""

    def __init__(self, loaded: LoadedVLM, head: torch.nn.Linear | None = None, seed: int = 0):
        super().__init__()
        self.loaded = loaded
        self.backbone = loaded.model
        hidden = int(self.backbone.config.get_text_config().hidden_size)
        if head is None:
            head = torch.nn.Linear(hidden, 1)
            generator = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                head.weight.normal_(0.0, 0.02, generator=generator)
                head.bias.zero_()
        if head.in_features != hidden or head.out_features != 1:
            raise ValueError(f"reward head is {head.in_features}->{head.out_features}, backbone needs {hidden}->1")
        self.head = head.float()

    def score(self, inputs: VLMInputs) -> torch.Tensor:
        """One scalar per row, shape [B] (float32)."""
        hidden = vlm_core(self.backbone)(**forward_kwargs(inputs), use_cache=False).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, last_token_index(inputs.attention_mask).to(hidden.device)]
        return self.head(last.float()).squeeze(-1)

    def forward(self, inputs: VLMInputs) -> torch.Tensor:
        """Same as `score`."""
        return self.score(inputs)

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
        save_file(head, str(out / HEAD_FILE))
        (out / HEAD_META).write_text(json.dumps({"format": 1, "hidden_size": self.head.in_features}))
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
        head = torch.nn.Linear(state["weight"].shape[1], 1)
        head.load_state_dict(state)
        return cls(loaded, head)

    @classmethod
    def from_backbone(
        cls, path: str | Path, dtype: str = "float32", trust_remote_code: bool = False, seed: int = 0
    ) -> "RewardModel":
        """A plain VLM directory (tiny or real) with a freshly initialised head (seeded)."""
        return cls(load_vlm(path, dtype, trust_remote_code), seed=seed)
