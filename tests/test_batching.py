"""Continuous batching (inference/batching.py): rows that join and leave a running batch decode exactly as they would
alone (checked against transformers' generate), a cancelled row frees its slot without disturbing the others,
per-row settings hold, and the per-row sampling maths matches the exact distribution."""
import threading
import time

import pytest
import torch

from transformers import AutoTokenizer

from conftest import tiny_config
from model import TOKENIZER_DIR, MiniMindForCausalLM
from inference.batching import Batcher, BatchedStream, Sequence, sample_rows

VOCAB = 300


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(vocab_size=VOCAB, initializer_range=0.3)).eval()  # varied greedy output
    model.batch_sizes = []  # (rows, positions) of every forward, to see that rows really shared a batch
    model.register_forward_pre_hook(lambda m, args, kwargs: m.batch_sizes.append(tuple(kwargs["input_ids"].shape)),
                                    with_kwargs=True)
    return model


def prompt(n, seed):
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def alone(model, ids, max_new_tokens, **kwargs):
    """Greedy continuation of one unpadded prompt by transformers' generate (no end token)."""
    out = model.generate(input_ids=torch.tensor([ids]), do_sample=False, max_new_tokens=max_new_tokens,
                         pad_token_id=0, eos_token_id=None, **kwargs)
    return out[0, len(ids):].tolist()


def wait_for(condition, timeout=20):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def collect(sequence, out, key):
    out[key] = list(sequence)


def test_rows_joining_and_leaving_decode_as_they_would_alone(model):
    # prompt lengths chosen so that a later row is longer than the batch's filled length (the cache shifts) and
    # budgets so that rows leave at different steps (the cache drops rows and trims its unused columns)
    plan = [(3, 40), (20, 6), (7, 25), (31, 12), (5, 30), (12, 3)]
    prompts = [prompt(n, seed) for seed, (n, _) in enumerate(plan)]
    batcher = Batcher(model, eos_token_ids=[], pad_token_id=0)
    model.batch_sizes.clear()
    outputs, threads, sequences = {}, [], []

    def start(i):
        sequences.append(batcher.submit(prompts[i], max_new_tokens=plan[i][1]))
        threads.append(threading.Thread(target=collect, args=(sequences[-1], outputs, i)))
        threads[-1].start()

    try:
        start(0)
        wait_for(lambda: len(sequences[0].tokens) >= 2)  # row 0 is decoding: the others join a running batch
        start(1)
        start(2)
        wait_for(lambda: len(sequences[2].tokens) >= 3)
        for i in (3, 4, 5):
            start(i)
        for t in threads:
            t.join(timeout=60)
    finally:
        batcher.stop()
    for i, (ids, (_, budget)) in enumerate(zip(prompts, plan)):
        assert outputs[i] == alone(model, ids, budget), f"row {i}"
        assert sequences[i].tokens == outputs[i] and not sequences[i].ended
    decode_rows = [b for b, t in model.batch_sizes if t == 1]
    assert max(decode_rows) >= 4  # they were decoded together
    assert batcher.active == 0


def test_cancelled_row_frees_its_slot_and_others_stay_correct(model):
    prompts = [prompt(n, 10 + n) for n in (4, 9, 6)]
    batcher = Batcher(model, eos_token_ids=[], pad_token_id=0)
    outputs = {}
    try:
        sequences = [batcher.submit(ids, max_new_tokens=40) for ids in prompts]
        threads = [threading.Thread(target=collect, args=(s, outputs, i)) for i, s in enumerate(sequences)]
        for t in threads:
            t.start()
        wait_for(lambda: len(sequences[1].tokens) >= 5)
        sequences[1].cancel()
        assert sequences[1].wait(timeout=10)
        assert batcher.active <= 2  # its row left the batch at once
        for t in threads:
            t.join(timeout=60)
    finally:
        batcher.stop()
    cut = outputs[1]
    assert 5 <= len(cut) < 40 and cut == alone(model, prompts[1], len(cut))  # what it got was right
    for i in (0, 2):
        assert outputs[i] == alone(model, prompts[i], 40)
    assert batcher.active == 0


def test_per_row_settings_hold_in_a_shared_batch(model):
    ids = prompt(6, 99)
    batcher = Batcher(model, eos_token_ids=[], pad_token_id=0)
    try:
        greedy_short = batcher.submit(ids, max_new_tokens=5)
        greedy = batcher.submit(ids, max_new_tokens=20)
        hot = [batcher.submit(ids, max_new_tokens=20, temperature=1.5, top_p=1.0, seed=s) for s in (1, 2)]
        nucleus = batcher.submit(ids, max_new_tokens=20, temperature=1.0, top_p=0.3, seed=1)
        penalized = batcher.submit(ids, max_new_tokens=20, repetition_penalty=1.5)
        rows = [greedy_short, greedy, *hot, nucleus, penalized]
        results = [list(s) for s in rows]
        # the same seeded request alone gives the same tokens: its randomness is its own, not the batch's
        again = list(batcher.submit(ids, max_new_tokens=20, temperature=1.5, top_p=1.0, seed=1))
    finally:
        batcher.stop()
    want = alone(model, ids, 20)
    assert [len(r) for r in results] == [5, 20, 20, 20, 20, 20]
    assert results[0] == want[:5] and results[1] == want
    assert results[5] == alone(model, ids, 20, repetition_penalty=1.5) != want  # transformers' penalty rule
    assert results[2] != want and results[2] != results[3] and again == results[2]
    assert results[2] == hot[0].tokens
    # every token of the top_p 0.3 row lies in its step's nucleus, recomputed by one full forward over the reply
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + results[4]])).logits[0, len(ids) - 1:-1]
    for step, token in enumerate(results[4]):
        probs = logits[step].double().softmax(-1)
        ranked = probs.argsort(descending=True).tolist()
        nucleus, mass = set(), 0.0
        for k in ranked:
            nucleus.add(k)
            mass += probs[k].item()
            if mass >= 0.3:
                break
        assert token in nucleus, f"step {step}"
    assert results[4] != want  # and it was sampled, not greedy
    stopper = Batcher(model, eos_token_ids=[want[3]], pad_token_id=0)  # an end token: the row stops at it
    try:
        ended = stopper.submit(ids, max_new_tokens=20)
        tokens = list(ended)
    finally:
        stopper.stop()
    assert tokens == want[:want.index(want[3]) + 1] and ended.ended


@pytest.mark.parametrize("top_k_first", [64, 2])  # 2: the nucleus outgrows the top-k, the rows are sorted
def test_sample_rows_follows_each_rows_distribution(top_k_first):
    torch.manual_seed(0)
    logits = torch.randn(3, 12) * 2
    temperature, top_p = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([1.0, 0.7, 0.9])
    M = 4000
    u = (torch.arange(M) + 0.5) / M  # an even grid over (0, 1): frequencies equal the probabilities to 1/M
    for r in range(3):
        picks = sample_rows(logits[r:r + 1].expand(M, -1), temperature[r].expand(M), top_p[r].expand(M), u, top_k_first)
        freq = torch.bincount(picks, minlength=12).double() / M
        # the exact distribution, computed independently: softmax(l / T), keep the top tokens until top_p is reached
        probs = (logits[r].double() / temperature[r]).softmax(-1)
        order = probs.argsort(descending=True)
        keep, mass = [], 0.0
        for k in order.tolist():
            keep.append(k)
            mass += probs[k].item()
            if mass >= top_p[r].item():
                break
        exact = torch.zeros(12, dtype=torch.double)
        exact[keep] = probs[keep] / probs[keep].sum()
        assert (freq - exact).abs().max() < 2 / M, f"row {r}"


class ScriptedRows:
    """A stand-in for a Batcher whose every sequence yields `tokens` in chunks of `size` and then ends."""

    def __init__(self, tokens, size):
        self.tokens, self.size = tokens, size

    def submit(self, prompt_ids, **settings):
        tokens, size = self.tokens, self.size

        class Scripted(Sequence):
            def chunks(self):
                for i in range(0, len(tokens), size):
                    self.tokens += tokens[i:i + size]
                    yield tokens[i:i + size]

        sequence = Scripted(prompt_ids, settings["max_new_tokens"], 0.0, 1.0, 1.0, None, [])
        sequence.done.set()
        return sequence


@pytest.mark.parametrize("size", [1, 3])
def test_stream_pieces_join_to_the_decoded_text(size):
    """Characters split across byte-level tokens are held back until whole; the pieces join to the whole decode,
    also when the reply is cut inside a character and when a stop string ends it."""
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    ids = tokenizer.encode("你好，世界！🙂 ok\n第二行", add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode(ids[:k]) for k in range(1, len(ids)))  # some character spans tokens
    for cut in (len(ids), len(ids) - 1):
        whole = tokenizer.decode(ids[:cut])
        stream = BatchedStream(ScriptedRows(ids[:cut], size), tokenizer, "hi", max_new_tokens=100)
        pieces = list(stream)
        assert "".join(pieces) == whole == stream.text and stream.completion_tokens == cut
        assert all("\ufffd" not in p for p in pieces[:-1]) and len(pieces) > 6 // size
    stream = BatchedStream(ScriptedRows(ids, size), tokenizer, "hi", max_new_tokens=100, stop="世界")
    assert stream.run() == "你好，" and stream.finish_reason == "stop"
