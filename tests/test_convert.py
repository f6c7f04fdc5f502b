"""import-minimind2: a MiniMind2 `.pth` state dict becomes our HF folder with the same logits.

The reference below is written from MiniMind2's description, independently of model/: RoPE rotates
*interleaved* pairs (2i, 2i+1) of each head as complex numbers, names are MiniMind2's (`wq`, `w1`, ...).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from scripts.convert_model import main as convert_main

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
    convert_main(["import-minimind2", str(pth), str(dst), "--n_heads", str(HEADS)])

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
    convert_main(["import-minimind2", str(pth), str(tmp_path / "ok"), "--n_heads", str(HEADS)])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "ok").eval()
    sd = model.state_dict()
    for i in range(LAYERS):  # overwrite the permuted rows with MiniMind2's raw rows
        sd[f"model.layers.{i}.self_attn.q_proj.weight"].copy_(state[f"layers.{i}.attention.wq.weight"])
        sd[f"model.layers.{i}.self_attn.k_proj.weight"].copy_(state[f"layers.{i}.attention.wk.weight"])
    with torch.no_grad():
        assert (model(ids).logits - reference_logits(state, ids, False)).abs().max() > 1e-3


def test_import_rejects_bad_files(tmp_path, capsys):
    pth = tmp_path / "not_minimind.pth"
    torch.save({"foo.weight": torch.zeros(2)}, pth)
    with pytest.raises(SystemExit) as e:
        convert_main(["import-minimind2", str(pth), str(tmp_path / "out")])
    assert "not a MiniMind2 state dict" in str(e.value.code) and str(pth) in str(e.value.code)
    with pytest.raises(SystemExit) as e:
        convert_main(["import-minimind2", str(tmp_path / "missing.pth"), str(tmp_path / "out")])
    assert "missing.pth" in str(e.value.code)
