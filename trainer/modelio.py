"""Finding, building and loading the models and tokenizer a stage starts from."""
from pathlib import Path

import torch

from configs import MODEL_FLAGS, model_kwargs
from inference import loading
from inference.checkpoints import ModelNotFound, resolve_start
from model import MiniMindConfig, MiniMindForCausalLM


class StageError(Exception):
    """A set-up problem the user can fix (missing checkpoint, mismatched vocab, ...): printed as one line."""


def load_tokenizer(path=None):
    try:
        return loading.load_tokenizer(path)
    except ModelNotFound as e:
        raise StageError(str(e)) from None


def resolve_weights(spec, out_dir, dim: int, use_moe: bool, flag: str = "--from_weight") -> Path | None:
    """'none' → None; a stage name → OUT_DIR/<stage>_<dim>[_moe]; anything else is a folder path."""
    try:
        return resolve_start(spec, out_dir, dim, use_moe, flag)
    except ModelNotFound as e:
        raise StageError(str(e)) from None


def load_model(path: Path) -> MiniMindForCausalLM:
    return MiniMindForCausalLM.from_pretrained(path, dtype=torch.float32)


def check_vocab(model, tokenizer, where):
    if len(tokenizer) > model.config.vocab_size:
        raise StageError(f"{where}: tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size}; use the tokenizer the model was trained with (--tokenizer_path)")


def build_or_load_model(args, stage, tokenizer) -> MiniMindForCausalLM:
    path = resolve_weights(args.from_weight, args.out_dir, args.dim, args.use_moe)
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
