"""Mid-training and supervised fine-tuning with TRL's `SFTTrainer`: a base checkpoint -> a chat model.

    accelerate launch -m nanochat_hf.sft --stage mid --config recipes/tiny/mid.yaml
    accelerate launch -m nanochat_hf.sft --config recipes/tiny/sft.yaml
    nanochat-hf mid --config recipes/tiny/mid.yaml          # same, through the CLI router
    nanochat-hf sft --config recipes/d20/sft.yaml --max_steps 100 --output_dir runs/d20/sft

Every key of the YAML is also a flag (TRL's `TrlParser`: our `ChatArguments` + `SFTConfig`).
What happens, as nanochat's `mid_train` / `chat_sft`:
  1. the data mixture (`nanochat_hf.chat_data`) is built and rendered with the tokenizer's chat
     template; `assistant_masks` (its `{% generation %}` spans) says which tokens carry loss:
     assistant text, tool calls and `<|assistant_end|>` -- never BOS, user turns or tool outputs;
  2. TRL packs conversations best-fit (BFD) into `max_length` rows and passes `position_ids`
     that restart at every conversation, so attention never crosses a document boundary;
  3. the optimizer is pretraining's Muon + AdamW (`nanochat_hf.optim`) with nanochat's SFT
     schedule: LR = base x `init_lr_frac`, flat, then linear warmdown to `final_lr_frac`,
     Muon momentum 0.85 -> 0.95 over the first 300 steps;
  4. the Hub-ready chat model (config, safetensors, tokenizer + chat template, generation
     config that stops on `<|assistant_end|>`) lands in `<output_dir>/`, the metrics in
     `<output_dir>/logs/<stage>.jsonl`, checkpoints in `<output_dir>/checkpoint-N/`.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from nanochat_hf.checkpoints import AtomicCheckpoints, checkpoint_step, resume_checkpoint
from nanochat_hf.errors import UserError, ensure_writable, run_main, writing
from nanochat_hf.optim import lr_multiplier, muon_momentum
from nanochat_hf.recipe import arg, parse_stage_args
from nanochat_hf.runlog import RunLogCallback

# nanochat's schedules per stage (mid_train.py, chat_sft.py); a recipe or flag overrides them.
STAGE_DEFAULTS = {
    "mid": dict(init_lr_frac=1.0, warmup_frac=0.0, warmdown_ratio=0.2, final_lr_frac=0.0),
    "sft": dict(init_lr_frac=0.8, warmup_frac=0.0, warmdown_ratio=0.5, final_lr_frac=0.0),
}
# nanochat's SFT/mid Muon momentum: a ramp 0.85 -> 0.95 over 300 steps, then held (optim.muon_momentum's keywords)
MUON_MOMENTUM = dict(warmdown_ratio=0.0, warmup_steps=300, start=0.85, peak=0.95)


class ChatTrainingError(UserError):
    """A problem the user must fix before training can start (bad checkpoint, tokenizer, data)."""


# ----------------------------------------------------------------------------- arguments


@dataclass
class ChatArguments:
    """What SFTConfig does not cover: the base model, the data mixture, nanochat's optimizer and schedule."""

    stage: str = arg("sft", "mid or sft: picks the schedule defaults and the log name")
    model_name_or_path: str = arg("runs/tiny/base", "base (or mid) checkpoint folder or Hub id")
    mixture: str = arg("synthetic", "data: a named mixture (synthetic, nanochat_mid, nanochat_sft), a YAML file, "
                       "or (in a recipe) an inline mapping")
    optimizer: str = arg("nanochat", "nanochat (Muon + AdamW groups) or trainer (SFTConfig.optim)")
    embedding_lr: float = 0.3
    unembedding_lr: float = 0.004
    matrix_lr: float = 0.02
    scalar_lr: float = 0.5
    muon_weight_decay: float = arg(0.0, "pretraining decays it to zero; SFT keeps it there")
    batch_lr_scale: float = arg(-1.0, "lr multiplier; -1 = sqrt(tokens per step / 2^19), nanochat's rule")
    init_lr_frac: float | None = arg(None, "initial lr as a fraction of the base lr (mid 1.0, sft 0.8)")
    warmup_frac: float | None = arg(None, "first share of steps with linear lr warmup (nanochat: 0)")
    warmdown_ratio: float | None = arg(None, "final share of steps with linear lr decay (mid 0.2, sft 0.5)")
    final_lr_frac: float | None = arg(None, "lr at the end as a fraction of the initial lr")
    packed_layout: str = arg("rows", "rows: batch of packed rows, position_ids restart per conversation (SDPA, any "
                             "device); flat: TRL's padding-free single row (flash-attention varlen kernels)")
    # A quick ChatCORE subset while training (nanochat's chat_sft evaluates MMLU/ARC every eval_every steps).
    chatcore_every: int = arg(-1, "ChatCORE subset every N steps and at the end (-1 = off)")
    chatcore_tasks: str = arg("ARC-Easy,SpellingBee", "comma list of chat tasks for the subset")
    chatcore_examples: int = arg(32, "examples per task in the subset")
    chatcore_max_new_tokens: int = arg(128, "generation budget of generative subset tasks")
    chatcore_data: str | None = arg(None, "folder of chat-task JSONL (arc_easy.jsonl, ...); default: the small "
                                    "offline set shipped in the package, 'hub' for the Hub datasets")

    def __post_init__(self):
        if self.stage not in STAGE_DEFAULTS:
            raise ValueError(f"--stage must be mid or sft, got {self.stage!r}")
        for key, value in STAGE_DEFAULTS[self.stage].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if self.packed_layout not in ("rows", "flat"):
            raise ValueError(f"--packed_layout must be rows or flat, got {self.packed_layout!r}")
        if self.optimizer not in ("nanochat", "trainer"):
            raise ValueError(f"--optimizer must be nanochat or trainer, got {self.optimizer!r}")
        if self.chatcore_every > 0:
            from nanochat_hf.evaluation.chat_tasks import BASELINES

            unknown = [t for t in self.chatcore_tasks.split(",") if t not in BASELINES]
            if unknown or not self.chatcore_tasks:
                raise ValueError(f"--chatcore_tasks: unknown {unknown}; choose from {', '.join(BASELINES)}")
            if self.chatcore_examples < 1:
                raise ValueError(f"--chatcore_examples must be >= 1, got {self.chatcore_examples}")


@dataclass
class ChatSFTConfig(SFTConfig):
    """TRL's SFTConfig with nanochat's defaults (each still a flag)."""

    output_dir: str | None = arg(None, "where the chat model goes (default runs/tiny/<stage>)")
    max_length: int | None = arg(2048, "tokens per packed row; longer conversations are cropped")
    packing: bool = arg(True, "best-fit pack conversations into rows (no cross-document attention)")
    packing_strategy: str = arg("bfd", "bfd: best-fit decreasing, position_ids restart per conversation")
    assistant_only_loss: bool = arg(True, "loss only on assistant tokens (chat template generation spans)")
    num_train_epochs: float = arg(1.0, "nanochat trains one epoch of its mixture")
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    # TRL turns checkpointing on by default; nanochat does not (small models fit). Both names stay flags.
    activation_checkpointing: bool | None = arg(None, "recompute activations in backward to save memory")
    gradient_checkpointing: bool | None = arg(None, "deprecated alias of activation_checkpointing")
    bf16: bool | None = arg(None, "bf16 autocast; default: on when a bf16 GPU is there, off on CPU")
    max_grad_norm: float = arg(0.0, "gradient clipping (0 = off, as nanochat)")
    logging_steps: float = 1
    eval_strategy: str = arg("steps", "steps: validation loss every eval_steps; no: never")
    eval_steps: float | None = arg(100, "validation loss every N steps (and at the end)")
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = 2
    seed: int = 42

    def __post_init__(self):
        from nanochat_hf.distributed import no_accelerator

        if self.bf16 is None:
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if no_accelerator():
            self.use_cpu = True
        super().__post_init__()


def load_model_and_tokenizer(path: str, dtype: torch.dtype = torch.float32):
    """The base checkpoint and its tokenizer; refused with the fix if the tokenizer cannot chat."""
    from nanochat_hf.loading import load_model, model_source
    from nanochat_hf.tokenization import CHAT_TEMPLATE, load_tokenizer

    fix = f"pretrain one with `nanochat-hf pretrain --output_dir {path}` or pass --model_name_or_path"
    try:
        tokenizer = load_tokenizer(model_source(path, fix))
    except ValueError as err:
        raise ChatTrainingError(f"{err}. The base checkpoint's tokenizer lacks nanochat's chat tokens, so it cannot "
                                "learn conversations: pretrain with a tokenizer from "
                                "`nanochat-hf tokenizer train`") from None
    if not tokenizer.chat_template or "{% generation %}" not in tokenizer.chat_template:
        # The tokens are there, only the template is missing or has no loss spans: ours fits them.
        tokenizer.chat_template = CHAT_TEMPLATE
    return load_model(path, dtype=dtype, tokenizer=tokenizer, fix=fix)


# ----------------------------------------------------------------------------- batches, optimizer, schedule


class PackedRowsCollator:
    """Packed rows -> (B, max_length) batches whose `position_ids` restart at every conversation.

    Why not TRL's padding-free collator: it concatenates the whole batch into ONE row, which is
    what flash-attention's varlen kernels want, but SDPA (CPU, or GPUs without FA) then computes
    a (B*T)^2 masked attention instead of B*T^2. Here each packed row stays a row; the model turns
    the position_ids resets into a block-diagonal causal mask (no attention across conversations),
    and the right padding gets its own positions 0.. so it is a separate, unsupervised "document".
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), -100, dtype=torch.long)
        positions = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.as_tensor(e["input_ids"])
            labels[i, :n] = torch.as_tensor(e.get("labels", e["input_ids"]))
            lengths = list(e.get("seq_lengths") or [n]) + ([width - n] if width > n else [])
            positions[i] = torch.cat([torch.arange(k) for k in lengths])
        labels[positions == 0] = -100  # a document's first token is never predicted from the previous one
        return {"input_ids": ids, "labels": labels, "position_ids": positions}


class NanochatSchedule(torch.optim.lr_scheduler.LRScheduler):
    """Per-group lr = initial_lr x optim.lr_multiplier(step), Muon groups also get the momentum ramp; a torch
    LRScheduler, so the Trainer steps it, saves it in checkpoints and restores it on resume."""

    def __init__(self, optimizer, num_training_steps: int, warmup_ratio: float, warmdown_ratio: float,
                 final_lr_frac: float, last_epoch: int = -1):
        self.num_training_steps = max(1, num_training_steps)
        self.warmup_ratio, self.warmdown_ratio, self.final_lr_frac = warmup_ratio, warmdown_ratio, final_lr_frac
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        step, n = self.last_epoch, self.num_training_steps
        m = lr_multiplier(step, n, round(self.warmup_ratio * n), self.warmdown_ratio, self.final_lr_frac)
        for group in self.optimizer.param_groups:
            if group.get("kind") == "muon":
                group["momentum"] = muon_momentum(step, n, **MUON_MOMENTUM)
        return [base * m for base in self.base_lrs]


class ChatSFTTrainer(AtomicCheckpoints, SFTTrainer):
    """SFTTrainer whose optimizer and schedule are nanochat's and whose checkpoints are atomic (the rest is TRL's)."""

    def __init__(self, *args, chat_args: ChatArguments, **kwargs):
        self.chat_args = chat_args
        super().__init__(*args, **kwargs)
        if self.args.packing and chat_args.packed_layout == "rows":
            # Set after TRL's own: TRL refuses any collator but its own when packing is padding-free.
            self.data_collator = PackedRowsCollator(self.processing_class.pad_token_id)
        self.chatcore = ChatCoreCallback(self)
        self.add_callback(self.chatcore)

    def create_optimizer(self, model=None):
        if self.chat_args.optimizer != "nanochat":
            return super().create_optimizer(model)
        if self.optimizer is None:
            from nanochat_hf.optim import MuonAdamW, batch_lr_scale, build_param_groups

            c, a = self.chat_args, self.args
            tokens = a.per_device_train_batch_size * a.max_length * a.gradient_accumulation_steps * a.world_size
            scale = c.batch_lr_scale if c.batch_lr_scale > 0 else batch_lr_scale(tokens)
            self.optimizer = MuonAdamW(build_param_groups(
                model or self.model, embedding_lr=c.embedding_lr, unembedding_lr=c.unembedding_lr,
                matrix_lr=c.matrix_lr, scalar_lr=c.scalar_lr, weight_decay=c.muon_weight_decay,
                batch_lr_scale=scale * c.init_lr_frac))
        return self.optimizer

    def log(self, logs: dict, *args, **kwargs):
        chatcore = getattr(self, "chatcore", None)  # None while TRL's __init__ runs
        if chatcore is not None and chatcore.pending:  # the ChatCORE subset of this step (see ChatCoreCallback)
            logs, chatcore.pending = {**logs, **chatcore.pending}, None
        return super().log(logs, *args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.chat_args.optimizer != "nanochat":
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            c = self.chat_args
            self.lr_scheduler = NanochatSchedule(optimizer or self.optimizer, num_training_steps, c.warmup_frac,
                                                 c.warmdown_ratio, c.final_lr_frac)
        return self.lr_scheduler


class ChatCoreCallback(TrainerCallback):
    """At step 0, every `chatcore_every` steps and at the end: a small ChatCORE subset on the model being trained.

    Every rank evaluates the same rows greedily (identical forward calls), so sharded models (FSDP)
    work too; only the main process logs. Results go through `trainer.log`, hence to the JSONL log,
    the progress bar and any tracker, as `chatcore` and `chatcore/<task>`.
    """

    def __init__(self, trainer: ChatSFTTrainer):
        from nanochat_hf.evaluation.chat_tasks import OFFLINE_CHAT_DATA

        self.args, self.tokenizer, self.trainer = trainer.chat_args, trainer.processing_class, trainer
        self.tasks = self.args.chatcore_tasks.split(",")
        offline = str(OFFLINE_CHAT_DATA) if OFFLINE_CHAT_DATA.is_dir() else None
        self.data_dir = None if self.args.chatcore_data == "hub" else (self.args.chatcore_data or offline)
        self.last_step, self.pending = -1, None

    def evaluate(self, model, step: int) -> dict:
        from nanochat_hf.evaluation.chat_tasks import evaluate_chat_task

        model = self.trainer.accelerator.unwrap_model(model)
        with torch.no_grad():
            results = {task: evaluate_chat_task(task, model, self.tokenizer, self.data_dir,
                                                self.args.chatcore_examples,
                                                max_new_tokens=self.args.chatcore_max_new_tokens, progress=False)
                       for task in self.tasks}
        self.last_step = step  # (evaluate_chat_task puts the model back in train mode)
        row = {f"chatcore/{task}": r["accuracy"] for task, r in results.items()}
        row.update({f"chatcore/{task}/tool_calls": r["tool_calls"]
                    for task, r in results.items() if "tool_calls" in r})
        row.update({f"chatcore/{task}/n": r["n"] for task, r in results.items()})  # the report's noise band
        row["chatcore"] = sum(r["centered"] for r in results.values()) / len(results)
        return row

    def _due(self, state, model, force: bool = False) -> bool:
        every, step = self.args.chatcore_every, state.global_step
        return every > 0 and model is not None and step != self.last_step and (force or step % every == 0)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # Step 0 (as nanochat's chat_sft): the "before" of the report card's stage effects. Not on resume.
        if state.global_step == 0 and self._due(state, model):
            self.trainer.log(self.evaluate(model, 0))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        # Not trainer.log() from inside a step (it would swallow that step's loss row): the row rides
        # on the Trainer's next log call (ChatSFTTrainer.log), with that step's loss.
        if self._due(state, model):
            self.pending = self.evaluate(model, state.global_step)
            control.should_log = True

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._due(state, model, force=True):
            self.trainer.log(self.evaluate(model, state.global_step))


# ----------------------------------------------------------------------------- the run


def save_chat_model(trainer, tokenizer, output_dir: Path) -> None:
    """Hub-ready folder: model, tokenizer (+ chat template, token_bytes.pt), generation config stopping on
    <|assistant_end|> or <|bos|> (`set_generation_config`)."""
    from nanochat_hf.distributed import save_trainer_model
    from nanochat_hf.loading import set_generation_config
    from nanochat_hf.tokenization import save_tokenizer

    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.use_cache = True
    set_generation_config(model, tokenizer)
    with writing(output_dir):
        save_trainer_model(trainer, output_dir)
        if trainer.is_world_process_zero():
            save_tokenizer(tokenizer, output_dir)


def train(chat_args: ChatArguments, cfg: ChatSFTConfig) -> dict:
    """Build the data, run SFTTrainer, save the chat model; returns a summary of the run."""
    from nanochat_hf.chat_data import Mixture, build_mixture
    from nanochat_hf.chat_format import tokenize_conversations
    from nanochat_hf.distributed import fsdp_fallback_note

    output_dir = ensure_writable(cfg.output_dir)
    mixture = Mixture.parse(chat_args.mixture)  # a bad mixture fails now, before the model loads
    if cfg.max_length is None or cfg.max_length < 16:
        raise ValueError(f"--max_length must be >= 16 tokens, got {cfg.max_length}")
    resume = resume_checkpoint(output_dir, cfg.resume_from_checkpoint)

    model, tokenizer = load_model_and_tokenizer(chat_args.model_name_or_path)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and cfg.max_length > max_positions:
        print(f"note: max_length {cfg.max_length} > the model's max_position_embeddings {max_positions}",
              file=sys.stderr)

    splits = build_mixture(mixture)
    train_ds, train_stats = tokenize_conversations(splits["train"], tokenizer, cfg.max_length, "train",
                                                   cfg.dataset_num_proc)
    eval_ds, eval_stats = None, None
    if len(splits["validation"]):
        eval_ds, eval_stats = tokenize_conversations(splits["validation"], tokenizer, cfg.max_length, "validation",
                                                     cfg.dataset_num_proc)
    else:
        cfg.eval_strategy = "no"
    header = {"stage": chat_args.stage, "model": chat_args.model_name_or_path, "sources": splits.source_counts,
              "train": train_stats, "validation": eval_stats, "max_length": cfg.max_length,
              "world_size": cfg.world_size}
    print(f"[{chat_args.stage}] train: {train_stats} | validation: {eval_stats}", file=sys.stderr)

    resume_step = checkpoint_step(resume) if resume else None
    log = RunLogCallback(output_dir / "logs" / f"{chat_args.stage}.jsonl", resume_step, header)
    trainer = ChatSFTTrainer(model=model, args=cfg, train_dataset=train_ds, eval_dataset=eval_ds,
                             processing_class=tokenizer, callbacks=[log], chat_args=chat_args)
    acc = trainer.accelerator  # how the run really ran, in its log (a CPU run of fsdp2.yaml is not FSDP)
    header.update(distributed_type=str(acc.distributed_type), mixed_precision=acc.mixed_precision)
    note = fsdp_fallback_note(acc)
    if note and acc.is_main_process:
        print(f"[{chat_args.stage}] {note}", file=sys.stderr)
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    metrics = dict(result.metrics)
    if eval_ds is not None:  # the validation loss of the final model (unless the last step just measured it)
        last = [r for r in trainer.state.log_history
                if "eval_loss" in r and r.get("step") == trainer.state.global_step]
        metrics.update(last[-1] if last else trainer.evaluate())
    save_chat_model(trainer, tokenizer, output_dir)
    return {"output_dir": str(output_dir), "steps": trainer.state.global_step, **metrics,
            "truncated_rows": train_stats["truncated_rows"]}


def parse_args(argv: list[str] | None, stage: str | None = None) -> tuple[ChatArguments, ChatSFTConfig]:
    """YAML `--config` + flag overrides, the TRL way. `stage` forces --stage (nanochat-hf mid); otherwise --stage,
    the recipe's `stage:` or sft."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if stage and not any(a == "--stage" or a.startswith("--stage=") for a in argv):
        argv = ["--stage", stage, *argv]
    chat_args, cfg = parse_stage_args((ChatArguments, ChatSFTConfig), argv)
    if cfg.output_dir in (None, "trainer_output"):
        cfg.output_dir = f"runs/tiny/{chat_args.stage}"
    return chat_args, cfg


def main(argv: list[str] | None = None, stage: str | None = None) -> int:
    """`nanochat-hf sft ...` (and `accelerate launch -m nanochat_hf.sft ...`)."""

    def run() -> None:
        summary = train(*parse_args(argv, stage))
        print(json.dumps({k: v for k, v in summary.items() if isinstance(v, (int, float, str))}))

    return run_main(f"nanochat-hf {stage or 'sft'}", run)  # bad input, a full disk: one line, exit status 2


def main_mid(argv: list[str] | None = None) -> int:
    """`nanochat-hf mid ...`: the same trainer with mid-training's schedule and log name."""
    return main(argv, stage="mid")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
