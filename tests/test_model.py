import json
import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaForCausalLM

from conftest import ROOT, tiny_config
from configs import PRESETS, load_config, model_kwargs
from model import MiniMindConfig, MiniMindForCausalLM
from configs import count_parameters
from inference.convert import ConvertError, export_llama


def expected_parameters(c: MiniMindConfig) -> int:
    """Hand count: tied embedding, per block 4 attention projections (+ 2 head-size norms with qk_norm) + SwiGLU
    (per expert) + 2 norms, final norm."""
    kv = c.num_key_value_heads * c.head_dim
    attention = 2 * c.hidden_size * c.hidden_size + 2 * c.hidden_size * kv + (2 * c.head_dim if c.qk_norm else 0)
    ffn = 3 * c.hidden_size * c.intermediate_size
    if c.use_moe:
        ffn = ffn * (c.n_routed_experts + c.n_shared_experts) + c.hidden_size * c.n_routed_experts
    return c.vocab_size * c.hidden_size + c.num_hidden_layers * (attention + ffn + 2 * c.hidden_size) + c.hidden_size


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_parameter_counts(preset):
    config = MiniMindConfig(**model_kwargs(load_config(preset)))
    assert count_parameters(config) == expected_parameters(config)


def test_preset_sizes_match_minimind2():
    sizes = {p: count_parameters(MiniMindConfig(**model_kwargs(load_config(p)))) / 1e6 for p in PRESETS}
    assert 25.5 < sizes["small"] < 26.5 and 103 < sizes["base"] < 105 and 140 < sizes["moe"] < 150
    small = MiniMindConfig(**model_kwargs(load_config("small")))
    assert (small.hidden_size, small.num_hidden_layers, small.intermediate_size) == (512, 8, 1408)
    assert small.rope_parameters["rope_theta"] == 1e6 and small.tie_word_embeddings
    m3 = MiniMindConfig(**model_kwargs(load_config("minimind3")))  # MiniMind-3's published shape
    assert (m3.hidden_size, m3.num_hidden_layers, m3.num_attention_heads, m3.num_key_value_heads) == (768, 8, 8, 4)
    assert (m3.intermediate_size, m3.qk_norm, m3.rms_norm_eps, m3.vocab_size) == (math.ceil(768 * math.pi / 64) * 64, True, 1e-6, 6400)


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden_size=100, num_attention_heads=8), "not divisible by num_attention_heads"),
    (dict(num_attention_heads=8, num_key_value_heads=3), "does not divide"),
    (dict(num_hidden_layers=0), "num_hidden_layers must be a positive integer"),
    (dict(use_moe=True, n_routed_experts=2, num_experts_per_tok=3), "exceeds n_routed_experts"),
    (dict(dropout=1.5), "dropout"),
])
def test_bad_config_raises_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MiniMindConfig(**kwargs)


def test_minimind_aliases():
    c = MiniMindConfig(dim=768, n_layers=16)
    assert (c.hidden_size, c.num_hidden_layers, c.dim, c.n_layers, c.intermediate_size) == (768, 16, 768, 16, 2048)


def test_hf_round_trip_safetensors_and_auto_classes(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "minimind"
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MiniMindConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MiniMindForCausalLM)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(0, 6400, (2, 12))
    assert torch.equal(loaded(ids).logits, tiny_model(ids).logits)


def test_forward_equals_token_by_token_decoding_with_cache(tiny_model):
    ids = torch.randint(0, 6400, (2, 16))
    full = tiny_model(ids, use_cache=False).logits
    out = tiny_model(ids[:, :5], use_cache=True)
    steps, cache = [out.logits], out.cache
    for t in range(5, 16):
        out = tiny_model(ids[:, t:t + 1], cache=cache, use_cache=True)
        steps.append(out.logits)
        cache = out.cache
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_logits_at_loss_positions_give_the_full_forward_loss_and_gradients(tiny_model):
    """logits_positions: the head runs only where there are labels; the loss, a per-row log-prob sum (DPO's) and
    every gradient equal those of the full (B, T, vocab) logits masked the usual way."""
    from trainer import losses

    torch.manual_seed(0)
    ids = torch.randint(0, 6400, (3, 10))
    labels = torch.randint(0, 6400, (3, 10)).masked_fill(torch.rand(3, 10) < 0.6, -100)
    keep = (labels.flatten() != -100).nonzero().squeeze(1)

    def loss_and_grads(selected: bool):
        tiny_model.zero_grad()
        if selected:
            logits = tiny_model(ids, logits_positions=keep).logits
            assert logits.shape == (len(keep), 6400)
            ce = losses.token_cross_entropy(logits, labels.flatten()[keep])
            rows = losses.sequence_logprobs(logits, labels.flatten()[keep], keep // 10, 3)
        else:
            logits = tiny_model(ids).logits
            ce = losses.token_cross_entropy(logits, labels)
            rows = losses.sequence_logprobs(logits, labels)
        ce.sum().backward()
        return ce.sum().item(), rows.detach(), {n: p.grad.clone() for n, p in tiny_model.named_parameters()}

    full, full_rows, full_grads = loss_and_grads(False)
    part, part_rows, part_grads = loss_and_grads(True)
    assert 0 < len(keep) < 30 and part == pytest.approx(full, rel=1e-6)
    assert torch.allclose(part_rows, full_rows, rtol=1e-6, atol=1e-5)
    for name, grad in full_grads.items():
        assert torch.allclose(part_grads[name], grad, rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_fused_head_and_loss_equal_the_logits_path(tiny_model, autocast):
    """return_hidden + losses.linear_cross_entropy (the training stages' fused head and loss, in chunks that do not
    divide N) give the per-token losses and every gradient of the logits path, with an uneven upstream gradient
    (token weights) and ignored labels. Under bf16 autocast the losses and the hidden-state gradients are the same
    bf16 matmuls; the head's gradient is summed over chunks in fp32, so it agrees to bf16's precision."""
    from trainer import losses

    torch.manual_seed(0)
    ids = torch.randint(0, 6400, (3, 10))
    labels = torch.randint(0, 6400, (3, 10)).masked_fill(torch.rand(3, 10) < 0.3, -100)
    keep = torch.arange(30)  # every position, the ignored ones included
    weights = torch.rand(30) * 3

    def loss_and_grads(fused: bool):
        tiny_model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = tiny_model(ids, logits_positions=keep, return_hidden=fused)
            if fused:
                assert out.logits is None and out.hidden_states.shape == (30, tiny_model.config.hidden_size)
                ce = losses.linear_cross_entropy(out.hidden_states, tiny_model.lm_head.weight, labels.flatten(),
                                                 chunk_rows=7)
            else:
                ce = losses.token_cross_entropy(out.logits, labels.flatten())
        (ce * weights).sum().backward()
        return ce.detach(), {n: p.grad.clone() for n, p in tiny_model.named_parameters()}

    plain, plain_grads = loss_and_grads(False)
    fused, fused_grads = loss_and_grads(True)
    assert (fused[labels.flatten() == -100] == 0).all() and (fused[labels.flatten() != -100] > 0).all()
    assert torch.allclose(fused, plain, rtol=1e-5, atol=1e-5)
    tolerance = dict(rtol=2e-2, atol=1e-4) if autocast else dict(rtol=1e-4, atol=1e-6)
    for name, grad in plain_grads.items():
        assert grad.abs().sum() > 0 and torch.allclose(fused_grads[name], grad, **tolerance), name


def test_fused_loss_with_a_frozen_head_and_no_labelled_rows():
    """A LoRA run's head is frozen (no gradient is computed for it); a micro-batch may hold no labelled position."""
    from trainer import losses

    hidden = torch.randn(5, 8, requires_grad=True)
    head = torch.randn(20, 8)  # requires_grad False
    ce = losses.linear_cross_entropy(hidden, head, torch.tensor([3, -100, 7, 19, 0]), chunk_rows=2)
    ce.sum().backward()
    expected = torch.nn.functional.cross_entropy(hidden.detach() @ head.T, torch.tensor([3, -100, 7, 19, 0]),
                                                 reduction="none")
    assert torch.allclose(ce.detach(), expected, atol=1e-5) and head.grad is None and hidden.grad.abs().sum() > 0
    empty = losses.linear_cross_entropy(torch.randn(0, 8, requires_grad=True), head, torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,)
    empty.sum().backward()


def test_generate_greedy_same_with_and_without_cache(tiny_model):
    ids = torch.randint(3, 6400, (1, 6))
    with_cache = tiny_model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=True)
    without = tiny_model.generate(ids, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(with_cache, without) and with_cache.shape[1] == 18


def test_generate_sampling_options_are_seeded(tiny_model):
    ids = torch.randint(3, 6400, (1, 6))
    kwargs = dict(max_new_tokens=10, do_sample=True, temperature=0.8, top_p=0.9, repetition_penalty=1.3)
    torch.manual_seed(1)
    a = tiny_model.generate(ids, **kwargs)
    torch.manual_seed(1)
    b = tiny_model.generate(ids, **kwargs)
    assert torch.equal(a, b) and a.shape[1] == 16


def test_left_padded_batch_generation_matches_single(tiny_model):
    short, long = torch.randint(3, 6400, (1, 4)), torch.randint(3, 6400, (1, 7))
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
    out = tiny_model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    alone = tiny_model.generate(short, max_new_tokens=6, do_sample=False)
    assert torch.equal(out[0, 3:], alone[0])


def test_streamer_yields_text(tiny_model):
    from threading import Thread
    from transformers import AutoTokenizer, TextIteratorStreamer

    tok = AutoTokenizer.from_pretrained(ROOT / "model")
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    ids = tok("你好", return_tensors="pt").input_ids
    thread = Thread(target=tiny_model.generate, kwargs=dict(inputs=ids, streamer=streamer, max_new_tokens=8, do_sample=False))
    thread.start()
    text = "".join(streamer)
    thread.join()
    full = tiny_model.generate(ids, max_new_tokens=8, do_sample=False)
    assert text == tok.decode(full[0, ids.shape[1]:])


def _llama_pair(tmp_path, model):
    model.save_pretrained(tmp_path / "mm")
    export_llama(tmp_path / "mm", tmp_path / "llama")
    return LlamaForCausalLM.from_pretrained(tmp_path / "llama", dtype=torch.float32).eval()


@pytest.mark.parametrize("rope", [None, {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                         "original_max_position_embeddings": 32}])
def test_llama_export_is_logit_exact(tmp_path, rope):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(rope_parameters=rope, max_position_embeddings=128)).eval()
    llama = _llama_pair(tmp_path, model)
    ids = torch.randint(0, 6400, (2, 96))  # past the YaRN original length
    assert (llama(ids).logits - model(ids).logits).abs().max() <= 1e-4
    for use_cache in (True, False):
        prompt = ids[:1, :8]
        ours = model.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=use_cache)
        theirs = llama.generate(prompt, max_new_tokens=20, do_sample=False, use_cache=use_cache)
        assert torch.equal(ours, theirs)


def test_llama_export_refuses_moe(tmp_path):
    MiniMindForCausalLM(tiny_config(use_moe=True)).save_pretrained(tmp_path / "moe")
    with pytest.raises(ConvertError, match="mixture-of-experts"):
        export_llama(tmp_path / "moe", tmp_path / "out")


def test_qk_norm_normalises_each_head_of_q_and_k():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(qk_norm=True)).eval()
    names = {n for n, _ in model.named_parameters()}
    assert {"model.layers.0.self_attn.q_norm.weight", "model.layers.1.self_attn.k_norm.weight"} <= names
    assert not any("q_norm" in n for n, _ in MiniMindForCausalLM(tiny_config()).named_parameters())
    attn = model.model.layers[0].self_attn
    x = torch.randn(1, 5, 64) * 30  # a large input: without the norms q·k would scale with it
    seen = {}
    attn.q_norm.register_forward_hook(lambda m, i, o: seen.update(q=o))
    cos, sin = model.model.rotary_emb(torch.arange(5)[None], x.dtype)
    attn(x, cos, sin, None, None)
    assert seen["q"].shape == (1, 5, 4, 16)  # per head, before the heads are moved forward
    torch.testing.assert_close(seen["q"].pow(2).mean(-1), torch.ones(1, 5, 4), atol=1e-3, rtol=0)
    ids = torch.randint(0, 6400, (1, 12))
    with torch.no_grad():
        before = model(ids).logits
        attn.k_norm.weight.mul_(3.0)  # the norm weights take part in the computation
        assert (model(ids).logits - before).abs().max() > 1e-3


def test_moe_batch_aux_loss_matches_minimind3_formula():
    """seq_aux=False for top-1 is MiniMind-3's router loss: E · alpha · Σ_e (share of tokens routed to e) ·
    (mean probability of e), both over every token of the batch."""
    torch.manual_seed(0)
    config = tiny_config(use_moe=True, num_experts_per_tok=1, n_shared_experts=0, seq_aux=False, aux_loss_alpha=5e-4)
    layer = MiniMindForCausalLM(config).model.layers[0].mlp.train()
    x = torch.randn(3, 7, 64)
    _, aux = layer(x)
    probs = torch.softmax(layer.gate(x.reshape(-1, 64)), -1)
    share = torch.nn.functional.one_hot(probs.argmax(-1), 4).float().mean(0)
    torch.testing.assert_close(aux, 4 * 5e-4 * (share * probs.mean(0)).sum())
    layer.seq_aux = True  # per-sequence balance is a different quantity on the same routing
    assert not torch.isclose(layer(x)[1], aux)


def _moe_reference(layer, x):
    """Token-by-token loop: the obvious (slow) definition of top-k routing."""
    out = torch.zeros_like(x.reshape(-1, x.shape[-1]))
    for n, token in enumerate(x.reshape(-1, x.shape[-1])):
        probs = torch.softmax(layer.gate(token), -1)
        w, e = probs.topk(layer.top_k)
        w = w / w.sum()
        for weight, expert in zip(w, e):
            out[n] += weight * layer.experts[int(expert)](token)
        for shared in layer.shared_experts:
            out[n] += shared(token)
    return out.view_as(x)


def test_moe_dispatch_matches_reference_and_aux_loss():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(use_moe=True))
    layer = model.model.layers[0].mlp
    x = torch.randn(2, 9, 64)
    model.eval()
    eval_out, eval_aux = layer(x)
    assert eval_aux is None
    assert torch.allclose(eval_out, _moe_reference(layer, x), atol=1e-5)
    model.train()
    train_out, train_aux = layer(x)
    assert torch.allclose(train_out, eval_out, atol=1e-6)  # dropout is 0: training and inference agree
    assert train_aux.item() > 0
    ids = torch.randint(0, 6400, (2, 10))
    out = model(ids)
    assert out.aux_loss is not None and out.aux_loss.requires_grad
    out.aux_loss.backward()
    assert layer.gate.weight.grad is not None and layer.gate.weight.grad.abs().sum() > 0


def test_moe_aux_loss_is_alpha_for_uniform_routing():
    layer = MiniMindForCausalLM(tiny_config(use_moe=True)).model.layers[0].mlp.train()
    torch.nn.init.zeros_(layer.gate.weight)  # all experts equally likely; top-k then picks by index, so load is skewed
    x = torch.randn(1, 8, 64)
    _, aux = layer(x)
    # probs are uniform (1/E); load = E/k on the k chosen experts, 0 elsewhere → sum = k * (E/k) * 1/E = 1
    assert torch.isclose(aux, torch.tensor(layer.aux_loss_alpha))


@pytest.mark.parametrize("T, training, expected", [(64, True, torch.float32), (300, True, torch.bfloat16),
                                                   (64, False, torch.bfloat16)])
def test_cpu_training_under_bf16_autocast_attends_in_fp32_on_short_rows(tiny_model, monkeypatch, T, training, expected):
    """torch's CPU flash-attention backward is slow in bf16 on short rows (scripts/bench.py --attention), so
    training attends in fp32 there; long rows and inference keep autocast's bf16. Same output up to bf16 rounding."""
    import model.modeling_minimind as modeling

    seen, sdpa = [], modeling.F.scaled_dot_product_attention

    def recording(q, k, v, **kw):
        seen.append((q.dtype, k.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(modeling.F, "scaled_dot_product_attention", recording)
    ids = torch.randint(0, 6400, (2, T))
    tiny_model.train(training)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = tiny_model(ids, use_cache=False).logits
    finally:
        tiny_model.eval()
    q_dtype, k_dtype, v_dtype, autocast_on = seen[0]
    assert len(seen) == tiny_model.config.num_hidden_layers
    if expected == torch.float32:
        assert (q_dtype, k_dtype, v_dtype, autocast_on) == (torch.float32,) * 3 + (False,)
    else:
        assert autocast_on  # autocast casts the inputs to bf16 inside SDPA
    with torch.no_grad():
        reference = tiny_model(ids, use_cache=False).logits
    assert (logits.float() - reference).abs().max() < 0.1
