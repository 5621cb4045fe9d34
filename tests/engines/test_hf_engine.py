"""The HF rollout engine on a tiny Qwen2-VL: image conditioning, batching = one by one, behaviour
log-probs = a teacher-forced forward, seeded sampling, stop/EOS handling, in-place weight updates."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medgr2_ray.config import EngineConfig, LoraConfig, ModelConfig
from medgr2_ray.engines import RolloutEngine, build_engine
from medgr2_ray.engines.hf import HFEngine, processed_logprobs
from medgr2_ray.models.loading import load_vlm
from medgr2_ray.models.processing import (
    completion_logprobs,
    encode_prompt_completions,
    encode_prompts,
    forward_kwargs,
)
from medgr2_ray.sync.flat import pack_tensors
from medgr2_ray.types import GenerationRequest, Rollout, SamplingParams

from engine_helpers import lora_learner

torch.set_num_threads(1)
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)
LORA = LoraConfig(enabled=True, r=4, alpha=8)


@pytest.fixture(scope="module")
def engine(dirs: dict[int, Path]) -> HFEngine:
    return HFEngine(dirs[0], ModelConfig(lora=LORA), EngineConfig(max_batch_size=8), seed=0)


def _teacher_forced(engine: HFEngine, requests: list[GenerationRequest], rollouts: list[Rollout],
                    temperature: float) -> list[np.ndarray]:
    by_id = {r.request_id: r for r in requests}
    rows = [by_id[r.request_id] for r in rollouts]
    inputs, mask = encode_prompt_completions(engine.loaded, rows, [r.completion_token_ids for r in rollouts])
    with torch.no_grad():
        logits = engine.model(**forward_kwargs(inputs)).logits
    logp = completion_logprobs(logits, inputs.input_ids, mask, temperature)
    for i, rollout in enumerate(rollouts):  # the learner rebuilds exactly the engine's prompt
        assert tuple(inputs.row_token_ids(i)[: len(rollout.prompt_token_ids)]) == rollout.prompt_token_ids
    return [logp[i][mask[i]].numpy() for i in range(len(rollouts))]


def _greedy_tokens(engine: RolloutEngine, requests: list[GenerationRequest]) -> list[tuple[int, ...]]:
    return [r.completion_token_ids for r in engine.generate(requests, GREEDY)]


def test_protocol_and_real_image_generation(engine: HFEngine, requests: list[GenerationRequest]) -> None:
    assert isinstance(engine, RolloutEngine)
    [rollout] = engine.generate(requests[:1], SamplingParams(max_new_tokens=8, seed=0))
    assert rollout.request_id == "ct" and len(rollout.completion_token_ids) == 8
    assert rollout.finish_reason == "length" and rollout.weight_version == engine.weight_version
    assert rollout.text and rollout.logprobs.dtype == np.float32 and (rollout.logprobs < 0).all()
    image_id = engine.model.config.image_token_id
    assert rollout.prompt_token_ids.count(image_id) == 25  # 128 px CT -> 140 px -> 5x5 merged patches


def test_the_image_changes_the_output_distribution(engine: HFEngine, requests: list[GenerationRequest]) -> None:
    ct_request = requests[0]
    black = GenerationRequest("ct", ct_request.prompt, (np.zeros_like(ct_request.images[0]),))
    [rollout] = engine.generate([ct_request], GREEDY)
    with_ct = _teacher_forced(engine, [ct_request], [rollout], 1.0)[0]
    with_black = _teacher_forced(engine, [black], [rollout], 1.0)[0]
    np.testing.assert_allclose(with_ct, rollout.logprobs, atol=1e-4)
    assert np.abs(with_ct - with_black).max() > 1e-3


def test_batched_left_padding_equals_one_by_one(engine: HFEngine, requests: list[GenerationRequest]) -> None:
    batched = engine.generate(requests, GREEDY)
    single = [engine.generate([r], GREEDY)[0] for r in requests]
    assert [r.completion_token_ids for r in batched] == [r.completion_token_ids for r in single]
    for a, b in zip(batched, single):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
        assert a.prompt_token_ids == b.prompt_token_ids


def test_shared_prompt_prefill_equals_one_prefill_per_sample(
    engine: HFEngine, requests: list[GenerationRequest]
) -> None:
    # n samples of a request share one prefill (its KV cache copied to n rows); the same request passed
    # n times as separate objects is prefilled n times. Same seed: same tokens, same log-probs.
    sampling = SamplingParams(n=3, temperature=1.0, max_new_tokens=8, seed=21)
    shared = engine.generate(requests, sampling)
    copies = [GenerationRequest(r.request_id, r.prompt, r.images, system=r.system) for r in requests for _ in range(3)]
    separate = engine.generate(copies, SamplingParams(n=1, temperature=1.0, max_new_tokens=8, seed=21))
    assert [r.completion_token_ids for r in shared] == [r.completion_token_ids for r in separate]
    assert [r.prompt_token_ids for r in shared] == [r.prompt_token_ids for r in separate]
    for a, b in zip(shared, separate):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    assert len({r.completion_token_ids for r in shared[:3]}) > 1  # the copied caches are not aliased


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_behaviour_logprobs_equal_teacher_forced(
    engine: HFEngine, requests: list[GenerationRequest], temperature: float
) -> None:
    sampling = SamplingParams(n=2, temperature=temperature, max_new_tokens=10, seed=3)
    rollouts = engine.generate(requests, sampling)
    assert [(r.request_id, r.index) for r in rollouts] == [(q.request_id, i) for q in requests for i in range(2)]
    reference = _teacher_forced(engine, requests, rollouts, temperature)
    diff = max(float(np.abs(ref - r.logprobs).max()) for ref, r in zip(reference, rollouts))
    assert diff < 1e-4  # with images, without, and padded (three prompt lengths in one batch)


def test_top_k_top_p_logprobs_are_the_truncated_distribution(
    engine: HFEngine, requests: list[GenerationRequest]
) -> None:
    sampling = SamplingParams(n=3, temperature=0.8, top_k=20, top_p=0.5, max_new_tokens=6, seed=5)
    rollouts = engine.generate(requests[:2], sampling)
    by_id = {r.request_id: r for r in requests}
    inputs, mask = encode_prompt_completions(
        engine.loaded, [by_id[r.request_id] for r in rollouts], [r.completion_token_ids for r in rollouts])
    with torch.no_grad():
        logits = engine.model(**forward_kwargs(inputs)).logits
    for i, rollout in enumerate(rollouts):
        cols = mask[i].nonzero().squeeze(-1)
        # Independent formula: top-20, renormalised, then the nucleus of 0.5 of that (HF/vLLM order).
        probs = torch.softmax(logits[i, cols - 1] / 0.8, -1)
        ids = torch.tensor(rollout.completion_token_ids)
        for t in range(len(cols)):
            p, order = probs[t].sort(descending=True)
            q = p[:20] / p[:20].sum()
            keep = order[:20][(q.cumsum(0) - q) < 0.5]
            assert int(ids[t]) in keep.tolist()
            expected = torch.log(probs[t, ids[t]] / probs[t, keep].sum())
            assert abs(float(expected) - float(rollout.logprobs[t])) < 1e-4
        assert (rollout.logprobs <= 0).all()
    # By hand: softmax([3, 2, 1, 0]) = [.644, .237, .087, .032]; nucleus 0.7 keeps the first two.
    logp = processed_logprobs(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), 1.0, 0, 0.7)
    assert torch.isinf(logp[0, 2:]).all()
    torch.testing.assert_close(logp[0, :2], torch.log_softmax(torch.tensor([3.0, 2.0]), -1))
    greedy = processed_logprobs(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), 0.0, 1, 0.1)  # greedy: plain softmax
    torch.testing.assert_close(greedy[0], torch.log_softmax(torch.tensor([3.0, 2.0, 1.0, 0.0]), -1))


def test_sampling_is_seedable_and_n_samples_differ(engine: HFEngine, requests: list[GenerationRequest]) -> None:
    sampling = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=11)
    first, again = engine.generate(requests[:1], sampling), engine.generate(requests[:1], sampling)
    assert [r.completion_token_ids for r in first] == [r.completion_token_ids for r in again]
    assert len({r.completion_token_ids for r in first}) > 1
    other = engine.generate(requests[:1], SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=12))
    assert [r.completion_token_ids for r in other] != [r.completion_token_ids for r in first]


def test_stop_strings_cut_text_and_keep_tokens(engine: HFEngine, requests: list[GenerationRequest]) -> None:
    [full] = engine.generate(requests[1:2], GREEDY)
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 2]
    assert stop.strip()
    [cut] = engine.generate(requests[1:2], SamplingParams(temperature=0.0, max_new_tokens=12, stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.find(stop)]
    assert full.completion_token_ids[: len(cut.completion_token_ids)] == cut.completion_token_ids
    assert len(cut.logprobs) == len(cut.completion_token_ids) < len(full.completion_token_ids)
    np.testing.assert_allclose(cut.logprobs, full.logprobs[: len(cut.logprobs)], atol=1e-5)


def _state(engine: HFEngine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.model.state_dict().items()}


def test_eos_stops_a_row_and_is_kept(dirs: dict[int, Path], requests: list[GenerationRequest]) -> None:
    engine = HFEngine(dirs[0], ModelConfig(), EngineConfig())
    # All-zero output weights: every token is equally likely, greedy picks id 0 = <|endoftext|> (an EOS).
    zero_head = {"lm_head.weight": torch.zeros_like(engine.model.lm_head.weight)}
    engine.load_weights(pack_tensors(zero_head, lora_only=False), version=7)
    rollouts = engine.generate(requests, GREEDY)
    vocab = engine.model.config.text_config.vocab_size
    for r in rollouts:
        assert r.completion_token_ids == (0,) and r.finish_reason == "stop" and r.text == ""
        assert r.weight_version == 7 and abs(float(r.logprobs[0]) + np.log(vocab)) < 1e-5


def test_full_weight_update_equals_fresh_engine(
    engine: HFEngine, dirs: dict[int, Path], requests: list[GenerationRequest]
) -> None:
    stale = HFEngine(dirs[0], ModelConfig(), EngineConfig())
    fresh = HFEngine(dirs[1], ModelConfig(), EngineConfig())
    target = HFEngine(dirs[0], ModelConfig(), EngineConfig())
    learner = load_vlm(dirs[1]).model  # the learner's weights
    flat = pack_tensors(dict(learner.named_parameters()), lora_only=False)
    target.load_weights(flat, version=1)
    # Served from the published buffer itself: every parameter is a view of it, nothing was copied.
    lo = flat.buffers["float32"].ctypes.data
    hi = lo + flat.buffers["float32"].nbytes
    assert all(lo <= p.data_ptr() < hi for p in target.model.parameters())
    assert target.last_load.copied_bytes == 0 and target.last_load.viewed_bytes == flat.num_bytes
    assert target.weight_version == 1
    assert _greedy_tokens(target, requests) == _greedy_tokens(fresh, requests)
    assert _greedy_tokens(stale, requests) != _greedy_tokens(fresh, requests)
    assert all(r.weight_version == 1 for r in target.generate(requests, GREEDY))


def _fresh_from_merged(peft_model: torch.nn.Module, src: Path, out: Path) -> HFEngine:
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json"):
        shutil.copy(src / name, out / name)
    return HFEngine(out, ModelConfig(), EngineConfig())


def _logits(engine: HFEngine, requests: list[GenerationRequest]) -> torch.Tensor:
    inputs = encode_prompts(engine.loaded, requests)
    with torch.no_grad():
        return engine.model(**forward_kwargs(inputs)).logits


def test_lora_update_equals_fresh_merged_engine_and_does_not_compound(
    engine: HFEngine, dirs: dict[int, Path], requests: list[GenerationRequest], tmp_path: Path
) -> None:
    base_tokens = _greedy_tokens(HFEngine(dirs[0], ModelConfig(), EngineConfig()), requests)
    w0 = _state(engine)
    for step, seed in enumerate((1, 2), start=1):
        learner = lora_learner(dirs[0], seed, LORA)
        flat = pack_tensors(dict(learner.named_parameters()), lora_only=True)
        assert flat.lora_only and all(".lora_" in s.name for s in flat.index)
        engine.load_weights(flat, version=10 + step)
        # Unmerged: W0 is untouched (nothing rebuilt, nothing compounds); the adapters are views.
        assert all(torch.equal(value, w0[name]) for name, value in engine.model.state_dict().items())
        assert engine.last_load.copied_bytes == 0 and engine.last_load.viewed_bytes == flat.num_bytes
        fresh = _fresh_from_merged(learner, dirs[0], tmp_path / f"merged{step}")  # the learner's merged model
        torch.testing.assert_close(_logits(engine, requests), _logits(fresh, requests), atol=1e-5, rtol=1e-5)
        assert _greedy_tokens(engine, requests) == _greedy_tokens(fresh, requests)
        assert _greedy_tokens(engine, requests) != base_tokens  # the stale base engine differs


def test_bad_update_is_refused_and_changes_nothing(engine: HFEngine) -> None:
    before = _state(engine)
    bad = {"lm_head.weight": torch.ones_like(engine.model.lm_head.weight), "nope.weight": torch.ones(2)}
    with pytest.raises(KeyError, match="'nope.weight' is not a parameter"):
        engine.load_weights(pack_tensors(bad, lora_only=False), version=99)
    wrong_rank = {"model.language_model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 64),
                  "model.language_model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(64, 2)}
    with pytest.raises(ValueError, match="lora.r=4"):
        engine.load_weights(pack_tensors(wrong_rank, lora_only=True), version=99)
    after = _state(engine)
    assert all(torch.equal(before[k], after[k]) for k in before) and engine.weight_version != 99


def test_build_engine_picks_the_backend(dirs: dict[int, Path]) -> None:
    assert isinstance(build_engine(dirs[0], ModelConfig(), EngineConfig(backend="hf")), HFEngine)
