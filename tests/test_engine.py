"""The batched generation engine (inference/engine.py) against transformers' generate() and the sampling maths."""
import pytest
import torch

from inference.engine import StaticCache, generate_batch, next_tokens
from model import MiniMindConfig, MiniMindForCausalLM


def tiny_model(**kwargs):
    torch.manual_seed(0)
    # a larger init spread than training's so the random model's greedy continuations vary instead of repeating
    config = MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            vocab_size=300, initializer_range=0.3, **kwargs)
    return MiniMindForCausalLM(config).eval()


def left_padded(lengths, vocab=300, seed=1):
    g = torch.Generator().manual_seed(seed)
    P = max(lengths)
    ids, mask = torch.zeros(len(lengths), P, dtype=torch.long), torch.zeros(len(lengths), P, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, P - n:] = torch.randint(3, vocab, (n,), generator=g)
        mask[b, P - n:] = 1
    return ids, mask


@pytest.mark.parametrize("kind", ["dense", "moe", "qk_norm"])
def test_greedy_matches_generate(kind):
    model = tiny_model(**{"dense": {}, "moe": {"use_moe": True}, "qk_norm": {"qk_norm": True}}[kind])
    ids, mask = left_padded([5, 9, 3])
    G, T = 2, 16
    ours = generate_batch(model, ids, mask, num_samples=G, max_new_tokens=T, pad_token_id=0)
    theirs = model.generate(input_ids=ids.repeat_interleave(G, 0), attention_mask=mask.repeat_interleave(G, 0),
                            do_sample=False, max_new_tokens=T, pad_token_id=0, eos_token_id=None)[:, ids.shape[1]:]
    assert torch.equal(ours.tokens, theirs)
    assert len(set(theirs[0].tolist())) > 3  # the continuation is not one repeated token
    assert ours.lengths.tolist() == [T] * 6 and not ours.finished.any()
    # padding changes nothing: each prompt alone, unpadded, continues the same way
    for b, n in enumerate([5, 9, 3] if kind == "dense" else []):
        alone = model.generate(input_ids=ids[b:b + 1, -n:], do_sample=False, max_new_tokens=T, pad_token_id=0,
                               eos_token_id=None)[0, n:]
        assert torch.equal(ours.tokens[b * G], alone)


def test_rows_stop_at_their_end_token():
    model = tiny_model()
    lengths = [6, 4, 8, 5]
    ids, mask = left_padded(lengths)
    free = generate_batch(model, ids, mask, max_new_tokens=12, pad_token_id=0).tokens
    eos = [int(free[0, 2]), int(free[1, 5])]  # rows 0 and 1 say these early: make them end tokens
    hits = torch.isin(free, torch.tensor(eos))
    first = [row.nonzero()[0].item() if row.any() else None for row in hits]
    assert sum(f is None for f in first) >= 1  # some row runs to the limit
    theirs = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12, pad_token_id=0,
                            eos_token_id=eos)[:, ids.shape[1]:]
    # check_every=1: once rows 0 and 1 have ended (half the batch) they leave it; the others must not notice
    ours = generate_batch(model, ids, mask, max_new_tokens=12, eos_token_ids=eos, pad_token_id=0, check_every=1)
    assert torch.equal(ours.tokens, theirs)
    for b, f in enumerate(first):
        assert ours.finished[b].item() == (f is not None)
        assert ours.lengths[b].item() == (f + 1 if f is not None else 12)
        assert (ours.tokens[b, ours.lengths[b]:] == 0).all()  # padding after the end
        assert ours.mask[b].sum().item() == ours.lengths[b].item()


def test_batch_stops_once_every_row_ended():
    model = tiny_model()
    ids, mask = left_padded([5])
    step0 = int(generate_batch(model, ids, mask, max_new_tokens=1).tokens[0, 0])
    out = generate_batch(model, ids, mask, num_samples=3, max_new_tokens=50, eos_token_ids=[step0], check_every=4)
    assert out.tokens.shape == (3, 4) and out.lengths.tolist() == [1, 1, 1] and out.finished.all()


def test_sampling_is_seeded_and_samples_differ():
    model = tiny_model()
    ids, mask = left_padded([5, 7])

    def sample(seed, **kw):
        g = torch.Generator().manual_seed(seed)
        return generate_batch(model, ids, mask, num_samples=4, max_new_tokens=10, temperature=1.0, generator=g,
                              **kw).tokens

    a = sample(0)
    assert torch.equal(a, sample(0))
    assert not torch.equal(a, sample(1))
    assert len({tuple(r) for r in a[:4].tolist()}) > 1  # the G samples of one prompt are not copies
    greedy = generate_batch(model, ids, mask, num_samples=4, max_new_tokens=10).tokens
    assert torch.equal(sample(0, top_p=1e-6), greedy)
    assert torch.equal(sample(0, top_k=1), greedy)


def test_next_tokens_follow_the_truncated_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    draws = 20000
    g = torch.Generator().manual_seed(0)
    batch = logits.expand(draws, -1)
    # temperature 2: frequencies match softmax(logits / 2)
    counts = torch.bincount(next_tokens(batch, temperature=2.0, generator=g), minlength=5).float() / draws
    assert torch.allclose(counts, torch.softmax(logits[0] / 2, -1), atol=0.015)
    # top_p 0.8: the smallest top set reaching 0.8, renormalised
    probs = torch.softmax(logits[0], -1)
    keep = int((probs.cumsum(0) < 0.8).sum()) + 1
    expected = torch.zeros(5)
    expected[:keep] = probs[:keep] / probs[:keep].sum()
    counts = torch.bincount(next_tokens(batch, temperature=1.0, top_p=0.8, generator=g), minlength=5).float() / draws
    assert torch.allclose(counts, expected, atol=0.015) and (counts[keep:] == 0).all()
    # top_k 2: the two best, renormalised
    counts = torch.bincount(next_tokens(batch, temperature=1.0, top_k=2, generator=g), minlength=5).float() / draws
    assert torch.allclose(counts[:2], probs[:2] / probs[:2].sum(), atol=0.015) and (counts[2:] == 0).all()


def test_cache_expansion_copies_each_prompt_to_its_samples():
    cache = StaticCache(num_layers=1, batch=2, max_len=3)
    k = torch.arange(2 * 1 * 3 * 2, dtype=torch.float).view(2, 1, 3, 2)
    cache.update(k, -k, 0)
    big = cache.expanded(3, max_len=5)
    assert big.get_seq_length() == 3 and big.keys[0].shape == (6, 1, 5, 2)
    for row in range(6):
        assert torch.equal(big.keys[0][row, :, :3], k[row // 3]) and torch.equal(big.values[0][row, :, :3], -k[row // 3])
    with pytest.raises(ValueError, match="KV cache full"):
        cache.update(k[:, :, :1], k[:, :, :1], 0)
