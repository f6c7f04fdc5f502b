"""Moving MiniMind weights between layouts and engines.

    MiniMind2 .pth  --import_minimind2-->  MiniMind HF folder  --export_llama-->  LlamaForCausalLM folder
    MiniMind-3 .pth --import_minimind3-->  (model/)            --export_qwen3-->  Qwen3(Moe)ForCausalLM folder
    peft adapter    --merge_lora-------->                      --export_gguf--->  .gguf + ollama Modelfile

Our parameter names are Llama's / Qwen3's, so the HF exports are mostly a change of config class; GGUF needs
llama.cpp's tensor names, its RoPE layout for the `llama` architecture, and the tokenizer as metadata.
Every function raises ConvertError with a message naming the offending file for input it cannot convert.
"""
import json
import re
import shutil
from pathlib import Path

import torch

from model import TOKENIZER_DIR, MiniMindConfig, MiniMindForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class ConvertError(Exception):
    pass


def tokenizer_dir(src_dir: Path) -> Path:
    """The folder holding src_dir's tokenizer: src_dir itself, else the project's tokenizer in model/."""
    return src_dir if (src_dir / "tokenizer.json").exists() else TOKENIZER_DIR


def copy_tokenizer(src_dir: Path, dst_dir: Path):
    """Copy the tokenizer files from src_dir (or the project's tokenizer) so dst_dir is self-contained."""
    src = tokenizer_dir(src_dir)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst_dir / name)


def load_minimind(path: Path) -> MiniMindForCausalLM:
    if not (path / "config.json").exists():
        raise ConvertError(f"{path}: not a model folder (no config.json)")
    return MiniMindForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def save_hf(model, src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    copy_tokenizer(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------------------------
# MiniMind -> transformers' own classes (vLLM and SGLang load these folders)


def common_hf_config(config: MiniMindConfig) -> dict:
    return dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim, hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings, rms_norm_eps=config.rms_norm_eps,
        rope_parameters=dict(config.rope_parameters), tie_word_embeddings=config.tie_word_embeddings,
        attention_bias=False, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def llama_config(config: MiniMindConfig):
    from transformers import LlamaConfig

    return LlamaConfig(**common_hf_config(config), mlp_bias=False)


def load_into(target, state: dict, where: Path):
    """Load `state` into the transformers model `target`; every name must line up (the LM head is tied)."""
    missing, unexpected = target.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ConvertError(f"{where}: weight names do not line up with {type(target).__name__}: "
                           f"missing {missing[:5]}, unexpected {unexpected[:5]}")
    target.tie_weights()
    return target


def export_llama(src: Path, dst: Path) -> Path:
    from transformers import LlamaForCausalLM

    model = load_minimind(src)
    if model.config.qk_norm:
        raise ConvertError(f"{src}: a qk-norm checkpoint (RMSNorm on q and k) cannot be held by LlamaForCausalLM; "
                           "use `export-qwen3` (Qwen3 has the same per-head norms)")
    if model.config.use_moe:
        raise ConvertError(f"{src}: a mixture-of-experts checkpoint cannot be held by LlamaForCausalLM "
                           "(Llama has one dense FFN per layer); export a dense model instead")
    # Same parameter names and the same half-rotation RoPE: the state dict carries over as is.
    llama = load_into(LlamaForCausalLM(llama_config(model.config)), model.state_dict(), src)
    return save_hf(llama, src, dst)


def qwen3_model(model: MiniMindForCausalLM, src: Path):
    """A transformers Qwen3ForCausalLM (dense) or Qwen3MoeForCausalLM holding exactly `model`'s function."""
    c = model.config
    if not c.qk_norm:
        raise ConvertError(f"{src}: Qwen3 normalises q and k in every layer, this checkpoint does not (qk_norm is "
                           "off); use `export-llama` for it")
    state = model.state_dict()
    if not c.use_moe:
        from transformers import Qwen3Config, Qwen3ForCausalLM

        config = Qwen3Config(**common_hf_config(c), use_sliding_window=False)
        return load_into(Qwen3ForCausalLM(config), state, src)

    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    if c.n_shared_experts:
        raise ConvertError(f"{src}: has {c.n_shared_experts} shared expert(s) per layer, which Qwen3-MoE cannot "
                           "hold (MiniMind2-MoE style); only MiniMind-3-style MoE (no shared expert) exports as Qwen3")
    config = Qwen3MoeConfig(**common_hf_config(c), num_experts=c.n_routed_experts,
                            num_experts_per_tok=c.num_experts_per_tok, moe_intermediate_size=c.intermediate_size,
                            norm_topk_prob=c.norm_topk_prob, decoder_sparse_step=1, mlp_only_layers=[],
                            router_aux_loss_coef=c.aux_loss_alpha, use_sliding_window=False)
    # transformers keeps each layer's experts as two stacked tensors: gate_up_proj (E, 2I, C), down_proj (E, C, I)
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}.mlp."
        experts = range(c.n_routed_experts)
        gate_up = [torch.cat([state.pop(f"{p}experts.{e}.gate_proj.weight"), state.pop(f"{p}experts.{e}.up_proj.weight")])
                   for e in experts]
        state[p + "experts.gate_up_proj"] = torch.stack(gate_up)
        state[p + "experts.down_proj"] = torch.stack([state.pop(f"{p}experts.{e}.down_proj.weight") for e in experts])
    return load_into(Qwen3MoeForCausalLM(config), state, src)


def export_qwen3(src: Path, dst: Path) -> Path:
    return save_hf(qwen3_model(load_minimind(src), src), src, dst)


def merge_lora(base: Path, adapter: Path, dst: Path) -> Path:
    from peft import PeftModel

    if not (adapter / "adapter_config.json").exists():
        raise ConvertError(f"{adapter}: not a peft adapter folder (no adapter_config.json)")
    merged = PeftModel.from_pretrained(load_minimind(base), adapter).merge_and_unload()
    return save_hf(merged, base, dst)


# ---------------------------------------------------------------------------------------------------------------
# MiniMind2 / MiniMind-3 .pth state dicts -> MiniMind


def interleaved_to_half_rows(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Reorder q/k projection rows so that RoPE on halves equals RoPE on interleaved pairs.

    MiniMind2 (and llama.cpp's `llama` architecture) rotate pairs (2i, 2i+1) of each head; we rotate pairs
    (i, i + D/2) with the same frequency i. Putting row 2i at i and row 2i+1 at i + D/2 (within each head)
    makes the two identical.
    """
    out_features, in_features = weight.shape
    w = weight.view(out_features // head_dim, head_dim // 2, 2, in_features)
    return w.transpose(1, 2).reshape(out_features, in_features)


def half_to_interleaved_rows(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The inverse of interleaved_to_half_rows."""
    out_features, in_features = weight.shape
    w = weight.view(out_features // head_dim, 2, head_dim // 2, in_features)
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


def strip_wrappers(key: str) -> str:
    return key.removeprefix("module.").removeprefix("_orig_mod.")  # DDP / torch.compile prefixes


def rename_minimind2_key(key: str) -> str:
    key = strip_wrappers(key)
    for pattern, target in MINIMIND2_KEYS:
        if re.fullmatch(pattern, key):
            name = re.sub(pattern, target, key)
            w = re.search(r"\.w(\d)$", name)
            return f"{name[:w.start()]}.{SWIGLU_NAMES[w.group(1)]}.weight" if w else name
    raise ConvertError(f"unknown MiniMind2 key {key!r}")


def load_pth(pth: Path, marker: str, what: str) -> dict:
    state = torch.load(pth, map_location="cpu", weights_only=True)  # no pickle code execution
    if not isinstance(state, dict) or marker not in {strip_wrappers(k) for k in state}:
        raise ConvertError(f"{pth}: not a {what} state dict (no {marker})")
    return state


def layer_count(state: dict) -> int:
    return 1 + max(int(m.group(1)) for k in state if (m := re.match(r"model\.layers\.(\d+)\.", k)))


def expert_count(state: dict) -> int:
    return 1 + max((int(m.group(1)) for k in state if (m := re.search(r"\.experts\.(\d+)\.", k))), default=0)


def build_imported(state: dict, config: MiniMindConfig, pth: Path, dst: Path) -> Path:
    """Load a renamed state dict into a fresh MiniMind of `config` (all names must match) and save it."""
    if "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]):
        raise ConvertError(f"{pth}: the output weight differs from the token embedding; MiniMind ties them")
    state.pop("lm_head.weight", None)
    model = MiniMindForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise ConvertError(f"{pth}: missing {missing[:5]}, unexpected {unexpected[:5]} for {config.to_diff_dict()}")
    model.tie_weights()
    return save_hf(model, pth.parent, dst)


def import_minimind2(pth: Path, dst: Path, dim=None, n_layers=None, n_heads=8, n_kv_heads=None, use_moe=None,
                     n_routed_experts=None, num_experts_per_tok=2, rope_theta=1e6, max_seq_len=32768) -> Path:
    state = load_pth(pth, "tok_embeddings.weight", "MiniMind2")
    state = {rename_minimind2_key(k): v.float() for k, v in state.items()}
    vocab, found_dim = state["model.embed_tokens.weight"].shape
    found_layers = layer_count(state)
    dim, n_layers = dim or found_dim, n_layers or found_layers
    if (dim, n_layers) != (found_dim, found_layers):
        raise ConvertError(f"{pth}: holds dim {found_dim} / {found_layers} layers, not dim {dim} / {n_layers}")
    head_dim = dim // n_heads
    found_moe = any(".mlp.experts." in k for k in state)
    use_moe = found_moe if use_moe is None else use_moe
    if use_moe != found_moe:
        raise ConvertError(f"{pth}: {'is' if found_moe else 'is not'} a mixture-of-experts checkpoint; drop --use_moe")
    config = MiniMindConfig(
        vocab_size=vocab, hidden_size=dim, num_hidden_layers=n_layers, num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads or state["model.layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        intermediate_size=state["model.layers.0.mlp." + ("experts.0." if use_moe else "") + "gate_proj.weight"].shape[0],
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, max_position_embeddings=max_seq_len,
        use_moe=use_moe, n_routed_experts=n_routed_experts or expert_count(state),
        num_experts_per_tok=num_experts_per_tok, n_shared_experts=int(any(".shared_experts." in k for k in state)),
    )
    for name in list(state):
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            state[name] = interleaved_to_half_rows(state[name], head_dim)
    return build_imported(state, config, pth, dst)


def import_minimind3(pth: Path, dst: Path, num_experts_per_tok=1, rope_theta=1e6, rms_norm_eps=1e-6,
                     max_seq_len=32768) -> Path:
    """MiniMind-3 (jingyaogong/minimind, 2026) names its weights as we do, normalises q and k per head, rotates
    halves as we do, and routes MoE tokens to top-1 of 4 experts with no shared expert. Everything but
    the hyper-parameters below can be read from the tensor shapes."""
    state = {strip_wrappers(k): v.float() for k, v in
             load_pth(pth, "model.embed_tokens.weight", "MiniMind-3").items()}
    if "model.layers.0.self_attn.q_norm.weight" not in state:
        raise ConvertError(f"{pth}: no self_attn.q_norm weights, so not a MiniMind-3 checkpoint "
                           "(a MiniMind2 one? use import-minimind2)")
    vocab, dim = state["model.embed_tokens.weight"].shape
    head_dim = state["model.layers.0.self_attn.q_norm.weight"].shape[0]
    n_heads = state["model.layers.0.self_attn.q_proj.weight"].shape[0] // head_dim
    if n_heads * head_dim != dim:
        raise ConvertError(f"{pth}: {n_heads} heads of size {head_dim} do not add up to the width {dim}; "
                           "MiniMind needs head_dim = hidden_size / num_attention_heads")
    use_moe = any(".mlp.experts." in k for k in state)
    config = MiniMindConfig(
        vocab_size=vocab, hidden_size=dim, num_hidden_layers=layer_count(state), num_attention_heads=n_heads,
        num_key_value_heads=state["model.layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
        intermediate_size=state["model.layers.0.mlp." + ("experts.0." if use_moe else "") + "gate_proj.weight"].shape[0],
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, rms_norm_eps=rms_norm_eps,
        max_position_embeddings=max_seq_len, qk_norm=True,
        use_moe=use_moe, n_routed_experts=expert_count(state) if use_moe else 4, num_experts_per_tok=num_experts_per_tok,
        n_shared_experts=0, aux_loss_alpha=5e-4, seq_aux=False,  # MiniMind-3's router loss: whole batch, 5e-4
    )
    return build_imported(state, config, pth, dst)


# ---------------------------------------------------------------------------------------------------------------
# GGUF (llama.cpp, ollama)

GGUF_OUTTYPES = ("f32", "f16", "q8_0")


def gguf_chat_template(template: str) -> str:
    """Our template minus the `{% generation %}` markers: they only tell transformers which tokens are the
    assistant's (for training masks) and are not Jinja that llama.cpp or other engines understand."""
    return re.sub(r"\{%-?\s*(end)?generation\s*-?%\}", "", template)


def add_gguf_tokenizer(writer, tok_dir: Path, vocab_size: int):
    """Our byte-level BPE as llama.cpp's GPT-2-style tokenizer: tokens by id, their types, the merges, the
    special ids and the chat template. Ids the tokenizer does not use (vocab padding) become unused tokens."""
    import gguf

    spec = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    settings = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    if spec["model"]["type"] != "BPE" or spec.get("pre_tokenizer", {}).get("type") != "ByteLevel":
        raise ConvertError(f"{tok_dir / 'tokenizer.json'}: export-gguf handles byte-level BPE tokenizers only")
    ids_used = [*spec["model"]["vocab"].values(), *(t["id"] for t in spec["added_tokens"])]
    if max(ids_used) >= vocab_size:
        raise ConvertError(f"{tok_dir / 'tokenizer.json'}: token id {max(ids_used)} does not fit the model's "
                           f"vocab_size {vocab_size}; export with the tokenizer the model was trained with")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for token, i in spec["model"]["vocab"].items():
        tokens[i], types[i] = token, gguf.TokenType.NORMAL
    for added in spec["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # HF ByteLevel(use_regex=True) splits text with GPT-2's regex
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    ids = {t["content"]: t["id"] for t in spec["added_tokens"]}
    for role in ("bos", "eos", "pad", "unk"):
        if settings.get(f"{role}_token") in ids:
            getattr(writer, f"add_{role}_token_id")(ids[settings[f"{role}_token"]])
    writer.add_add_bos_token(bool(settings.get("add_bos_token", False)))
    writer.add_add_eos_token(bool(settings.get("add_eos_token", False)))
    template = settings.get("chat_template")
    if template is None and (tok_dir / "chat_template.jinja").exists():
        template = (tok_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if template:
        writer.add_chat_template(gguf_chat_template(template))


def gguf_tensor(data: torch.Tensor, outtype: str):
    """(array, raw dtype) to write: norms and the MoE router stay f32; matrices in `outtype`, where q8_0
    needs rows in blocks of 32 (else they fall back to f16)."""
    import gguf

    array = data.float().numpy()
    if outtype == "f32" or array.ndim == 1:
        return array, gguf.GGMLQuantizationType.F32
    if outtype == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
        return gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return array.astype("float16"), gguf.GGMLQuantizationType.F16


def gguf_architecture(config: MiniMindConfig, src: Path) -> str:
    if config.rope_parameters.get("rope_type", "default") != "default":
        raise ConvertError(f"{src}: export-gguf writes plain RoPE only, this model uses "
                           f"{config.rope_parameters['rope_type']!r} scaling")
    if not config.use_moe:
        return "qwen3" if config.qk_norm else "llama"
    if not config.qk_norm or config.n_shared_experts or not config.norm_topk_prob:
        raise ConvertError(f"{src}: llama.cpp's MoE export here is Qwen3-MoE: it needs qk_norm, no shared expert and "
                           "normalised top-k weights (the MiniMind-3 MoE style, configs/minimind3_moe.yaml)")
    return "qwen3moe"


def export_gguf(src: Path, dst: Path, outtype: str = "f16", progress=None) -> Path:
    """Write `src` as one GGUF file and an ollama Modelfile beside it (`<dst stem>.Modelfile`)."""
    try:
        import gguf
    except ImportError:
        raise ConvertError("export-gguf needs the `gguf` package: pip install gguf") from None
    if outtype not in GGUF_OUTTYPES:
        raise ConvertError(f"--outtype must be one of {', '.join(GGUF_OUTTYPES)}, got {outtype!r}")
    model = load_minimind(src)
    c = model.config
    arch = gguf_architecture(c, src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(dst, arch)
    writer.add_name(src.resolve().name)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[outtype])
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    if c.use_moe:
        writer.add_expert_count(c.n_routed_experts)
        writer.add_expert_used_count(c.num_experts_per_tok)
        writer.add_expert_feed_forward_length(c.intermediate_size)
    add_gguf_tokenizer(writer, tokenizer_dir(src), c.vocab_size)

    arch_id = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen3": gguf.MODEL_ARCH.QWEN3, "qwen3moe": gguf.MODEL_ARCH.QWEN3MOE}[arch]
    names = gguf.get_tensor_name_map(arch_id, c.num_hidden_layers)  # HF tensor names -> GGUF ones
    state = model.state_dict()
    if c.tie_word_embeddings:
        del state["lm_head.weight"]  # llama.cpp reuses token_embd when there is no output.weight
    if c.use_moe:  # llama.cpp keeps each layer's experts stacked: (E, out, in)
        for i in range(c.num_hidden_layers):
            for proj, kind in (("gate_proj", "FFN_GATE_EXP"), ("up_proj", "FFN_UP_EXP"), ("down_proj", "FFN_DOWN_EXP")):
                keys = [f"model.layers.{i}.mlp.experts.{e}.{proj}.weight" for e in range(c.n_routed_experts)]
                state[gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, kind)].format(bid=i) + ".weight"] = \
                    torch.stack([state.pop(k) for k in keys])
    for name, tensor in (progress(state.items()) if progress else state.items()):
        if name.startswith("blk."):
            gguf_name = name
        else:
            gguf_name = names.get_name(name, try_suffixes=(".weight",))
            if gguf_name is None:
                raise ConvertError(f"{src}: no GGUF name for tensor {name!r} in architecture {arch}")
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            tensor = half_to_interleaved_rows(tensor, c.head_dim)  # llama.cpp's `llama` RoPE rotates pairs
        array, dtype = gguf_tensor(tensor, "f32" if ".mlp.gate." in name else outtype)
        writer.add_tensor(gguf_name, array, raw_dtype=dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    write_modelfile(dst)
    return dst


def write_modelfile(gguf_path: Path) -> Path:
    """An ollama Modelfile beside the GGUF: `ollama create NAME -f X.Modelfile`. Ollama's template language is
    Go's, so the ChatML template is restated in it; generation stops at <|im_end|>."""
    path = gguf_path.with_suffix(".Modelfile")
    path.write_text(
        f"FROM ./{gguf_path.name}\n"
        'TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n'
        '{{ .Content }}<|im_end|>\n'
        '{{ end }}<|im_start|>assistant\n"""\n'
        'PARAMETER stop "<|im_end|>"\n'
        'PARAMETER stop "<|im_start|>"\n'
        "PARAMETER temperature 0.7\n"
        "PARAMETER top_p 0.85\n",
        encoding="utf-8",
    )
    return path
