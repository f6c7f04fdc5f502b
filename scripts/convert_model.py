"""Convert MiniMind checkpoints to and from other layouts.

  export-llama SRC_DIR DST_DIR            dense MiniMind HF folder -> transformers LlamaForCausalLM folder
  merge-lora BASE_DIR ADAPTER_DIR DST_DIR  fold a peft LoRA adapter into its base -> full MiniMind folder
  import-minimind2 FILE.pth DST_DIR        MiniMind2 .pth state dict -> MiniMind HF folder
"""
import argparse
import re
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import TOKENIZER_DIR, MiniMindConfig, MiniMindForCausalLM  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class ConvertError(Exception):
    pass


def copy_tokenizer(src_dir: Path, dst_dir: Path):
    """Copy the tokenizer files from src_dir (or the project's tokenizer) so dst_dir is self-contained."""
    src = src_dir if (src_dir / "tokenizer.json").exists() else TOKENIZER_DIR
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst_dir / name)


def load_minimind(path: Path) -> MiniMindForCausalLM:
    if not (path / "config.json").exists():
        raise ConvertError(f"{path}: not a model folder (no config.json)")
    return MiniMindForCausalLM.from_pretrained(path, dtype=torch.float32)


def llama_config(config: MiniMindConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_parameters=dict(config.rope_parameters), tie_word_embeddings=config.tie_word_embeddings,
        attention_bias=False, mlp_bias=False, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def export_llama(src: Path, dst: Path):
    from transformers import LlamaForCausalLM

    model = load_minimind(src)
    if model.config.use_moe:
        raise ConvertError(f"{src}: a mixture-of-experts checkpoint cannot be held by LlamaForCausalLM "
                           "(Llama has one dense FFN per layer); export a dense model instead")
    llama = LlamaForCausalLM(llama_config(model.config))
    # Same parameter names and the same half-rotation RoPE: the state dict carries over as is.
    missing, unexpected = llama.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise ConvertError(f"weight names do not line up with Llama: missing {missing}, unexpected {unexpected}")
    llama.tie_weights()
    dst.mkdir(parents=True, exist_ok=True)
    llama.save_pretrained(dst)
    copy_tokenizer(src, dst)
    return dst


def merge_lora(base: Path, adapter: Path, dst: Path):
    from peft import PeftModel

    if not (adapter / "adapter_config.json").exists():
        raise ConvertError(f"{adapter}: not a peft adapter folder (no adapter_config.json)")
    merged = PeftModel.from_pretrained(load_minimind(base), adapter).merge_and_unload()
    dst.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(dst)
    copy_tokenizer(base, dst)
    return dst


def interleaved_to_half_rows(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Reorder q/k projection rows so that RoPE on halves equals MiniMind2's RoPE on interleaved pairs.

    MiniMind2 rotates pairs (2i, 2i+1) of each head; we rotate pairs (i, i + D/2) with the same frequency i.
    Putting row 2i at i and row 2i+1 at i + D/2 (within each head) makes the two identical.
    """
    out_features, in_features = weight.shape
    w = weight.view(out_features // head_dim, head_dim // 2, 2, in_features)
    return w.transpose(1, 2).reshape(out_features, in_features)


MINIMIND2_KEYS = [  # MiniMind2 name pattern -> our name
    (r"tok_embeddings\.weight", "model.embed_tokens.weight"),
    (r"norm\.weight", "model.norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"layers\.(\d+)\.attention\.wq\.weight", r"model.layers.\1.self_attn.q_proj.weight"),
    (r"layers\.(\d+)\.attention\.wk\.weight", r"model.layers.\1.self_attn.k_proj.weight"),
    (r"layers\.(\d+)\.attention\.wv\.weight", r"model.layers.\1.self_attn.v_proj.weight"),
    (r"layers\.(\d+)\.attention\.wo\.weight", r"model.layers.\1.self_attn.o_proj.weight"),
    (r"layers\.(\d+)\.attention_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"layers\.(\d+)\.ffn_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"layers\.(\d+)\.feed_forward\.gate\.weight", r"model.layers.\1.mlp.gate.weight"),
    (r"layers\.(\d+)\.feed_forward\.experts\.(\d+)\.w(\d)\.weight", r"model.layers.\1.mlp.experts.\2.w\3"),
    (r"layers\.(\d+)\.feed_forward\.shared_experts\.w(\d)\.weight", r"model.layers.\1.mlp.shared_experts.0.w\2"),
    (r"layers\.(\d+)\.feed_forward\.w(\d)\.weight", r"model.layers.\1.mlp.w\2"),
]
SWIGLU_NAMES = {"1": "gate_proj", "2": "down_proj", "3": "up_proj"}  # MiniMind2: w2(silu(w1 x) * w3 x)


def rename_minimind2_key(key: str) -> str:
    key = key.removeprefix("module.").removeprefix("_orig_mod.")  # DDP / torch.compile prefixes
    for pattern, target in MINIMIND2_KEYS:
        if re.fullmatch(pattern, key):
            name = re.sub(pattern, target, key)
            w = re.search(r"\.w(\d)$", name)
            return f"{name[:w.start()]}.{SWIGLU_NAMES[w.group(1)]}.weight" if w else name
    raise ConvertError(f"unknown MiniMind2 key {key!r}")


def import_minimind2(pth: Path, dst: Path, dim=None, n_layers=None, n_heads=8, n_kv_heads=None, use_moe=None,
                     n_routed_experts=None, num_experts_per_tok=2, rope_theta=1e6, max_seq_len=32768):
    state = torch.load(pth, map_location="cpu", weights_only=True)  # no pickle code execution
    if not isinstance(state, dict) or "tok_embeddings.weight" not in {k.removeprefix("module.") for k in state}:
        raise ConvertError(f"{pth}: not a MiniMind2 state dict (no tok_embeddings.weight)")
    state = {rename_minimind2_key(k): v.float() for k, v in state.items()}
    vocab, found_dim = state["model.embed_tokens.weight"].shape
    found_layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"model\.layers\.(\d+)\.", k)))
    dim, n_layers = dim or found_dim, n_layers or found_layers
    if (dim, n_layers) != (found_dim, found_layers):
        raise ConvertError(f"{pth}: holds dim {found_dim} / {found_layers} layers, not dim {dim} / {n_layers}")
    head_dim = dim // n_heads
    found_moe = any(".mlp.experts." in k for k in state)
    use_moe = found_moe if use_moe is None else use_moe
    if use_moe != found_moe:
        raise ConvertError(f"{pth}: {'is' if found_moe else 'is not'} a mixture-of-experts checkpoint; drop --use_moe")
    experts = 1 + max((int(m.group(1)) for k in state if (m := re.search(r"\.experts\.(\d+)\.", k))), default=0)
    config = MiniMindConfig(
        vocab_size=vocab, hidden_size=dim, num_hidden_layers=n_layers, num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads or state["model.layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        intermediate_size=state["model.layers.0.mlp." + ("experts.0." if use_moe else "") + "gate_proj.weight"].shape[0],
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, max_position_embeddings=max_seq_len,
        use_moe=use_moe, n_routed_experts=n_routed_experts or experts, num_experts_per_tok=num_experts_per_tok,
        n_shared_experts=int(any(".shared_experts." in k for k in state)),
    )
    for name in list(state):
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            state[name] = interleaved_to_half_rows(state[name], head_dim)
    if "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
        raise ConvertError(f"{pth}: output.weight differs from tok_embeddings.weight; MiniMind ties them")
    state.pop("lm_head.weight", None)
    model = MiniMindForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ConvertError(f"{pth}: missing {missing[:5]}, unexpected {unexpected[:5]} for {config.to_diff_dict()}")
    model.tie_weights()
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    copy_tokenizer(pth.parent, dst)
    return dst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("export-llama", help="write a dense MiniMind folder as a LlamaForCausalLM folder")
    p.add_argument("src", type=Path, help="MiniMind HF folder (e.g. out/full_sft_512)")
    p.add_argument("dst", type=Path, help="output folder")
    p = sub.add_parser("merge-lora", help="merge a peft LoRA adapter into its base model")
    p.add_argument("base", type=Path, help="base MiniMind folder the adapter was trained on")
    p.add_argument("adapter", type=Path, help="adapter folder (e.g. out/lora/lora_identity_512)")
    p.add_argument("dst", type=Path, help="output folder for the merged full model")
    p = sub.add_parser("import-minimind2", help="convert a MiniMind2 .pth state dict to a MiniMind HF folder")
    p.add_argument("pth", type=Path, help="MiniMind2 checkpoint, e.g. full_sft_512.pth")
    p.add_argument("dst", type=Path, help="output folder")
    p.add_argument("--dim", type=int, help="model width (default: read from the checkpoint)")
    p.add_argument("--n_layers", type=int, help="number of blocks (default: read from the checkpoint)")
    p.add_argument("--n_heads", type=int, default=8, help="query heads (not recoverable from shapes; default 8)")
    p.add_argument("--n_kv_heads", type=int, help="key/value heads (default: from the wk shape)")
    p.add_argument("--use_moe", action="store_true", default=None, help="expect a mixture-of-experts checkpoint")
    p.add_argument("--num_experts_per_tok", type=int, default=2, help="experts per token for MoE (default 2)")
    p.add_argument("--rope_theta", type=float, default=1e6, help="RoPE base of the checkpoint (default 1e6)")
    p.add_argument("--max_seq_len", type=int, default=32768, help="max_position_embeddings to record")
    args = parser.parse_args(argv)
    try:
        if args.command == "export-llama":
            out = export_llama(args.src, args.dst)
        elif args.command == "merge-lora":
            out = merge_lora(args.base, args.adapter, args.dst)
        else:
            out = import_minimind2(args.pth, args.dst, args.dim, args.n_layers, args.n_heads, args.n_kv_heads,
                                   args.use_moe, None, args.num_experts_per_tok, args.rope_theta, args.max_seq_len)
    except (ConvertError, FileNotFoundError, OSError) as e:
        sys.exit(f"convert_model: error: {e}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
