"""Finding, building and loading the models and tokenizer a stage starts from."""
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from configs import MODEL_FLAGS, model_kwargs
from model import TOKENIZER_DIR, MiniMindConfig, MiniMindForCausalLM

@dataclass(frozen=True)
class ModelMode:
    stage: str  # output folder prefix the training script writes: OUT_DIR/<stage>_<dim>[_moe]
    command: str  # the command that writes it (named in "missing checkpoint" errors)
    label: str


# eval_model.py's --model_mode numbers (MiniMind's), and which stage folder each one loads
MODEL_MODES = {
    0: ModelMode("pretrain", "python train_pretrain.py", "pretrained model (continues text, no chat template)"),
    1: ModelMode("full_sft", "python train_full_sft.py", "supervised fine-tuned chat model"),
    2: ModelMode("rlhf", "python train_dpo.py", "DPO-aligned chat model"),
    3: ModelMode("reason", "python train_distill_reason.py", "reasoning model (<think>…</think><answer>…</answer>)"),
    4: ModelMode("grpo", "python train_grpo.py", "RL-tuned (GRPO) reasoning model"),
    5: ModelMode("distill", "python train_distillation.py --teacher TEACHER_DIR", "distilled (teacher → student) chat model"),
}
PRODUCED_BY = {mode.stage: mode.command for mode in MODEL_MODES.values()}


class StageError(Exception):
    """A set-up problem the user can fix (missing checkpoint, mismatched vocab, ...): printed as one line."""


def output_name(stage_name: str, dim: int, use_moe: bool) -> str:
    return f"{stage_name}_{dim}{'_moe' if use_moe else ''}"


def load_tokenizer(path=None):
    path = Path(path) if path else TOKENIZER_DIR
    if not (path / "tokenizer.json").exists() and not (path / "tokenizer_config.json").exists():
        raise StageError(f"no tokenizer in {path} (expected tokenizer.json; the project's own is in model/)")
    return AutoTokenizer.from_pretrained(path)


def resolve_weights(spec: str, args) -> Path | None:
    """'none' → None; a stage name → OUT_DIR/<stage>_<dim>[_moe]; anything else is a folder path."""
    if spec in (None, "", "none", "scratch"):
        return None
    if spec in PRODUCED_BY:
        path = Path(args.out_dir) / output_name(spec, args.dim, args.use_moe)
        if not (path / "config.json").exists():
            raise StageError(f"starting weights {path} not found: run `{PRODUCED_BY[spec]} --dim {args.dim}"
                             f"{' --use_moe' if args.use_moe else ''} --out_dir {args.out_dir}` first, "
                             f"or pass --from_weight DIR / none")
        return path
    path = Path(spec)
    if not (path / "config.json").exists():
        raise StageError(f"--from_weight {spec}: not a model folder (no config.json) and not a stage name "
                         f"({', '.join(PRODUCED_BY)})")
    return path


def load_model(path: Path) -> MiniMindForCausalLM:
    return MiniMindForCausalLM.from_pretrained(path, dtype=torch.float32)


def check_vocab(model, tokenizer, where):
    if len(tokenizer) > model.config.vocab_size:
        raise StageError(f"{where}: tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}; use the tokenizer the model was trained with (--tokenizer_path)")


def build_or_load_model(args, stage, tokenizer) -> MiniMindForCausalLM:
    path = resolve_weights(args.from_weight, args)
    if path is None:
        shape = model_kwargs({flag: getattr(args, flag) for flag in MODEL_FLAGS if hasattr(args, flag)})
        config = MiniMindConfig(
            **shape, vocab_size=max(6400, len(tokenizer)), max_position_embeddings=max(32768, args.max_seq_len),
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
        model = MiniMindForCausalLM(config)
    else:
        model = load_model(path)
        c = model.config
        if (c.hidden_size, c.use_moe, c.qk_norm) != (args.dim, args.use_moe, args.qk_norm):
            raise StageError(f"{path} holds a dim {c.hidden_size}{' MoE' if c.use_moe else ''}"
                             f"{' qk-norm' if c.qk_norm else ''} model, but this run says --dim {args.dim}"
                             f"{' --use_moe' if args.use_moe else ''}{' --qk_norm' if args.qk_norm else ''}: "
                             f"pass matching flags (or its preset, e.g. --config minimind3)")
    check_vocab(model, tokenizer, path or "new model")
    return model
