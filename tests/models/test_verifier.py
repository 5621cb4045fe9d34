"""The verifier feature of R: one row per distinct (image, question, answer), the verdict equal to the
answer's log-likelihood computed independently over full logits, and a verifier head that saves,
loads and adds exactly `verdict_weight * p` to the scalar."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from medgr2_ray.models.processing import completion_logprobs, encode_prompt_completions, encode_prompts, forward_kwargs
from medgr2_ray.models.reward_head import RewardModel, VerifierInit
from medgr2_ray.models.verifier import encode_verdicts, verdicts
from medgr2_ray.prompts import reward_prompt, solver_prompt
from medgr2_ray.types import GenerationRequest, Modality, Sample, TaskType

SAMPLE = Sample("s1", "ct", "", "Which modality was used?", ("CT", "MR", "X-ray"), "CT", TaskType.MODALITY, Modality.CT)


def _requests(ct: np.ndarray) -> list[GenerationRequest]:
    """Two requests that share image, question and answer, one with another answer, one on another
    image object, and one without a sample."""
    images = (ct,)
    other = (ct.copy(),)
    wrong = replace(SAMPLE, answer="MR")
    return [
        GenerationRequest("a", reward_prompt(SAMPLE), images, sample=SAMPLE),
        GenerationRequest("b", reward_prompt(SAMPLE), images, sample=SAMPLE),
        GenerationRequest("c", reward_prompt(wrong), images, sample=wrong),
        GenerationRequest("d", reward_prompt(SAMPLE), other, sample=SAMPLE),
        GenerationRequest("e", "no sample here", images),
    ]


def test_rows_are_shared_and_verdicts_match_full_logits(tiny_dir: Path, ct_image: np.ndarray) -> None:
    model = RewardModel.from_backbone(tiny_dir, seed=0, verifier=VerifierInit(-6.0, 10.0)).eval()
    tokenizer, eos = model.loaded.tokenizer, int(model.loaded.tokenizer.eos_token_id)
    requests = _requests(ct_image)
    inputs = encode_verdicts(model.loaded, requests, eos)
    assert inputs is not None
    assert inputs.answer_row.tolist() == [0, 0, 1, 2, -1]  # a and b share a row; e has nothing to answer
    with torch.no_grad():
        verdict = verdicts(model.backbone, inputs)
        assert verdict.has.tolist() == [True, True, True, True, False]
        for i, answer in ((0, "CT"), (2, "MR")):
            # independent reference: full-logit log-softmax over prompt + answer + end-of-turn
            target = (*tokenizer(answer, add_special_tokens=False)["input_ids"], eos)
            request = GenerationRequest("ref", solver_prompt(replace(SAMPLE, answer=answer)), (ct_image,))
            ref_inputs, mask = encode_prompt_completions(model.loaded, [request], [target])
            logits = model.backbone(**forward_kwargs(ref_inputs), use_cache=False).logits
            expected = completion_logprobs(logits, ref_inputs.input_ids, mask).sum()
            torch.testing.assert_close(verdict.logprob[i], expected, atol=1e-4, rtol=0)
        assert float(verdict.prob[4]) == 0.0 and 0.0 < float(verdict.prob[0]) < 1.0


def test_verifier_head_adds_weighted_verdict_and_round_trips(tiny_dir: Path, ct_image: np.ndarray,
                                                              tmp_path: Path) -> None:
    model = RewardModel.from_backbone(tiny_dir, seed=0, verifier=VerifierInit(-6.0, 10.0)).eval()
    assert model.is_verifier and float(model.verdict_weight.detach()) == 16.0 and float(model.head.bias.detach()) == -6.0
    requests = _requests(ct_image)[:4]
    inputs = encode_prompts(model.loaded, requests, padding_side="left")
    verdict_inputs = encode_verdicts(model.loaded, requests, int(model.loaded.tokenizer.eos_token_id))
    with torch.no_grad():
        out = model(inputs, verdict_inputs)
        scalar = model(inputs, None).score  # no verdict inputs: the scalar alone (verdicts 0)
        torch.testing.assert_close(out.score, scalar + 16.0 * out.verdict.prob, atol=1e-5, rtol=0)
        model.save_pretrained(tmp_path / "rm")
        again = RewardModel.from_pretrained(tmp_path / "rm").eval()
        assert again.is_verifier
        torch.testing.assert_close(again(inputs, verdict_inputs).score, out.score, atol=1e-5, rtol=0)
    plain = RewardModel.from_backbone(tiny_dir, seed=0)
    assert not plain.is_verifier and plain(inputs, verdict_inputs).verdict is None


def test_regression_does_not_train_the_verdict(tiny_dir: Path, ct_image: np.ndarray) -> None:
    """The score's gradient reaches the verdict weight (d score / d w = p) but not the LM head, which
    only the verdict uses: the regression calibrates the verdict, only the answer term trains R's belief
    (see reward_head.RewardModel.forward); the verdict's own log-prob does reach the LM head."""
    model = RewardModel.from_backbone(tiny_dir, seed=0, verifier=VerifierInit(-6.0, 10.0))
    lm_head = model.backbone.get_output_embeddings().weight
    requests = _requests(ct_image)[:1]
    verdict_inputs = encode_verdicts(model.loaded, requests, int(model.loaded.tokenizer.eos_token_id))
    out = model(encode_prompts(model.loaded, requests), verdict_inputs)
    w_grad, head_grad = torch.autograd.grad(out.score.sum(), [model.verdict_weight, lm_head], allow_unused=True,
                                            retain_graph=True)
    assert float(w_grad) == pytest.approx(float(out.verdict.prob[0]), rel=1e-5)
    assert head_grad is None or float(head_grad.abs().sum()) == 0.0
    (answer_grad,) = torch.autograd.grad(out.verdict.logprob.sum(), [lm_head])
    assert float(answer_grad.abs().sum()) > 0.0
