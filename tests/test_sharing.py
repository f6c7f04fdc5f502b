"""Shared prefixes (dataset/sharing.py, --share_prefixes): conversations opening with the same loss-free tokens are
packed as the prefix once plus branches; each branch must train exactly as its own conversation would."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import tiny_config
from dataset import PackedBatchCollator, block_causal_mask, build_dataset
from dataset.samples import IGNORE_INDEX
from dataset.sharing import MIN_SHARED, group_entries, loss_free_lead, shared_prefix_groups
from model import MiniMindForCausalLM
from trainer import FULL_SFT, PRETRAIN, losses, run
from trainer.stages import FullSFT

TOOLS = ("You may call these functions: calculate (evaluate an arithmetic expression), get_capital (the capital "
         "city of a country), get_colour (the colour of a thing). Answer with a call, then with the result.")


def conversations(n: int, systems=(TOOLS,)) -> list[dict]:
    """n chats, each with one of `systems` as its system turn, a question and an answer; and two without a system
    turn, which share only the template's few opening tokens."""
    rows = [{"conversations": [{"role": "system", "content": systems[i % len(systems)]},
                               {"role": "user", "content": f"What is {i} plus {i + 3}?"},
                               {"role": "assistant", "content": f"{i} plus {i + 3} is {2 * i + 3}."}]}
            for i in range(n)]
    rows += [{"conversations": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}]},
             {"conversations": [{"role": "user", "content": "Who are you?"},
                                {"role": "assistant", "content": "A small model."}]}]
    return rows


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_groups_share_only_loss_free_prefixes_and_fit_the_row():
    a = list(range(100, 140))  # 40 loss-free tokens in common
    ids = [a + [1, 2, 3], a + [4, 5], a[:20] + [9, 9, 9], a + [6, 7, 8, 9], [7] * 10]
    labels = [[IGNORE_INDEX] * 40 + [2, 3, 9], [IGNORE_INDEX] * 40 + [5, 9], [IGNORE_INDEX] * 21 + [9, 9],
              [IGNORE_INDEX] * 41 + [8, 9, 0], [7] * 10]
    assert [loss_free_lead(row) for row in labels] == [40, 40, 21, 41, 0]
    groups = shared_prefix_groups(ids, labels, max_seq_len=64)
    assert sorted(i for members, _ in groups for i in members) == [0, 1, 2, 3, 4]  # each sample once
    shared = [g for g in groups if len(g[0]) > 1]
    assert shared == [([0, 1, 3], 40)]  # sample 2 shares only 20 < MIN_SHARED tokens; 4 has no loss-free lead
    assert all(s == 0 for members, s in groups if len(members) == 1)
    entries, sizes = group_entries(groups, [len(x) for x in ids])
    group = entries[groups.index(shared[0])]
    assert group == [(0, 40, 1), (0, 40, 2), (1, 40, 2), (3, 40, 2)]
    assert sizes[groups.index(shared[0])] == 40 + 3 + 2 + 4
    # a row too short for all three branches: the group closes and the next one starts
    assert [len(m) for m, _ in shared_prefix_groups(ids, labels, max_seq_len=46)
            if len(m) > 1] == [2] and MIN_SHARED <= 40
    assert shared_prefix_groups(ids, labels, 64) == groups  # deterministic


def test_branches_train_exactly_as_separate_conversations(tmp_path, tok):
    """The same conversations, packed with and without sharing: the same label tokens, fewer positions, and the
    same summed loss and gradients of a model (fp32) to rounding."""
    path = write(tmp_path / "chats.jsonl", conversations(6, systems=(TOOLS, TOOLS + " Be brief.")))
    plain = build_dataset("sft", path, tok, 256, cache_dir=tmp_path / "cache")
    shared = build_dataset("sft", path, tok, 256, cache_dir=tmp_path / "cache", share_prefixes=True)
    assert shared.stats.n_label_tokens == plain.stats.n_label_tokens
    assert shared.stats.n_shared_prefixes == 2 and shared.stats.n_shared_branches == 6
    assert shared.stats.n_positions == plain.stats.n_positions - shared.stats.n_shared_positions
    assert shared.stats.n_shared_positions > 4 * 40 and len(shared) < len(plain)
    assert "6 samples continue 2 shared prefixes" in str(shared.stats)

    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(dropout=0.0)).train()
    collate = PackedBatchCollator(tok.pad_token_id, 256)

    def loss_and_grads(data):
        model.zero_grad()
        batch = collate([data[i] for i in range(len(data))])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"], logits_positions=batch["loss_positions"]).logits
        loss = losses.token_cross_entropy(logits, batch["labels"].flatten()[batch["loss_positions"]]).sum()
        loss.backward()
        return loss.item(), batch, {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_plain, _, grads_plain = loss_and_grads(plain)
    loss_shared, batch, grads_shared = loss_and_grads(shared)
    assert batch["input_ids"].numel() < sum(len(s["input_ids"]) for i in range(len(plain)) for s in plain[i])
    assert loss_shared == pytest.approx(loss_plain, rel=1e-5)
    for name, g in grads_plain.items():
        torch.testing.assert_close(grads_shared[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_a_branch_sees_its_prefix_and_itself_only():
    # row: prefix (segment 0, 3 positions), branch A (segment 1), branch B (segment 2), a plain sample (segment 3)
    rows = [[{"input_ids": [1, 2, 3], "labels": [IGNORE_INDEX] * 3, "prefix": True},
             {"input_ids": [4, 5], "labels": [5, 0], "prefix_length": 3},
             {"input_ids": [6], "labels": [0], "prefix_length": 3},
             {"input_ids": [7, 8], "labels": [8, 0]}]]
    batch = PackedBatchCollator(0, 8)(rows)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3, 0, 1]
    mask = batch["attention_mask"][0, 0]
    assert mask[5].tolist() == [True, True, True, False, False, True, False, False]  # B: the prefix and itself
    assert mask[4].tolist() == [True, True, True, True, True, False, False, False]  # A's second token
    assert mask[7].tolist() == [False] * 6 + [True, True]  # the plain sample: itself only
    segments = torch.tensor([[0, 0, 0, 1, 1, 2, 3, 3]])
    assert torch.equal(block_causal_mask(segments), block_causal_mask(segments, torch.full((1, 8), -2)))
    with pytest.raises(ValueError, match="without its prefix"):
        PackedBatchCollator(0, 8)([[{"input_ids": [4], "labels": [0], "prefix_length": 3}]])


def test_the_layout_is_cached_and_reused(tmp_path, tok):
    path = write(tmp_path / "chats.jsonl", conversations(5))
    first = build_dataset("sft", path, tok, 256, cache_dir=tmp_path / "cache", share_prefixes=True)
    again = build_dataset("sft", path, tok, 256, cache_dir=tmp_path / "cache", share_prefixes=True)
    assert [first[i] for i in range(len(first))] == [again[i] for i in range(len(again))]
    assert list((tmp_path / "cache").rglob("packed-*-shared-*.npz"))
    assert again.stats.n_shared_branches == 5


def test_the_flag_trains_and_refuses_what_it_cannot_do(tmp_path, capsys):
    path = write(tmp_path / "chats.jsonl", conversations(8))
    common = ["--data_path", str(path), "--config", "tiny", "--device", "cpu", "--dtype", "float32",
              "--num_workers", "0", "--out_dir", str(tmp_path / "out"), "--from_weight", "none", "--max_steps", "2",
              "--batch_size", "2", "--max_seq_len", "256", "--cache_dir", str(tmp_path / "cache")]
    run(FULL_SFT, [*common, "--share_prefixes"])
    out, err = capsys.readouterr()
    assert "8 samples continue 2 shared prefixes" in err  # 8 branches do not fit one row of 256
    assert (tmp_path / "out" / "full_sft_64" / "model.safetensors").exists()
    with pytest.raises(SystemExit) as exit_info:
        run(FULL_SFT, [*common, "--share_prefixes", "--streaming"])
    assert exit_info.value.code != 0 and "sharing prefixes needs" in capsys.readouterr().err
    text = write(tmp_path / "text.jsonl", [{"text": "plain text has no loss-free lead"}] * 4)
    with pytest.raises(SystemExit) as exit_info:  # pretraining: nothing to share, so the flag is refused
        run(PRETRAIN, [*common[2:], "--data_path", str(text), "--share_prefixes"])
    assert exit_info.value.code != 0 and "for the conversation stages" in capsys.readouterr().err


class InterruptedSFT(FullSFT):
    """The SFT stage, stopped (as by Ctrl-C) before optimizer step `stop_at`, past its first epoch."""
    stop_at = 5

    def on_step(self, step, total_steps):
        if step == self.stop_at:
            raise KeyboardInterrupt


def test_resume_with_shared_prefixes_equals_the_uninterrupted_run(tmp_path, tok, capsys):
    path = write(tmp_path / "chats.jsonl", conversations(12, systems=(TOOLS, TOOLS + " Be brief.")))
    common = [str(a) for a in ["--data_path", path, "--config", "tiny", "--device", "cpu", "--dtype", "float32",
                               "--num_workers", "0", "--quiet", "--from_weight", "none", "--epochs", "3",
                               "--batch_size", "2", "--max_seq_len", "256", "--cache_dir", tmp_path / "cache",
                               "--save_interval", "1", "--share_prefixes"]]
    run(FULL_SFT, [*common, "--out_dir", tmp_path / "full"])
    with pytest.raises(SystemExit) as stopped:
        run(InterruptedSFT(), [*common, "--out_dir", tmp_path / "resumed"])
    assert stopped.value.code == 130
    capsys.readouterr()
    run(FULL_SFT, [*common, "--out_dir", tmp_path / "resumed", "--resume"])
    assert f"(step {InterruptedSFT.stop_at})" in capsys.readouterr().err
    full, resumed = (load_file(str(tmp_path / out / "full_sft_64" / "model.safetensors")) for out in ("full", "resumed"))
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def rollout_batch(prompt_lengths, completion_lengths, G, P, C, vocab=500, seed=0):
    """GRPO's layout by hand: each prompt left-padded to P and repeated for its G rows, completions right-padded."""
    gen = torch.Generator().manual_seed(seed)
    N = len(prompt_lengths) * G
    sequences = torch.zeros(N, P + C, dtype=torch.long)
    prompt_mask = torch.zeros(N, P, dtype=torch.long)
    attention = torch.zeros(N, C, dtype=torch.bool)
    for b, p in enumerate(prompt_lengths):
        prompt = torch.randint(3, vocab, (p,), generator=gen)
        for g in range(G):
            n, length = b * G + g, completion_lengths[b * G + g]
            sequences[n, P - p:P] = prompt
            sequences[n, P:P + length] = torch.randint(3, vocab, (length,), generator=gen)
            prompt_mask[n, P - p:] = 1
            attention[n, :length] = True
    return {"sequences": sequences, "prompt_mask": prompt_mask, "completion_attention": attention}


def test_grpo_runs_each_prompt_once_with_the_same_log_probs():
    """GRPO.model_inputs: long prompts and short completions (a tools block and a reply) run as one row per prompt
    with the completions as branches; every completion token's log-prob equals the padded rows' (group_size 1 keeps
    that layout), and short prompts with long completions keep the padded rows."""
    from trainer.stages import GRPO

    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(dropout=0.0)).eval()
    G, P, C = 3, 40, 6
    batch = rollout_batch([40, 25], [6, 1, 4, 3, 6, 2], G, P, C)
    targets = batch["sequences"][:, P:]

    def logprobs(inputs):
        logits = model(**inputs).logits
        return -losses.token_cross_entropy(logits, targets.flatten()).view_as(targets)

    shared, padded = GRPO.model_inputs(batch, G), GRPO.model_inputs(batch, 1)
    assert shared["input_ids"].shape == (2, 40 + 6 + 1 + 4) and padded["input_ids"].shape == (6, P + C)
    real = batch["completion_attention"]
    torch.testing.assert_close(logprobs(shared)[real], logprobs(padded)[real], rtol=1e-5, atol=1e-5)
    assert logprobs(shared)[real].abs().min() > 0  # the head ran at every completion position

    long_replies = rollout_batch([5, 4], [30] * 6, G, 5, 30)
    assert GRPO.model_inputs(long_replies, G)["input_ids"].shape == (6, 35)  # sharing would attend over more

    # replies too long for all G in one row, short enough for two: 2 rows per prompt, same log-probs
    G, P, C = 4, 60, 32
    batch = rollout_batch([60, 55], [32] * 8, G, P, C, seed=1)
    targets = batch["sequences"][:, P:]
    shared, padded = GRPO.model_inputs(batch, G), GRPO.model_inputs(batch, 1)
    assert shared["input_ids"].shape[0] == 4  # 2 prompts x 2 rows of 2 replies
    real = batch["completion_attention"]
    torch.testing.assert_close(logprobs(shared)[real], logprobs(padded)[real], rtol=1e-5, atol=1e-5)
