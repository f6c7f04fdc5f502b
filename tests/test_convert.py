"""Conversions in and out (inference/convert.py, scripts/convert_model.py).

import-minimind2 / import-minimind3: a `.pth` state dict becomes our HF folder with the same logits as a
reference forward pass written here from each model's description, independently of model/. MiniMind2's
RoPE rotates *interleaved* pairs (2i, 2i+1) and its names are `wq`, `w1`, ...; MiniMind-3 rotates halves,
normalises each head's q and k, and routes MoE tokens to the top-1 of its experts.
export-qwen3 / export-gguf: the exported model computes what ours does, in transformers and in llama.cpp.
"""
import json
import math
import subprocess
import sys

import gguf
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import ROOT, save_tiny
from inference.convert import (ConvertError, export_gguf, export_llama, export_qwen3, import_minimind2,
                               import_minimind3)

DIM, LAYERS, HEADS, KV_HEADS, HIDDEN, VOCAB, EPS, THETA = 64, 2, 4, 2, 192, 300, 1e-5, 1e6
EXPERTS, TOP_K = 4, 2


def minimind2_state(use_moe: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.08

    head = DIM // HEADS
    state = {"tok_embeddings.weight": w(VOCAB, DIM), "norm.weight": 1 + w(DIM)}
    state["output.weight"] = state["tok_embeddings.weight"]  # tied, as MiniMind2 saves them
    for i in range(LAYERS):
        p = f"layers.{i}."
        state.update({
            p + "attention.wq.weight": w(HEADS * head, DIM), p + "attention.wk.weight": w(KV_HEADS * head, DIM),
            p + "attention.wv.weight": w(KV_HEADS * head, DIM), p + "attention.wo.weight": w(DIM, HEADS * head),
            p + "attention_norm.weight": 1 + w(DIM), p + "ffn_norm.weight": 1 + w(DIM),
        })
        ffns = [f"feed_forward.experts.{e}." for e in range(EXPERTS)] + ["feed_forward.shared_experts."] if use_moe else ["feed_forward."]
        for f in ffns:
            state.update({p + f + "w1.weight": w(HIDDEN, DIM), p + f + "w2.weight": w(DIM, HIDDEN), p + f + "w3.weight": w(HIDDEN, DIM)})
        if use_moe:
            state[p + "feed_forward.gate.weight"] = w(EXPERTS, DIM)
    return state


def rms(x, weight):
    return weight * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + EPS)).type_as(x)


def rope_interleaved(x, T):  # x (B, T, heads, D): pairs (2i, 2i+1) rotated as one complex number
    D = x.shape[-1]
    freqs = 1.0 / THETA ** (torch.arange(0, D, 2).float() / D)
    cis = torch.polar(torch.ones(T, D // 2), torch.outer(torch.arange(T).float(), freqs))  # (T, D/2)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], D // 2, 2))
    return torch.view_as_real(xc * cis[None, :, None, :]).flatten(3).type_as(x)


def swiglu(s, p, x):
    return F.linear(F.silu(F.linear(x, s[p + "w1.weight"])) * F.linear(x, s[p + "w3.weight"]), s[p + "w2.weight"])


def reference_logits(s, ids, use_moe):
    B, T = ids.shape
    D = DIM // HEADS
    x = s["tok_embeddings.weight"][ids]
    causal = torch.full((T, T), float("-inf")).triu(1)
    for i in range(LAYERS):
        p = f"layers.{i}."
        h = rms(x, s[p + "attention_norm.weight"])
        q = rope_interleaved(F.linear(h, s[p + "attention.wq.weight"]).view(B, T, HEADS, D), T)
        k = rope_interleaved(F.linear(h, s[p + "attention.wk.weight"]).view(B, T, KV_HEADS, D), T)
        v = F.linear(h, s[p + "attention.wv.weight"]).view(B, T, KV_HEADS, D)
        k, v = (t.repeat_interleave(HEADS // KV_HEADS, dim=2) for t in (k, v))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1) / math.sqrt(D) + causal).softmax(-1)
        x = x + F.linear((att @ v).transpose(1, 2).reshape(B, T, -1), s[p + "attention.wo.weight"])
        h = rms(x, s[p + "ffn_norm.weight"])
        if not use_moe:
            x = x + swiglu(s, p + "feed_forward.", h)
            continue
        scores = F.linear(h, s[p + "feed_forward.gate.weight"]).softmax(-1)  # (B, T, E)
        top_w, top_e = scores.topk(TOP_K, dim=-1)
        top_w = top_w / top_w.sum(-1, keepdim=True)
        out = swiglu(s, p + "feed_forward.shared_experts.", h)
        for e in range(EXPERTS):  # dense reference: every expert on every token, weighted by its routing share
            share = (top_w * (top_e == e)).sum(-1, keepdim=True)
            out = out + share * swiglu(s, p + f"feed_forward.experts.{e}.", h)
        x = x + out
    return F.linear(rms(x, s["norm.weight"]), s["output.weight"])


@pytest.mark.parametrize("use_moe", [False, True], ids=["dense", "moe"])
def test_import_minimind2_gives_reference_logits(tmp_path, use_moe):
    state = minimind2_state(use_moe)
    pth = tmp_path / "full_sft_64.pth"
    torch.save({"module." + k if use_moe else k: v for k, v in state.items()}, pth)  # DDP prefix must be tolerated
    dst = tmp_path / "imported"
    import_minimind2(pth, dst, n_heads=HEADS)

    model = AutoModelForCausalLM.from_pretrained(dst).eval()
    assert model.config.use_moe == use_moe
    assert (model.config.hidden_size, model.config.num_hidden_layers, model.config.num_key_value_heads) == (DIM, LAYERS, KV_HEADS)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids).logits
        ref = reference_logits(state, ids, use_moe)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_import_without_permutation_would_disagree(tmp_path):
    """Guards the test itself: the interleaved reference really differs from rotating halves."""
    state = minimind2_state(False)
    ids = torch.arange(20)[None] % VOCAB
    pth = tmp_path / "m.pth"
    torch.save(state, pth)
    import_minimind2(pth, tmp_path / "ok", n_heads=HEADS)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ok").eval()
    sd = model.state_dict()
    for i in range(LAYERS):  # overwrite the permuted rows with MiniMind2's raw rows
        sd[f"model.layers.{i}.self_attn.q_proj.weight"].copy_(state[f"layers.{i}.attention.wq.weight"])
        sd[f"model.layers.{i}.self_attn.k_proj.weight"].copy_(state[f"layers.{i}.attention.wk.weight"])
    with torch.no_grad():
        assert (model(ids).logits - reference_logits(state, ids, False)).abs().max() > 1e-3


def test_import_rejects_bad_files(tmp_path):
    pth = tmp_path / "not_minimind.pth"
    torch.save({"foo.weight": torch.zeros(2)}, pth)
    for convert, name in ((import_minimind2, "MiniMind2"), (import_minimind3, "MiniMind-3")):
        with pytest.raises(ConvertError, match=f"{pth}: not a {name} state dict"):
            convert(pth, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        import_minimind2(tmp_path / "missing.pth", tmp_path / "out")
    pth2 = tmp_path / "minimind2.pth"
    torch.save(minimind2_state(False), pth2)
    with pytest.raises(ConvertError, match="not a MiniMind-3 state dict"):
        import_minimind3(pth2, tmp_path / "out")


# ---------------------------------------------------------------------------------------------------------------
# MiniMind-3 in

M3_HIDDEN, M3_EPS, M3_EXPERTS = 256, 1e-6, 4  # MiniMind-3: intermediate ceil(dim·π/64)·64, RMSNorm eps 1e-6


def minimind3_state(use_moe: bool, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.08

    head = DIM // HEADS
    state = {"model.embed_tokens.weight": w(VOCAB, DIM), "model.norm.weight": 1 + w(DIM)}
    state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        state.update({
            p + "self_attn.q_proj.weight": w(HEADS * head, DIM), p + "self_attn.k_proj.weight": w(KV_HEADS * head, DIM),
            p + "self_attn.v_proj.weight": w(KV_HEADS * head, DIM), p + "self_attn.o_proj.weight": w(DIM, HEADS * head),
            p + "self_attn.q_norm.weight": 1 + 3 * w(head), p + "self_attn.k_norm.weight": 1 + 3 * w(head),
            p + "input_layernorm.weight": 1 + w(DIM), p + "post_attention_layernorm.weight": 1 + w(DIM),
        })
        for f in [f"mlp.experts.{e}." for e in range(M3_EXPERTS)] if use_moe else ["mlp."]:
            state.update({p + f + "gate_proj.weight": w(M3_HIDDEN, DIM), p + f + "up_proj.weight": w(M3_HIDDEN, DIM),
                          p + f + "down_proj.weight": w(DIM, M3_HIDDEN)})
        if use_moe:
            state[p + "mlp.gate.weight"] = 4 * w(M3_EXPERTS, DIM)  # decisive routing
    return state


def rope_halves(x, T):  # x (B, T, heads, D): element i and i + D/2 rotated together as one complex number
    D = x.shape[-1]
    freqs = 1.0 / THETA ** (torch.arange(0, D, 2).float() / D)
    cis = torch.polar(torch.ones(T, D // 2), torch.outer(torch.arange(T).float(), freqs))[None, :, None, :]
    xc = torch.complex(x[..., :D // 2].float(), x[..., D // 2:].float()) * cis
    return torch.cat([xc.real, xc.imag], dim=-1)


def rms_eps(x, weight, eps):
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def minimind3_logits(s, ids, use_moe):
    B, T = ids.shape
    D = DIM // HEADS
    x = s["model.embed_tokens.weight"][ids]
    causal = torch.full((T, T), float("-inf")).triu(1)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        h = rms_eps(x, s[p + "input_layernorm.weight"], M3_EPS)
        q = F.linear(h, s[p + "self_attn.q_proj.weight"]).view(B, T, HEADS, D)
        k = F.linear(h, s[p + "self_attn.k_proj.weight"]).view(B, T, KV_HEADS, D)
        q = rope_halves(rms_eps(q, s[p + "self_attn.q_norm.weight"], M3_EPS), T)  # norm per head, then RoPE
        k = rope_halves(rms_eps(k, s[p + "self_attn.k_norm.weight"], M3_EPS), T)
        v = F.linear(h, s[p + "self_attn.v_proj.weight"]).view(B, T, KV_HEADS, D)
        k, v = (t.repeat_interleave(HEADS // KV_HEADS, dim=2) for t in (k, v))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1) / math.sqrt(D) + causal).softmax(-1)
        x = x + F.linear((att @ v).transpose(1, 2).reshape(B, T, -1), s[p + "self_attn.o_proj.weight"])
        h = rms_eps(x, s[p + "post_attention_layernorm.weight"], M3_EPS)

        def swiglu(f):
            return F.linear(F.silu(F.linear(h, s[f + "gate_proj.weight"])) * F.linear(h, s[f + "up_proj.weight"]),
                            s[f + "down_proj.weight"])

        if not use_moe:
            x = x + swiglu(p + "mlp.")
            continue
        chosen = F.linear(h, s[p + "mlp.gate.weight"]).argmax(-1, keepdim=True)  # top-1; its normalised weight is 1
        x = x + sum((chosen == e) * swiglu(p + f"mlp.experts.{e}.") for e in range(M3_EXPERTS))
    return F.linear(rms_eps(x, s["model.norm.weight"], M3_EPS), s["lm_head.weight"])


@pytest.mark.parametrize("use_moe", [False, True], ids=["dense", "moe"])
def test_import_minimind3_gives_reference_logits(tmp_path, use_moe):
    state = minimind3_state(use_moe)
    pth = tmp_path / "full_sft_64.pth"
    # MiniMind-3 saves half-precision weights; the MoE file also carries torch.compile's prefix
    torch.save({("_orig_mod." + k if use_moe else k): v.half() for k, v in state.items()}, pth)
    import_minimind3(pth, tmp_path / "imported")

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "imported").eval()
    c = model.config
    assert (c.qk_norm, c.use_moe, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == \
        (True, use_moe, HEADS, KV_HEADS, M3_HIDDEN)
    if use_moe:
        assert (c.n_routed_experts, c.num_experts_per_tok, c.n_shared_experts, c.seq_aux) == (M3_EXPERTS, 1, 0, False)
    ids = torch.randint(0, VOCAB, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model(ids).logits - minimind3_logits({k: v.half().float() for k, v in state.items()}, ids, use_moe)).abs().max()
    print(f"import-minimind3 {'moe' if use_moe else 'dense'}: max |logit diff| vs reference {diff:.2e}")
    assert diff <= 1e-4


# ---------------------------------------------------------------------------------------------------------------
# Qwen3 out


def qk_norm_model(folder, tok, seed=0, **overrides):
    """A random tiny qk-norm model whose norm weights are not all ones (so that dropping them would show)."""
    save_tiny(folder, tok, seed=seed, qk_norm=True, initializer_range=0.1, **overrides)
    model = AutoModelForCausalLM.from_pretrained(folder)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    model.save_pretrained(folder)
    return model.eval()


MINIMIND3_MOE = dict(use_moe=True, num_experts_per_tok=1, n_shared_experts=0, seq_aux=False)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_export_qwen3_is_logit_exact_and_generates_the_same(tmp_path, tok, moe):
    ours = qk_norm_model(tmp_path / "mm", tok, **(MINIMIND3_MOE if moe else {}))
    export_qwen3(tmp_path / "mm", tmp_path / "qwen3")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "qwen3", dtype=torch.float32).eval()
    assert type(theirs).__name__ == ("Qwen3MoeForCausalLM" if moe else "Qwen3ForCausalLM")
    assert (tmp_path / "qwen3" / "tokenizer.json").exists()
    ids = torch.randint(0, 6400, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (theirs(ids).logits - ours(ids).logits).abs().max()
    print(f"export-qwen3 {'moe' if moe else 'dense'}: max |logit diff| {diff:.2e}")
    assert diff <= 1e-4
    prompt = ids[:1, :8]
    for use_cache in (True, False):
        ref = ours.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=use_cache)
        assert torch.equal(theirs.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=use_cache), ref)


def test_exports_refuse_what_they_cannot_hold(tmp_path, tok):
    save_tiny(tmp_path / "plain", tok)
    save_tiny(tmp_path / "qk", tok, qk_norm=True)
    save_tiny(tmp_path / "qk_shared_moe", tok, qk_norm=True, use_moe=True)  # MiniMind2-MoE style: a shared expert
    with pytest.raises(ConvertError, match="export-qwen3"):
        export_llama(tmp_path / "qk", tmp_path / "out")
    with pytest.raises(ConvertError, match="export-llama"):
        export_qwen3(tmp_path / "plain", tmp_path / "out")
    with pytest.raises(ConvertError, match="shared expert"):
        export_qwen3(tmp_path / "qk_shared_moe", tmp_path / "out")
    with pytest.raises(ConvertError, match="shared expert"):
        export_gguf(tmp_path / "qk_shared_moe", tmp_path / "out.gguf")
    # the command prints the same message and exits non-zero
    run = subprocess.run([sys.executable, ROOT / "scripts" / "convert_model.py", "export-llama", tmp_path / "qk",
                          tmp_path / "out"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1 and "export-qwen3" in run.stderr and str(tmp_path / "qk") in run.stderr


# ---------------------------------------------------------------------------------------------------------------
# GGUF out


def read_gguf(path):
    reader = gguf.GGUFReader(path)

    def field(key):
        f = reader.fields[key]
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            return [f.parts[i].tobytes().decode() if f.types[-1] == gguf.GGUFValueType.STRING else f.parts[i][0]
                    for i in f.data]
        value = f.parts[f.data[0]]
        return value.tobytes().decode() if f.types[0] == gguf.GGUFValueType.STRING else value[0]

    return field, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("qk_norm", [False, True], ids=["llama", "qwen3"])
def test_gguf_holds_the_weights_tokenizer_and_template(tmp_path, tok, qk_norm):
    model = qk_norm_model(tmp_path / "mm", tok) if qk_norm else None
    if not qk_norm:
        save_tiny(tmp_path / "mm", tok)
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "mm").eval()
    export_gguf(tmp_path / "mm", tmp_path / "m.gguf", "f32")
    field, tensors = read_gguf(tmp_path / "m.gguf")
    arch = "qwen3" if qk_norm else "llama"
    assert field("general.architecture") == arch
    assert field(f"{arch}.block_count") == 2 and field(f"{arch}.attention.head_count_kv") == 2
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    tokens = field("tokenizer.ggml.tokens")
    assert tokens == tok.convert_ids_to_tokens(list(range(len(tok))))
    types = field("tokenizer.ggml.token_type")
    added = tok.added_tokens_decoder  # control (3) for special added tokens, user-defined (4) for the tags, normal (1)
    assert list(types) == [3 if i in added and added[i].special else 4 if i in added else 1 for i in range(len(tok))]
    assert list(types[:3]) == [3, 3, 3] and set(types[3:11]) == {4} and set(types[11:]) == {1}
    assert len(field("tokenizer.ggml.merges")) == len(json.loads(tok.backend_tokenizer.to_str())["model"]["merges"])
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id"), field("tokenizer.ggml.padding_token_id")) == \
        (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    # the embedded template renders conversations exactly as ours does
    import jinja2

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "你好"}, {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "2+2?"}]
    template = jinja2.Environment().from_string(field("tokenizer.chat_template"))
    assert template.render(messages=messages, add_generation_prompt=True) == \
        tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    sd = model.state_dict()
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert torch.equal(torch.from_numpy(tensors["token_embd.weight"].data.copy()), sd["model.embed_tokens.weight"])
    q = torch.from_numpy(tensors["blk.1.attn_q.weight"].data.copy())
    ours_q = sd["model.layers.1.self_attn.q_proj.weight"]
    if qk_norm:  # qwen3 in llama.cpp rotates halves, as we do
        assert torch.equal(q, ours_q)
        assert torch.equal(torch.from_numpy(tensors["blk.1.attn_k_norm.weight"].data.copy()),
                           sd["model.layers.1.self_attn.k_norm.weight"])
    else:  # llama in llama.cpp rotates pairs (2i, 2i+1): row 2i is our row i, row 2i+1 our row i + D/2 (per head)
        D = 16
        for head in range(4):
            assert torch.equal(q[head * D:(head + 1) * D:2], ours_q[head * D:head * D + D // 2])
            assert torch.equal(q[head * D + 1:(head + 1) * D:2], ours_q[head * D + D // 2:(head + 1) * D])
    modelfile = (tmp_path / "m.Modelfile").read_text()
    assert "FROM ./m.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>" in modelfile


def test_gguf_sizes_shrink_with_outtype(tmp_path, tok):
    save_tiny(tmp_path / "mm", tok, qk_norm=True)
    sizes = {t: export_gguf(tmp_path / "mm", tmp_path / f"m_{t}.gguf", t).stat().st_size for t in ("f32", "f16", "q8_0")}
    print("GGUF sizes (tiny qk-norm model):", sizes)
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]
    with pytest.raises(ConvertError, match="outtype"):
        export_gguf(tmp_path / "mm", tmp_path / "x.gguf", "q4_k")


# --- in llama.cpp itself (llama-cpp-python: built from source by .ci/run; skipped where absent)

def llama_cpp_model(path):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (CI installs it: .ci/run builds it from source)")
    f32 = llama_cpp.GGML_TYPE_F32  # llama.cpp keeps its KV cache in f16 unless told otherwise
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, n_batch=256, logits_all=True, verbose=False,
                           type_k=f32, type_v=f32)


def llama_cpp_greedy(llm, prompt, n):
    llm.reset()
    llm.eval(prompt)
    out = []
    for _ in range(n):
        out.append(int(llm.scores[llm.n_tokens - 1].argmax()))
        llm.eval([out[-1]])
    return out


def llama_cpp_logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return torch.from_numpy(llm.scores[:len(ids)].copy())


@pytest.mark.parametrize("kind", ["llama", "qwen3", "qwen3moe"])
def test_gguf_runs_in_llama_cpp_like_ours(tmp_path, tok, kind):
    """f32: llama.cpp's greedy continuation equals ours token for token; f16 / q8_0: the argmax at each position of
    our continuation (teacher-forced) agrees at most positions. Prompts are tokenized by llama.cpp from the GGUF's
    tokenizer and must give our ids."""
    if kind == "llama":
        save_tiny(tmp_path / "mm", tok, initializer_range=0.1)
        ours = AutoModelForCausalLM.from_pretrained(tmp_path / "mm").eval()
    else:
        ours = qk_norm_model(tmp_path / "mm", tok, **(MINIMIND3_MOE if kind == "qwen3moe" else {}))
    text = tok.apply_chat_template([{"role": "user", "content": "Hello, 你好! What's 12+30?"}], tokenize=False,
                                   add_generation_prompt=True)
    prompt = tok(text)["input_ids"]
    n_new = 24
    with torch.no_grad():
        ref = ours.generate(torch.tensor([prompt]), max_new_tokens=n_new, do_sample=False, eos_token_id=None)[0].tolist()
        ref_logits = ours(torch.tensor([ref])).logits[0]
    report = []
    for outtype in ("f32", "f16", "q8_0"):
        path = export_gguf(tmp_path / "mm", tmp_path / f"m_{outtype}.gguf", outtype)
        llm = llama_cpp_model(path)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompt
        cpp_logits = llama_cpp_logits(llm, ref)
        agree = int((cpp_logits[len(prompt) - 1:-1].argmax(-1) == torch.tensor(ref[len(prompt):])).sum())
        diff = (cpp_logits - ref_logits).abs().max().item()
        report.append(f"{outtype}: {agree}/{n_new} positions agree, max |logit diff| {diff:.2e}, "
                      f"{path.stat().st_size / 1e6:.2f} MB")
        if outtype == "f32":
            assert llama_cpp_greedy(llm, prompt, n_new) == ref[len(prompt):]
            assert diff < 1e-4
        else:
            assert agree >= 0.75 * n_new, report[-1]
        llm.close()
    print(f"llama.cpp {kind}: " + "; ".join(report))


# ---------------------------------------------------------------------------------------------------------------
# A qk-norm model through the tools: training from scratch, LoRA, generation, export

def test_qk_norm_model_trains_tunes_generates_and_exports(tmp_path, demo, cache, capsys):
    import eval_model
    from inference.convert import merge_lora
    from trainer import LORA, PRETRAIN, run

    tiny = ["--config", "tiny", "--device", "cpu", "--dtype", "float32", "--quiet", "--num_workers", "0",
            "--out_dir", tmp_path, "--cache_dir", cache, "--save_interval", "0", "--max_steps", "2", "--batch_size", "4"]
    shape = ["--qk_norm", "--intermediate_size", "128", "--rms_norm_eps", "1e-6", "--rope_theta", "1e4"]
    run(PRETRAIN, [*tiny, *shape, "--data_path", demo["pretrain"]])
    base = tmp_path / "pretrain_64"
    c = json.loads((base / "config.json").read_text())
    assert (c["qk_norm"], c["intermediate_size"], c["rms_norm_eps"], c["rope_parameters"]["rope_theta"]) == (True, 128, 1e-6, 1e4)

    with pytest.raises(SystemExit):  # a qk-norm checkpoint with flags that say otherwise is refused, by name
        run(LORA, [*tiny, "--data_path", demo["lora_identity"], "--from_weight", base])
    assert "qk-norm" in capsys.readouterr().err
    run(LORA, [*tiny, "--qk_norm", "--data_path", demo["lora_identity"], "--from_weight", base, "--lora_name", "id"])
    adapter = tmp_path / "lora" / "id_64"
    assert (adapter / "adapter_model.safetensors").exists()

    assert eval_model.main(["--model_path", str(base), "--lora_name", str(adapter), "--prompt", "hi",
                            "--max_new_tokens", "4", "--temperature", "0", "--device", "cpu"]) in (0, None)
    assert "🤖:" in capsys.readouterr().out
    merge_lora(base, adapter, tmp_path / "merged")
    export_qwen3(tmp_path / "merged", tmp_path / "qwen3")
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path / "qwen3")).__name__ == "Qwen3ForCausalLM"
    export_gguf(tmp_path / "merged", tmp_path / "merged.gguf", "q8_0")
    assert (tmp_path / "merged.Modelfile").exists()
