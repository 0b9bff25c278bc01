"""The GRPO run's config: every key a recipe or a flag can set, the published variants as presets
(``algorithm``), and the checks that reject a bad combination before anything runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from r1lite import prompts
from r1lite.config import opt, part
from r1lite.errors import UsageError
from r1lite.meter.hardware import check_price, find_hardware
from r1lite.prompts import FORMATS

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
SCHEDULES = ("constant", "linear", "cosine")
REWARDS = ("accuracy", "format", "format_partial", "answer_format")
OBJECTIVES = ("grpo", "on_policy_distill")


def _preset_grpo(explicit: dict) -> dict:
    """GRPO as DeepSeekMath published it: per-sequence mean loss, group-std advantages, KL 0.04."""
    return dict(loss_type="grpo", scale_rewards="group", epsilon=0.2, epsilon_high=0.2, beta=0.04,
                dynamic_sampling=False, mask_truncated=False, overlong_buffer=0)


def _preset_dr_grpo(explicit: dict) -> dict:
    """Dr. GRPO (Liu et al. 2025): no length or std normalisation, no KL."""
    return dict(loss_type="dr_grpo", scale_rewards="none", epsilon=0.2, epsilon_high=0.2, beta=0.0,
                dynamic_sampling=False, mask_truncated=False, overlong_buffer=0)


def _preset_dapo(explicit: dict) -> dict:
    """DAPO (Yu et al. 2025): token-level loss, clip-higher 0.28, dynamic sampling, soft overlong
    punishment over the last 20% of the budget (their 4,096 of 20,480 tokens), no KL."""
    max_new = explicit.get("max_new_tokens", SamplingConfig.max_new_tokens)
    return dict(loss_type="dapo", scale_rewards="group", epsilon=0.2, epsilon_high=0.28, beta=0.0,
                dynamic_sampling=True, mask_truncated=False, overlong_buffer=max_new // 5)


def _preset_r1(explicit: dict) -> dict:
    """DeepSeek-R1's RL settings (Nature paper, Methods): GRPO, lr 3e-6, KL 0.001, 16 samples of
    32 prompts a step, temperature 1, the reference replaced by the policy every 400 steps."""
    group = explicit.get("group_size", 16)
    return dict(loss_type="grpo", scale_rewards="group", lr=3e-6, beta=0.001, group_size=group,
                batch_size=32 * group, temperature=1.0, ref_reset_every=400, dynamic_sampling=False)


def _preset_gspo(explicit: dict) -> dict:
    """GSPO (Zheng et al. 2025, v2 §5.1): one importance ratio per sequence, clip range 3e-4 / 4e-4,
    no KL, the per-sequence mean loss. The paper splits each rollout batch into 4 mini-batches, so
    its later updates are off-policy; r1lite makes 4 updates on the whole batch (``mu`` 4)."""
    return dict(loss_type="grpo", scale_rewards="group", importance_sampling_level="sequence", surrogate="clip",
                epsilon=3e-4, epsilon_high=4e-4, beta=0.0, mu=4, dynamic_sampling=False, mask_truncated=False,
                overlong_buffer=0)


def _preset_cispo(explicit: dict) -> dict:
    """CISPO (MiniMax-M1, 2025): the importance weight capped from above and detached, the token-level
    mean loss, no KL. Cap 1 + 4.0 = 5.0 (TRL's suggested upper bound; the paper tunes only the upper
    one). The paper states no update count: ``mu`` 4, as the GSPO preset, so the two compare."""
    return dict(loss_type="dapo", scale_rewards="group", importance_sampling_level="token", surrogate="cispo",
                epsilon=0.2, epsilon_high=4.0, beta=0.0, mu=4, dynamic_sampling=False, mask_truncated=False,
                overlong_buffer=0)


ALGORITHMS = {"none": lambda explicit: {}, "grpo": _preset_grpo, "dr_grpo": _preset_dr_grpo, "dapo": _preset_dapo,
              "r1": _preset_r1, "gspo": _preset_gspo, "cispo": _preset_cispo}
"""``algorithm`` → the fields it sets (a function of the keys given explicitly, which still win)."""


def preset(explicit: dict) -> dict:
    """The fields the ``algorithm`` key sets, for :func:`r1lite.config.build`."""
    name = explicit.get("algorithm", "none")
    if name not in ALGORITHMS:
        raise UsageError(f"algorithm '{name}' is unknown; use one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name](explicit)


LANDING_CHECKS = 4
"""Checks a cold start past its accuracy ceiling spends bisecting its way back (each halves the
stretch of weights it searches)."""

LAUNCH_KEYS = ("fsdp", "dist_timeout")
"""Flat keys that say how a run is launched, not what it computes: a resumed run may change them."""


@dataclass
class OptimConfig:
    """How the weights are updated: the steps and their batches, the optimizer and its schedule, LoRA."""

    max_steps: int = opt(40, "GRPO steps; one step = one batch of rollouts and mu optimizer updates; 0 = the cold "
                             "start and the evaluations only (final/ is then a starting point for RL runs)")
    batch_size: int = opt(32, "completions per step (prompts per step x group_size)")
    group_size: int = opt(8, "G: completions sampled per prompt")
    micro_batch_size: int = opt(16, "completions per forward/backward (memory only; the loss is unchanged)")
    gradient_checkpointing: bool = opt(False, "keep only each decoder layer's input for the backward pass and "
                                              "recompute the rest there: a micro-batch's activations shrink to "
                                              "about one layer's, for about one more forward's time; the same "
                                              "gradients")
    mu: int = opt(1, "policy updates per batch (>1 stores old log-probs and clips against them)")
    max_rl_flops: float = opt(0.0, "stop GRPO after the first step at which the RL stage's metered FLOPs (rollouts, "
                                   "train passes, teacher scoring) reach this, e.g. 2e15, before max_steps if need be: "
                                   "runs compared on one compute budget; 0 = off")
    lr: float = opt(3e-6, "peak learning rate (AdamW)")
    lr_schedule: str = opt("constant", "constant, linear or cosine decay after warmup")
    warmup_steps: int = opt(0, "optimizer steps of linear warmup")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "clip the gradient norm (0 = no clipping)")
    lora: bool = opt(False, "train LoRA adapters (peft) instead of all weights")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(32, "LoRA alpha (scale = alpha / r)")
    lora_targets: list = opt(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                             "modules that get LoRA adapters")

    def __post_init__(self):
        if self.lr_schedule not in SCHEDULES:
            raise UsageError(f"lr_schedule '{self.lr_schedule}' is unknown; use one of {', '.join(SCHEDULES)}")
        if self.group_size < 2:
            raise UsageError(f"group_size={self.group_size}: group-relative advantages need at least 2 completions "
                             "per prompt (with 1, every advantage is 0 and the std is undefined); set group_size >= 2")
        if self.batch_size % self.group_size:
            raise UsageError(f"batch_size={self.batch_size} is not divisible by group_size={self.group_size}; "
                             f"use a multiple such as {self.group_size * max(1, self.batch_size // self.group_size)}")
        if self.max_steps < 0:
            raise UsageError(f"max_steps={self.max_steps} must be >= 0 (0 = the cold start only)")
        for key in ("batch_size", "micro_batch_size", "mu", "lora_r"):
            if getattr(self, key) < 1:
                raise UsageError(f"{key}={getattr(self, key)} must be >= 1")
        if self.lr <= 0:
            raise UsageError(f"lr={self.lr} must be > 0")
        if self.max_rl_flops < 0:
            raise UsageError(f"max_rl_flops={self.max_rl_flops} must be >= 0 (0 = no budget)")
        if self.warmup_steps < 0:
            raise UsageError(f"warmup_steps={self.warmup_steps} must be >= 0")

    @property
    def prompts_per_step(self) -> int:
        return self.batch_size // self.group_size


@dataclass
class SamplingConfig:
    """How completions are decoded: the rollouts' sampling, and how many rows decode together."""

    max_new_tokens: int = opt(64, "token budget per completion (L_max for dr_grpo and overlong shaping)")
    temperature: float = opt(1.0, "sampling temperature for rollouts (0 = greedy)")
    top_p: float = opt(1.0, "nucleus sampling for rollouts (1 = off)")
    top_k: int = opt(0, "top-k sampling for rollouts (0 = off)")
    stop: list = opt([], "extra stop strings for rollouts (kept in the completion)")
    rollout_batch_size: int = opt(64, "most rows decoded together in one rollout generation batch")
    eval_batch_size: int = opt(256, "most rows decoded together in evaluations and cold-start sampling (larger batches decode more tokens/s)")

    def __post_init__(self):
        for key in ("max_new_tokens", "rollout_batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise UsageError(f"{key}={getattr(self, key)} must be >= 1")
        if self.temperature <= 0:
            raise UsageError(f"temperature={self.temperature}: GRPO needs sampled rollouts (greedy gives every group "
                             "equal rewards, so no advantage); use a temperature > 0 such as 1.0")


@dataclass
class LossConfig:
    """What the update optimises: the rewards, which groups and tokens count, the loss and its KL term."""

    loss_type: str = opt("dapo", "loss aggregation: grpo (per-sequence mean), dr_grpo (sum / (G*L_max)), dapo (token mean)")
    scale_rewards: str = opt("group", "advantage scaling: group std, batch std, or none (Dr. GRPO)")
    epsilon: float = opt(0.2, "lower clip range: ratio >= 1 - epsilon")
    epsilon_high: float = opt(0.2, "upper clip range: ratio <= 1 + epsilon_high (DAPO clip-higher uses 0.28)")
    importance_sampling_level: str = opt("token", "importance ratio: token (GRPO/PPO), or sequence (GSPO: the "
                                                  "length-normalised product of the token ratios, clipped per sequence)")
    surrogate: str = opt("clip", "policy term: clip (PPO/GRPO's clipped ratio), or cispo (CISPO: the ratio capped at "
                                 "1 + epsilon_high and detached, times the token log-prob; no lower clip)")
    beta: float = opt(0.0, "KL penalty to the reference (k3 estimator): the policy as RL starts, after any cold start; "
                           "0 = no reference model at all")
    ref_reset_every: int = opt(0, "replace the KL reference by the current policy every N steps (R1: 400); 0 = never")
    entropy_coef: float = opt(0.0, "entropy bonus: the loss subtracts this x the sampling distribution's entropy at "
                                   "each counted token of a trained group (verl's entropy_coeff); 0 = off")
    rewards: dict = opt({"accuracy": 1.0, "format": 0.1}, "reward functions and weights: accuracy, format, "
                                                            "format_partial, answer_format (the answer is of the kind "
                                                            "the task checks: a number for numeric tasks)")
    reward_control: str = opt("none", "a control arm: none, or random (each completion's reward is 0 or 1 at random, "
                                      "1 with the real reward's running mean as probability: the spurious-rewards "
                                      "check; the real rewards are still measured and logged)")
    dynamic_sampling: bool = opt(False, "DAPO dynamic sampling: drop groups whose rewards are all equal and refill")
    max_refill_rounds: int = opt(4, "dynamic sampling: most extra generation rounds per step")
    mask_truncated: bool = opt(False, "leave completions that hit max_new_tokens out of the loss")
    objective: str = opt("grpo", "grpo, or on_policy_distill: the student samples, the teacher scores every sampled "
                                 "token, the loss is the per-token reverse KL (r1lite.train.onpolicy)")
    teacher: str = opt("", "on_policy_distill: the teacher, a local model with the student's tokenizer "
                           "(default, a run directory, a Hugging Face directory)")
    overlong_buffer: int = opt(0, "DAPO soft overlong punishment over the last N tokens of the budget (0 = off)")

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise UsageError(f"loss_type '{self.loss_type}' is unknown; use one of {', '.join(LOSS_TYPES)}")
        if self.importance_sampling_level not in ("token", "sequence"):
            raise UsageError(f"importance_sampling_level '{self.importance_sampling_level}' is unknown; use token or "
                             "sequence")
        if self.surrogate not in ("clip", "cispo"):
            raise UsageError(f"surrogate '{self.surrogate}' is unknown; use clip or cispo")
        if self.surrogate == "cispo" and self.importance_sampling_level == "sequence":
            raise UsageError("surrogate cispo weights each token by its own ratio; set importance_sampling_level token")
        if self.reward_control not in ("none", "random"):
            raise UsageError(f"reward_control '{self.reward_control}' is unknown; use none or random")
        if self.reward_control == "random" and self.dynamic_sampling:
            raise UsageError("reward_control random draws every group's rewards after sampling; set dynamic_sampling "
                             "false")
        if self.scale_rewards not in SCALE_REWARDS:
            raise UsageError(f"scale_rewards '{self.scale_rewards}' is unknown; use one of {', '.join(SCALE_REWARDS)}")
        if self.epsilon_high < self.epsilon:
            raise UsageError(f"epsilon_high={self.epsilon_high} < epsilon={self.epsilon}: clip-higher widens the upper "
                             "range; set epsilon_high >= epsilon")
        if not 0 < self.epsilon < 1:
            raise UsageError(f"epsilon={self.epsilon} must be in (0, 1)")
        if self.beta < 0:
            raise UsageError(f"beta={self.beta} must be >= 0 (0 = no KL term)")
        if self.entropy_coef < 0:
            raise UsageError(f"entropy_coef={self.entropy_coef} must be >= 0 (0 = no entropy bonus)")
        unknown = set(self.rewards) - set(REWARDS)
        if unknown or not self.rewards:
            raise UsageError(f"rewards: unknown reward {', '.join(sorted(unknown)) or '(none given)'}; "
                             f"use some of {', '.join(REWARDS)}")
        if self.ref_reset_every and self.beta == 0:
            raise UsageError(f"ref_reset_every={self.ref_reset_every} resets a KL reference, but beta=0 keeps none; "
                             "set beta > 0")
        if self.objective not in OBJECTIVES:
            raise UsageError(f"objective '{self.objective}' is unknown; use one of {', '.join(OBJECTIVES)}")
        if (self.objective == "on_policy_distill") != bool(self.teacher):
            raise UsageError("objective on_policy_distill needs teacher: MODEL (and teacher is only for it); "
                             "set both or neither")
        if self.ref_reset_every < 0:
            raise UsageError(f"ref_reset_every={self.ref_reset_every} must be >= 0")


@dataclass
class ColdStartConfig:
    """R1's cold start: SFT on verified traces (the base's own, or a teacher's) before RL, and its check."""

    items: int = opt(0, "cold-start SFT on the base's own verified answers: train items to sample (0 = off)")
    samples: int = opt(4, "cold start: samples per item, plain prompt, temperature cold_start_temperature")
    format: str = opt("plain", "cold start: the plain phrasing the base is sampled with (plain, plain:1, plain:2)")
    temperature: float = opt(0.7, "cold start: sampling temperature")
    epochs: int = opt(2, "cold start: SFT epochs over the kept traces")
    lr: float = opt(2e-5, "cold start: SFT learning rate")
    batch_size: int = opt(8, "cold start: traces per SFT optimizer step")
    per_item: int = opt(1, "cold start: most kept traces per item (the shortest distinct verified ones)")
    min_format: float = opt(0.0, "cold start: after cold_start_epochs, train on (up to cold_start_max_epochs, checked "
                                 "every cold_start_check_every epochs) while the greedy strict-format rate on "
                                 "cold_start_check_items train prompts is below this (0 = no format bar)")
    min_accuracy: float = opt(0.0, "cold start: the same check's bar for greedy accuracy on those train prompts: "
                                   "train on while below it (0 = no accuracy bar)")
    max_accuracy: float = opt(0.0, "cold start: a ceiling for the same check's accuracy: a check that meets the bars "
                                   "above it steps back toward the weights of the check before (or the SFT's start), "
                                   "bisecting the straight line between them until a check lands between the bar and "
                                   "the ceiling (0 = no ceiling)")
    check_every: float = opt(1.0, "cold start: epochs between checks after cold_start_epochs (0.5 = every half epoch, "
                                  "rounded to whole SFT steps)")
    max_epochs: int = opt(4, "cold start: most SFT epochs when the check asks for more")
    check_items: int = opt(64, "cold start: train prompts (not held-out) the check decodes")
    data: str = opt("", "cold start on these traces (r1lite distill's JSONL, or any prompt/completion JSONL) "
                        "instead of the base's own answers")
    teacher: str = opt("", "cold start on traces distilled from this teacher (a URL, a local model, FILE.gguf) "
                           "instead of the base's own answers: cold_start_items prompts x cold_start_samples "
                           "at cold_start_temperature, into <out>/distill.jsonl")
    distill_options: dict = opt({}, "cold_start_teacher: other r1lite distill settings, e.g. teacher_model, api_key_env, "
                                    "teacher_usd_per_mtok, teacher_terms, top_p, concurrency", key="distill_options")

    def __post_init__(self):
        for key in ("batch_size", "samples", "epochs", "per_item"):
            if getattr(self, key) < 1:
                raise UsageError(f"cold_start_{key}={getattr(self, key)} must be >= 1")
        if self.format not in FORMATS[1:]:
            raise UsageError(f"cold_start_format '{self.format}': use one of {', '.join(FORMATS[1:])}")
        for key, zero in (("min_format", "bar"), ("min_accuracy", "bar"), ("max_accuracy", "ceiling")):
            if not 0 <= getattr(self, key) <= 1:
                raise UsageError(f"cold_start_{key}={getattr(self, key)} is a rate: use a value in [0, 1] (0 = no {zero})")
        if self.max_accuracy and not self.min_accuracy:
            raise UsageError(f"cold_start_max_accuracy={self.max_accuracy} is a ceiling above cold_start_min_accuracy's "
                             "bar; set cold_start_min_accuracy too")
        if self.max_accuracy and self.max_accuracy <= self.min_accuracy:
            raise UsageError(f"cold_start_max_accuracy={self.max_accuracy} must be above cold_start_min_accuracy="
                             f"{self.min_accuracy}: the check lands between the two")
        if self.checks and self.max_epochs < self.epochs:
            raise UsageError(f"cold_start_max_epochs={self.max_epochs} < cold_start_epochs={self.epochs}; "
                             "set it >= cold_start_epochs")
        if self.checks and self.check_items < 1:
            raise UsageError(f"cold_start_check_items={self.check_items} must be >= 1 when cold_start_min_format or "
                             "cold_start_min_accuracy is set")
        if self.check_every <= 0:
            raise UsageError(f"cold_start_check_every={self.check_every} must be > 0 (epochs between checks)")
        if self.data and self.teacher:
            raise UsageError("cold_start_data and cold_start_teacher both replace the self-sampled cold start; set one")
        if self.data and not os.path.isfile(self.data):
            raise UsageError(f"cold_start_data {self.data}: no such file; distill one with r1lite distill --out FILE.jsonl")
        if self.teacher and not self.items:
            raise UsageError("cold_start_teacher asks the teacher about cold_start_items prompts; set cold_start_items >= 1")
        if self.distill_options and not self.teacher:
            raise UsageError("distill_options configure cold_start_teacher; set cold_start_teacher or drop them")
        if self.items < 0:
            raise UsageError(f"cold_start_items={self.items} must be >= 0")

    @property
    def enabled(self) -> bool:
        """Whether the run starts with a cold start (sampled, a teacher's or from ``data``)."""
        return bool(self.items or self.data)

    @property
    def checks(self) -> bool:
        """Whether the cold start decodes train prompts to decide when its SFT has done enough."""
        return bool(self.min_format or self.min_accuracy)


@dataclass
class EvalConfig:
    """The held-out evaluations before and after training."""

    items: int = opt(200, "held-out items evaluated greedily before and after training (0 = skip)")
    seed: int = opt(0, "seed that draws the held-out items, whatever `seed` is: every run of a recipe is "
                       "scored on the same items, so runs compare")
    every: int = opt(0, "also evaluate the held-out items after every N GRPO steps: the curve (step, RL FLOPs, "
                        "accuracy, format, length) goes to summary.json's eval_curve; 0 = before and after only")
    base_plain: bool = opt(False, "also evaluate the untouched base with plain prompts (base_phrasings), keep the best")
    base_phrasings: list = opt(["plain", "plain:1", "plain:2"], "the plain phrasings eval_base_plain tries",
                               key="base_phrasings")

    def __post_init__(self):
        if not self.base_phrasings or set(self.base_phrasings) - set(FORMATS[1:]):
            raise UsageError(f"base_phrasings {self.base_phrasings}: use some of {', '.join(FORMATS[1:])}")
        if self.items < 0:
            raise UsageError(f"eval_items={self.items} must be >= 0")
        if self.every < 0:
            raise UsageError(f"eval_every={self.every} must be >= 0 (0 = off)")


@dataclass
class MeterConfig:
    """How the cost meter prices the run's device time and energy."""

    hardware: str = opt("auto", "cost meter: a row of the hardware table (cpu, H100, ...) or auto = this device")
    usd_per_hour: float | None = opt(None, "cost meter: price of one device-hour in USD (unset = the table's)")
    watts: float | None = opt(None, "cost meter: average draw of one busy device in watts (unset = the table's)")

    def __post_init__(self):
        if self.hardware != "auto":
            find_hardware(self.hardware)
        check_price(self.usd_per_hour, self.watts)


@dataclass
class LaunchConfig:
    """Where and in what precision the run computes, and how its processes work together (torchrun)."""

    device: str = opt("auto", "auto, cpu or cuda[:N]")
    dtype: str = opt("auto", "auto (bf16 where fast), bf16 or fp32")
    rollout_dtype: str = opt("auto", "precision of the rollout and evaluation weights: auto (= dtype), fp32 or bf16 "
                                     "(bf16 with dtype fp32 emulates a bf16 machine's rollouts on an fp32 one)")
    # many processes (torchrun; a resumed run may change these: LAUNCH_KEYS)
    fsdp: bool = opt(False, "under torchrun, shard weights, gradients and optimizer states over the ranks with "
                            "FSDP2, layer by layer (Llama-family models; for models that do not fit one device)")
    dist_timeout: float = opt(300.0, "under torchrun, seconds any collective waits for the other ranks before the "
                                     "run stops with an error")

    def __post_init__(self):
        for key in ("dtype", "rollout_dtype"):
            if getattr(self, key) not in ("auto", "bf16", "bfloat16", "fp32", "float32"):
                raise UsageError(f"{key} '{getattr(self, key)}': use auto, bf16 or fp32")
        if self.device != "auto" and self.device != "cpu" and not self.device.split(":")[0] == "cuda":
            raise UsageError(f"device '{self.device}': use auto, cpu or cuda[:N]")
        if self.dist_timeout <= 0:
            raise UsageError(f"dist_timeout={self.dist_timeout} must be > 0 (seconds)")


@dataclass
class GRPOConfig:
    """Everything a GRPO run needs: what to train, then one slice per concern. YAML recipe keys,
    command-line flags and a run's ``config.yaml`` are the flat keys (:func:`r1lite.config.keys`):
    ``lr``, ``temperature``, ``cold_start_lr`` (``cfg.optim.lr``, ``cfg.sampling.temperature``,
    ``cfg.cold_start.lr``)."""

    # what to train
    model: str = opt("default", "model: default (embedded SmolLM2-135M-Instruct), gemma3-270m (Gemma 3 270M base; make "
                                "gemma), tiny, tiny-gemma3, a local HF directory or a hub id")
    task: str = opt("arithmetic", "task spec: arithmetic, countdown, gsm8k:PATH, math:PATH, svamp:PATH, jsonl:PATH, gym:NAME")
    task_options: dict = opt({}, "task options, e.g. digits=3 or ops=+-", old=("task_opt",))
    format: str = opt("r1", "prompt format: r1 (<think>/<answer>) or plain")
    template: str = opt("auto", prompts.TEMPLATE_HELP + "; the run records the one it used")
    prefill_think: bool | None = opt(None, prompts.PREFILL_HELP)
    out: str = opt("runs/grpo", "run directory: checkpoints, metrics, summary, report")
    save_every: int = opt(10, "checkpoint every N steps (0 = only at the end)")
    preflight: bool = opt(True, "before the first update, print the first step's reward mean, share of groups scoring "
                                "alike, format rate and length, and stop (exit 2) if every group scored alike (no "
                                "gradient); false = train anyway")
    seed: int = opt(0, "seed for data order, sampling and initialisation")
    algorithm: str = opt("none", "preset: none (the fields as given), grpo, dr_grpo, dapo, r1, gspo or cispo; sets every field of "
                                 "the published variant (README); keys given explicitly still win")
    optim: OptimConfig = part(OptimConfig)
    sampling: SamplingConfig = part(SamplingConfig)
    loss: LossConfig = part(LossConfig)
    cold_start: ColdStartConfig = part(ColdStartConfig, "cold_start_")
    eval: EvalConfig = part(EvalConfig, "eval_")
    cost: MeterConfig = part(MeterConfig)
    launch: LaunchConfig = part(LaunchConfig)

    def __post_init__(self):
        """The checks that need this level's keys or more than one slice (each slice checks its own first)."""
        if self.format not in FORMATS:
            raise UsageError(f"format '{self.format}' is unknown; use one of {', '.join(FORMATS)}")
        if self.algorithm not in ALGORITHMS:
            raise UsageError(f"algorithm '{self.algorithm}' is unknown; use one of {', '.join(ALGORITHMS)}")
        # Resolved here, so config.yaml records what the run used (a resume, chat, serve and export read it).
        self.template = prompts.resolve_template(self.template, self.model, self.format)
        if self.prefill_think is None:
            self.prefill_think = prompts.default_prefill(self.template, self.format)
        if self.prefill_think and self.format != "r1":
            raise UsageError("prefill_think needs format r1")
        if self.save_every < 0:
            raise UsageError(f"save_every={self.save_every} must be >= 0")
        if self.sampling.rollout_batch_size < self.optim.group_size:
            raise UsageError(f"rollout_batch_size={self.sampling.rollout_batch_size} must be >= "
                             f"group_size={self.optim.group_size}")
        loss, max_new = self.loss, self.sampling.max_new_tokens
        if loss.overlong_buffer < 0 or loss.overlong_buffer >= max_new:
            raise UsageError(f"overlong_buffer={loss.overlong_buffer} must be in [0, max_new_tokens={max_new})")
        if loss.objective == "on_policy_distill" and (loss.beta or self.optim.mu != 1 or loss.dynamic_sampling):
            raise UsageError("objective on_policy_distill makes one update per batch with no KL reference and no "
                             "dynamic sampling; set beta 0, mu 1, dynamic_sampling false")
