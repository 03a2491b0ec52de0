"""Reinforcement learning on GSM8K with TRL's GRPOTrainer: nanochat's `chat_rl`, on the HF stack.

    accelerate launch -m nanochat_hf.rl --config recipes/d20/rl.yaml --model_name_or_path runs/d20/sft
    nanochat-hf rl --config recipes/tiny/rl.yaml --model_name_or_path runs/tiny/sft --output_dir runs/tiny/rl

Every key of the YAML is also a flag (`--max_steps 2`, `--num_generations 8`, `--use_vllm true`).

nanochat's RL is "GRPO" reduced to on-policy REINFORCE, and each of its simplifications is
one of GRPOConfig's knobs (set in the recipes):
  no KL to a reference model              beta: 0.0
  on policy, no PPO ratio/clip needed     num_iterations: 1  (the ratio is then exactly 1)
  token-level normalisation (DAPO)        loss_type: dapo
  advantage = reward - group mean         scale_rewards: none
  16 samples per question, 256 tokens     num_generations: 16, max_completion_length: 256
  temperature 1.0, top-k 50               temperature: 1.0, top_k: 50
  lr = 5% of base, linear decay to 0      init_lr_frac: 0.05 (nanochat optimizer) / learning_rate,
                                          lr_scheduler_type: linear

Rollouts run the calculator as SFT taught it (our Engine, or TRL's vLLM in turns, through TRL's `rollout_func`)
and return its forced output as `env_mask = 0`: the model is never trained to "predict" tool output. TRL's
own `tools=` expects JSON function-calling templates, which nanochat's format is not. More: docs/rl.md.
"""

from __future__ import annotations

import itertools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import GRPOConfig

from nanochat_hf.checkpoints import AtomicCheckpoints, checkpoint_step, resume_checkpoint
from nanochat_hf.errors import ensure_writable, run_main, writing
from nanochat_hf.extras import require
from nanochat_hf.recipe import arg, parse_stage_args
from nanochat_hf.runlog import RunLogCallback


@dataclass
class RLArguments:
    """Our flags; everything else is TRL's GRPOConfig (output_dir, max_steps, learning_rate, ...)."""

    model_name_or_path: str | None = arg(None, "SFT model folder or Hub id (required)")
    tokenizer_name_or_path: str | None = arg(None, "tokenizer (default: the model's)")
    # data
    dataset_name: str = arg("synthetic", "'synthetic' (offline arithmetic), a Hub id such as openai/gsm8k, or a "
                             "local jsonl/parquet file or folder with GSM8K's `question` and `answer` columns")
    dataset_config: str | None = arg("main", "Hub config / subfolder (GSM8K: main)")
    dataset_train_split: str = arg("train", "split with the training questions")
    dataset_test_split: str = arg("test", "split with the held-out questions (pass@k)")
    max_train_examples: int = arg(-1, "use only the first N training questions (-1: all)")
    synthetic_train_size: int = arg(4000, "synthetic: number of training problems")
    synthetic_test_size: int = arg(200, "synthetic: number of held-out problems")
    synthetic_max_operand: int = arg(999, "synthetic: largest number in a problem")
    synthetic_seed: int = arg(200_000, "synthetic: seed of the first training problem (far from the seeds "
                                        "mid/SFT draw from)")
    # reward and rollouts
    reward_funcs: list[str] = field(default_factory=lambda: ["correctness"], metadata={
        "help": "reward functions of nanochat_hf.rewards: correctness, correctness_last_number, format "
                "(weights: GRPOConfig's reward_weights)"})
    use_calculator: bool = arg(True, "run the calculator tool inside rollouts (nanochat's Engine); false: plain "
                                      "TRL generation")
    # periodic pass@k on held-out questions (nanochat: every 60 steps, 400 questions, k up to 8)
    eval_every: int = arg(60, "measure pass@k every N steps (and at 0 and the end); <=0: never")
    eval_examples: int = arg(400, "held-out questions per pass@k measurement")
    pass_k: int = arg(8, "samples per held-out question: logs pass@1..pass@k")
    eval_temperature: float = arg(1.0, "sampling temperature of the pass@k samples")
    # optimizer: TRL's AdamW (learning_rate, lr_scheduler_type) or nanochat's Muon + AdamW groups
    optimizer: str = arg("adamw", "'adamw' (TRL's, learning_rate + lr_scheduler_type) or 'nanochat' (Muon for "
                                   "matrices, AdamW elsewhere, lrs below times init_lr_frac, linear decay to 0)")
    embedding_lr: float = arg(0.2, "nanochat optimizer: embedding lr (AdamW)")
    unembedding_lr: float = arg(0.004, "nanochat optimizer: lm_head lr (AdamW)")
    matrix_lr: float = arg(0.02, "nanochat optimizer: block matrices lr (Muon)")
    scalar_lr: float = arg(0.5, "nanochat optimizer: scalars lr (AdamW)")
    init_lr_frac: float = arg(0.05, "nanochat optimizer: start at this fraction of the lrs")


@dataclass
class RLConfig(GRPOConfig):
    """TRL's GRPOConfig, with `use_cpu` on by itself where there is no GPU (as the SFT stage)."""

    def __post_init__(self):
        from nanochat_hf.distributed import no_accelerator

        if no_accelerator():
            # Else the d20-d32 recipes (bf16: true) stop on "Your setup doesn't support bf16/gpu", and a
            # `--multi_gpu` launch would train each process alone instead of as one gloo group.
            self.use_cpu = True
        super().__post_init__()


def parse_args(argv: list[str]):
    return parse_stage_args((RLArguments, RLConfig), argv)


# ----------------------------------------------------------------------------- prompts


def synthetic_rows(size: int, seed: int = 0, max_operand: int = 99) -> list[dict]:
    """Arithmetic word problems in GSM8K's schema, from the SFT data's own generator: SFT teaches exactly
    these conversations, so RL starts from a model that knows the format and improves how often it is right."""
    from nanochat_hf.synthetic_tasks import arithmetic

    rows = []
    for messages in arithmetic(size, seed=seed, max_operand=max_operand):
        question, parts = messages[0]["content"], messages[1]["content"]
        # Back to GSM8K's text: a python part and the output after it become `<<expr=result>>`.
        answer = ""
        for part, following in zip(parts, parts[1:] + [{}]):
            if part["type"] == "python":
                result = following.get("text", "") if following.get("type") == "python_output" else ""
                answer += f"<<{part['text']}={result}>>"
            elif part["type"] == "text":
                answer += part["text"]
        rows.append({"question": question, "answer": answer})
    return rows


def to_prompt_dataset(rows):
    """GSM8K rows -> TRL's conversational prompts; `answer` stays a column for the reward function."""
    from datasets import Dataset

    if not isinstance(rows, Dataset):
        rows = Dataset.from_list(list(rows))
    missing = {"question", "answer"} - set(rows.column_names)
    if missing:
        raise ValueError(f"the RL dataset needs GSM8K's `question` and `answer` columns; missing {sorted(missing)} "
                         f"(columns: {rows.column_names})")
    extra = [c for c in rows.column_names if c not in ("question", "answer")]
    return rows.map(lambda r: {"prompt": [{"role": "user", "content": r["question"]}]}, remove_columns=extra)


def load_prompts(args: RLArguments):
    """(train, test) prompt datasets for `args.dataset_name`."""
    if args.dataset_name == "synthetic":
        from nanochat_hf.synthetic_tasks import VAL_SEED_OFFSET

        train = synthetic_rows(args.synthetic_train_size, seed=args.synthetic_seed,
                               max_operand=args.synthetic_max_operand)
        test = synthetic_rows(args.synthetic_test_size, seed=VAL_SEED_OFFSET, max_operand=args.synthetic_max_operand)
    else:
        # Hub id (openai/gsm8k + config main) or local files in the same schema; chat_data knows both.
        from nanochat_hf.chat_data import load_rows

        path = Path(args.dataset_name).expanduser()
        if path.is_dir() and args.dataset_config and (path / args.dataset_config).is_dir():
            path = path / args.dataset_config  # a local copy of the Hub layout: gsm8k/main/train-*.parquet
        source = str(path) if path.exists() else args.dataset_name
        train = load_rows(source, args.dataset_config, args.dataset_train_split)
        test = load_rows(source, args.dataset_config, args.dataset_test_split)
        if source == str(path) and path.is_file():
            raise ValueError(f"{path} is one file; RL needs train and held-out questions: give a folder with "
                             f"{args.dataset_train_split}.jsonl and {args.dataset_test_split}.jsonl (or parquet)")
    train, test = to_prompt_dataset(train), to_prompt_dataset(test)
    if args.max_train_examples > 0:
        train = train.select(range(min(args.max_train_examples, len(train))))
    if len(train) == 0:
        raise ValueError(f"no training questions in {args.dataset_name!r}")
    return train, test


# ----------------------------------------------------------------------------- rollouts with the calculator


def _groups(prompts: list) -> list[tuple[int, int]]:
    """(start, end) of runs of identical consecutive prompts: TRL's sampler repeats each question."""
    ends = list(itertools.accumulate(len(list(run)) for _, run in itertools.groupby(prompts)))
    return list(zip([0] + ends[:-1], ends))


def sample_with_tools(engine, prompt_tokens: list[int], num_samples: int, max_tokens: int,
                      temperature: float, top_k: int | None, top_p: float | None, seed: int):
    """`num_samples` completions of one prompt by the Engine: (completion ids, mask with 0 on forced tool output).

    A completion that stopped on its own ends with `<|assistant_end|>` (mask 1) so the model is also rewarded
    for stopping; one cut at `max_tokens` does not, which TRL reads as truncated.
    """
    sequences, masks = engine.generate_batch(
        prompt_tokens, num_samples=num_samples, max_tokens=max_tokens, temperature=temperature,
        top_k=top_k or None, top_p=top_p if top_p is not None and top_p < 1.0 else None, seed=seed)
    end = engine.tokenizer.convert_tokens_to_ids("<|assistant_end|>")
    out_ids, out_masks = [], []
    for seq, mask in zip(sequences, masks):
        ids, m = seq[len(prompt_tokens):], mask[len(prompt_tokens):]
        if len(ids) < max_tokens:  # stopped on its own
            ids, m = ids + [end], m + [1]
        out_ids.append(ids)
        out_masks.append(m)
    return out_ids, out_masks


def make_rollout_func():
    """TRL `rollout_func(prompts, trainer) -> {prompt_ids, completion_ids, logprobs, env_mask}`."""
    from trl.models.utils import unwrap_model_for_generation

    from nanochat_hf.chat_format import render_for_completion
    from nanochat_hf.engine import Engine

    def rollout(prompts: list, trainer) -> dict:
        cfg, tokenizer = trainer.args, trainer.processing_class
        prompt_ids, completion_ids, env_mask = [], [], []
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model, torch.no_grad():
            was_training = model.training
            engine = Engine(model, tokenizer)  # puts the model in eval mode (no dropout while sampling)
            for g, (start, end) in enumerate(_groups(prompts)):
                tokens = render_for_completion(tokenizer, prompts[start])
                # A different seed for every step, rank and question (nanochat hashes (step, example)).
                seed = hash((cfg.seed, trainer.state.global_step, trainer.accelerator.process_index, g)) & 0x7FFFFFFF
                ids, masks = sample_with_tools(engine, tokens, end - start, cfg.max_completion_length,
                                               cfg.temperature, cfg.top_k, cfg.top_p, seed)
                prompt_ids += [tokens] * (end - start)
                completion_ids += ids
                env_mask += masks
            model.train(was_training)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None, "env_mask": env_mask}

    return rollout


def with_tool_call_metric(reward_func, python_start: int):
    """`reward_func` that also logs calculator calls per completion, through the `log_metric` TRL hands every
    reward function (averaged over ranks and logged with TRL's own metrics)."""
    def reward(completions, completion_ids=None, log_metric=None, **kwargs):
        if log_metric is not None and completion_ids is not None:
            calls = sum(list(ids).count(python_start) for ids in completion_ids)
            log_metric("tools/calls_per_completion", calls / max(1, len(completion_ids)))
        return reward_func(completions=completions, completion_ids=completion_ids, **kwargs)

    reward.__name__ = reward_func.__name__  # TRL names the reward's own metrics after it
    return reward


def make_vllm_rollout_func():
    """`rollout_func` for `use_vllm: true`: TRL's vLLM generation in turns, the calculator between them.

    Each turn (TRL has synced the weights into vLLM) keeps a sample's tokens up to its first complete call,
    forces the calculator's output (env_mask 0, no sampling logprob) and sends prompt + completion so far back.
    Tokens vLLM generated after the call are dropped, as the Engine would never have sampled them.
    """
    from nanochat_hf.chat_format import render_for_completion
    from nanochat_hf.tools import TOOL_TOKENS, ToolState

    def rollout(prompts: list, trainer) -> dict:
        tokenizer, acc, budget = trainer.processing_class, trainer.accelerator, trainer.args.max_completion_length
        ids = {n: tokenizer.convert_tokens_to_ids(n) for n in TOOL_TOKENS}
        prompt_ids = [render_for_completion(tokenizer, p) for p in prompts]
        states = [ToolState(ids, tokenizer) for _ in prompts]
        completion, env_mask, logprobs = [[] for _ in prompts], [[] for _ in prompts], [[] for _ in prompts]
        pending = list(range(len(prompts)))
        while True:
            # Server mode gathers all ranks' prompts in one collective call and slices the answer by
            # equal shares: every rank makes the same calls with as many prompts (fillers' outputs dropped).
            most = int(acc.gather(torch.tensor([len(pending)], device=acc.device)).max())
            if most == 0:
                break
            rows = pending + [pending[0] if pending else 0] * (most - len(pending))
            _, new_ids, new_logprobs, _ = trainer.vllm_generation.generate(
                prompts=[prompt_ids[i] + completion[i] for i in rows], images=None, num_generations=1)
            still = []
            for i, tokens, lps in zip(pending, new_ids, new_logprobs):
                state = states[i]
                for token, lp in zip(tokens, lps):
                    if len(completion[i]) >= budget or state.forced:
                        break  # out of budget, or a call just ended: the calculator answers, not vLLM
                    state.next_token(token)
                    completion[i].append(token)
                    env_mask[i].append(1)
                    logprobs[i].append(lp[0] if isinstance(lp, (list, tuple)) else lp)
                if state.forced:
                    forced = list(state.forced)[: budget - len(completion[i])]
                    state.forced.clear()
                    completion[i] += forced
                    env_mask[i] += [0] * len(forced)
                    logprobs[i] += [None] * len(forced)  # TRL reads None as "no sampling logprob"
                    if len(completion[i]) < budget:
                        still.append(i)
            pending = still
        return {"prompt_ids": prompt_ids, "completion_ids": completion, "logprobs": logprobs, "env_mask": env_mask}

    return rollout


# ----------------------------------------------------------------------------- pass@k and logging


def answers_correct(engine, prompt_tokens: list[int], answer: str, num_samples: int, max_tokens: int,
                    temperature: float, top_k: int | None, seed: int) -> list[float]:
    """The reward (1.0 right, 0.0 wrong) of each of `num_samples` tool-using completions of one question."""
    from nanochat_hf.rewards import correctness_reward

    ids, _ = sample_with_tools(engine, prompt_tokens, num_samples, max_tokens, temperature, top_k, None, seed)
    texts = engine.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return correctness_reward(completions=texts, answer=[answer] * num_samples)


@torch.no_grad()
def pass_at_k(model, tokenizer, dataset, k: int, max_tokens: int, temperature: float, top_k: int | None,
              rank: int = 0, world_size: int = 1, seed: int = 0) -> tuple[torch.Tensor, int]:
    """nanochat's measure: counts[j] = questions with a correct answer among the first j + 1 samples, and the
    number of questions, for this rank's share (the caller sums across ranks)."""
    from nanochat_hf.chat_format import render_for_completion
    from nanochat_hf.engine import Engine

    counts, mine = torch.zeros(k), range(rank, len(dataset), world_size)
    was_training = model.training
    engine = Engine(model, tokenizer)
    for idx in mine:
        row = dataset[idx]
        tokens = render_for_completion(tokenizer, row["prompt"])
        correct = answers_correct(engine, tokens, row["answer"], k, max_tokens, temperature, top_k, seed + idx)
        counts += torch.tensor(correct).cummax(0).values  # 1 from the first correct sample on
    model.train(was_training)
    return counts, len(mine)


class PassAtKCallback(TrainerCallback):
    """pass@1..k on held-out questions at step 0, every `eval_every` steps and at the end."""

    def __init__(self, args: RLArguments, dataset):
        self.args, self.dataset, self.trainer, self.last = args, dataset, None, None

    def _run(self, state, control=None):
        from trl.models.utils import unwrap_model_for_generation

        trainer, a = self.trainer, self.args
        if trainer is None or a.eval_every <= 0 or self.last == state.global_step or len(self.dataset) == 0:
            return
        self.last = state.global_step
        acc, cfg = trainer.accelerator, trainer.args
        data = self.dataset.select(range(min(a.eval_examples, len(self.dataset))))
        with unwrap_model_for_generation(trainer.model_wrapped, acc) as model:
            counts, n = pass_at_k(model, trainer.processing_class, data, a.pass_k, cfg.max_completion_length,
                                  a.eval_temperature, cfg.top_k, acc.process_index, acc.num_processes, seed=cfg.seed)
        totals = acc.reduce(torch.cat([counts, torch.tensor([float(n)])]).to(acc.device), reduction="sum").cpu()
        logs = {f"pass@{j + 1}": round(float(totals[j] / max(1.0, totals[-1])), 4) for j in range(a.pass_k)}
        logs["pass@k/n"] = int(totals[-1])  # questions measured: the report card's noise band
        model_ = trainer.model
        was_training = model_.training
        model_.eval()  # GRPOTrainer.log flushes the metrics of the current mode: keep the training ones intact
        should_log = control.should_log if control is not None else None
        trainer.log(logs)
        if control is not None:  # logging resets the flag; the step's own training log must still happen
            control.should_log = should_log
        model_.train(was_training)

    def on_train_begin(self, args, state, control, **kwargs):
        self._run(state)

    def on_step_end(self, args, state, control, **kwargs):
        if self.args.eval_every > 0 and state.global_step % self.args.eval_every == 0:
            self._run(state, control)

    def on_train_end(self, args, state, control, **kwargs):
        self._run(state)


# ----------------------------------------------------------------------------- model, optimizer


SFT_FIX = "run `nanochat-hf sft` first or pass the right --model_name_or_path"


def load_model(args: RLArguments, config):
    from nanochat_hf.loading import load_model as load, set_generation_config

    # fp32 master weights; bf16 autocast comes from `bf16: true` on GPUs (as nanochat).
    model, tokenizer = load(args.model_name_or_path, dtype=torch.float32, tokenizer=args.tokenizer_name_or_path,
                            trust_remote_code=config.trust_remote_code, fix=SFT_FIX)
    tokenizer.padding_side = "left"  # GRPO left-pads prompts
    # The saved folder stops like every stage's, and samples like nanochat's chat.
    set_generation_config(model, tokenizer)
    gen = model.generation_config
    gen.do_sample, gen.temperature, gen.top_k = True, config.temperature, config.top_k or None
    return model, tokenizer


def rl_horizon(config, num_questions: int) -> int:
    """Optimizer steps of the run: `max_steps`, or when it is <= 0 nanochat's
    (questions // questions per step) * epochs, so the linear lr decay ends with the data."""
    if config.max_steps > 0:
        return config.max_steps
    questions_per_step = config.generation_batch_size // config.num_generations
    return max(1, int(num_questions // questions_per_step * config.num_train_epochs))


def rl_lr_multiplier(step: int, num_steps: int, warmup_steps: int = 0) -> float:
    """nanochat's linear decay to 0 over the run, after an optional linear warmup (`warmup_steps`).

    The warmup matters on a small model: Adam's first, bias-corrected steps are full-size sign steps
    whatever the gradient's noise, and without it the tiny model loses 0.15 greedy accuracy in the
    first 10 steps before RL's signal wins it back (recipes/tiny/rl.yaml). Why not the Trainer's own
    `linear` schedule: its warmup ends at the full lr and its decay starts from there (~9% more lr
    than nanochat's line for the rest of the run), and on the tiny model that cost RL its gain
    (docs/rl.md#the-learning-rate-schedule); with no warmup the two are the same.
    """
    warm = min(1.0, (step + 1) / (warmup_steps + 1)) if warmup_steps > 0 else 1.0
    return warm * max(0.0, 1.0 - step / num_steps)


def build_nanochat_optimizer(model, args: RLArguments):
    """nanochat's chat_rl optimizer: Muon + AdamW groups at init_lr_frac of their lrs (decayed by the scheduler)."""
    from nanochat_hf.optim import build_optimizer

    # init_lr_frac scales EVERY group, as nanochat's chat_rl does (the smear/backout scalars have a fixed
    # lr of their own: left at full lr, Adam's 0.2 steps on them wreck the model within a few steps).
    return build_optimizer(model, embedding_lr=args.embedding_lr, unembedding_lr=args.unembedding_lr,
                           matrix_lr=args.matrix_lr, scalar_lr=args.scalar_lr, weight_decay=0.0,
                           batch_lr_scale=args.init_lr_frac)


def _trainer_class(args: RLArguments):
    """GRPOTrainer with atomic checkpoints, whose optimizer is nanochat's when `optimizer: nanochat`.

    Built by the Trainer (create_optimizer), not handed in through `optimizers=`: under FSDP the Trainer
    refuses a ready optimizer, and the optimizer must see the sharded parameters, which exist only
    once the Trainer has wrapped the model.
    """
    from trl import GRPOTrainer

    class NanochatGRPOTrainer(AtomicCheckpoints, GRPOTrainer):  # checkpoints written aside, then renamed
        def create_optimizer(self, model=None):
            if args.optimizer == "nanochat" and self.optimizer is None:
                self.optimizer = build_nanochat_optimizer(model or self.model, args)
            return super().create_optimizer(model)

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if args.optimizer == "nanochat" and self.lr_scheduler is None:
                warmup = self.args.get_warmup_steps(num_training_steps)
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    optimizer or self.optimizer, lambda step: rl_lr_multiplier(step, num_training_steps, warmup))
            return super().create_scheduler(num_training_steps, optimizer)

    return NanochatGRPOTrainer


# ----------------------------------------------------------------------------- main


def check_args(args: RLArguments, config) -> None:
    """Refuse bad settings in one line each, before loading anything."""
    from nanochat_hf.loading import model_source
    from nanochat_hf.rewards import REWARD_FUNCS

    if not args.model_name_or_path:
        raise ValueError("--model_name_or_path is required: the SFT model folder (e.g. runs/tiny/sft) or a Hub id")
    model_source(args.model_name_or_path, SFT_FIX)
    unknown = [r for r in args.reward_funcs if r not in REWARD_FUNCS]
    if unknown or not args.reward_funcs:
        raise ValueError(f"unknown reward_funcs {unknown}; choose from {sorted(REWARD_FUNCS)}")
    if config.reward_weights is not None and len(config.reward_weights) != len(args.reward_funcs):
        raise ValueError(f"reward_weights has {len(config.reward_weights)} values for "
                         f"{len(args.reward_funcs)} reward_funcs")
    if args.optimizer not in ("adamw", "nanochat"):
        raise ValueError(f"optimizer must be 'adamw' or 'nanochat', got {args.optimizer!r}")
    if args.pass_k < 1:
        raise ValueError(f"pass_k must be >= 1, got {args.pass_k}")
    if config.num_iterations != 1 or config.beta != 0.0:
        print(f"[rl] note: num_iterations={config.num_iterations}, beta={config.beta}: no longer nanochat's "
              "on-policy objective (num_iterations 1, beta 0)", file=sys.stderr)


def train(args: RLArguments, config):
    from nanochat_hf.distributed import fsdp_fallback_note, save_trainer_model
    from nanochat_hf.rewards import REWARD_FUNCS
    from nanochat_hf.tokenization import save_tokenizer

    if config.use_vllm:
        require("vllm", "use_vllm: true")
    check_args(args, config)
    ensure_writable(config.output_dir)
    resume = resume_checkpoint(config.output_dir, config.resume_from_checkpoint)
    train_ds, test_ds = load_prompts(args)
    model, tokenizer = load_model(args, config)
    if config.gradient_checkpointing and not getattr(model, "supports_gradient_checkpointing", False):
        config.gradient_checkpointing = False
    if args.optimizer == "nanochat":
        config.max_steps = rl_horizon(config, len(train_ds))

    # Rollouts with the calculator: our Engine, or TRL's vLLM generation in turns; else plain TRL generation.
    rollout_func = None
    if args.use_calculator:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is marked experimental in TRL 1.x
        rollout_func = make_vllm_rollout_func() if config.use_vllm else make_rollout_func()

    log = RunLogCallback(Path(config.output_dir) / "logs" / "rl.jsonl", checkpoint_step(resume) if resume else None)
    passk = PassAtKCallback(args, test_ds)
    reward_funcs = [REWARD_FUNCS[name] for name in args.reward_funcs]
    if args.use_calculator:
        reward_funcs[0] = with_tool_call_metric(reward_funcs[0], tokenizer.convert_tokens_to_ids("<|python_start|>"))
    trainer = _trainer_class(args)(model=model, reward_funcs=reward_funcs, args=config, train_dataset=train_ds,
                                   processing_class=tokenizer, callbacks=[log, passk], rollout_func=rollout_func)
    passk.trainer = trainer
    if trainer.accelerator.is_main_process:
        print(f"[rl] {trainer.accelerator.state}".strip())
        note = fsdp_fallback_note(trainer.accelerator)
        if note:
            print(f"[rl] {note}")
        print(f"[rl] {len(train_ds):,} training questions, {len(test_ds):,} held out; "
              f"{config.num_generations} samples each; calculator in rollouts: {rollout_func is not None}")
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    # The Hub-ready folder: weights, config, generation config, tokenizer with its chat template. Older
    # transformers' Trainer prepends the tokenizer's eos to the stop list while training: keep each id once.
    gen = trainer.model.generation_config
    if isinstance(gen.eos_token_id, list):
        gen.eos_token_id = list(dict.fromkeys(gen.eos_token_id))
    with writing(config.output_dir):
        save_trainer_model(trainer, config.output_dir)
        if trainer.accelerator.is_main_process:
            save_tokenizer(tokenizer, config.output_dir)
            trainer.create_model_card(model_name=Path(config.output_dir).name, dataset_name=args.dataset_name,
                                      tags=["nanochat", "nanochat_hf"])
    return trainer


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Bad input, a full disk: one line and exit status 2 (nanochat_hf.errors).
    return run_main("nanochat-hf rl", lambda: train(*parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
