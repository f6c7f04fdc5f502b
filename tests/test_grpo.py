"""GRPO: rewards, group advantages, the policy-gradient loss, and a short run that raises the format reward."""
import json
import math

import pytest
import torch

from inference.reasoning import reply_in_turn

from dataset.demo import make_demo_data
from trainer import GRPO_STAGE, REASON, run
from trainer.losses import group_advantages, grpo_loss
from trainer.rewards import REWARDS, accuracy_reward, final_number, format_reward, get_rewards, reward

TINY = ["--config", "tiny", "--device", "cpu", "--dtype", "float32", "--quiet"]


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, 0.0, 0.0, 0.0])
    adv = group_advantages(rewards, group_size=4)
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of [1, 0, 0, 1]
    expected_first = [(r - 0.5) / (std + 1e-4) for r in (1, 0, 0, 1)]
    assert torch.allclose(adv[:4], torch.tensor(expected_first), atol=1e-6)
    assert torch.equal(adv[4:8], torch.zeros(4))  # identical rewards: nothing to learn from this group
    third = torch.tensor([3.0, 0, 0, 0])
    assert torch.allclose(adv[8:], (third - 0.75) / (third.std() + 1e-4), atol=1e-6)


def test_zero_advantage_gives_zero_policy_gradient():
    logits = torch.randn(4, 5, 11, requires_grad=True)
    targets = torch.randint(0, 11, (4, 5))
    logprobs = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    mask = torch.ones(4, 5, dtype=torch.bool)
    loss, kl, clipped = grpo_loss(logprobs, logprobs.detach(), logprobs.detach(), torch.zeros(4), mask, 0.2, beta=0.0)
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert torch.equal(kl, torch.zeros(4)) and torch.equal(clipped, torch.zeros(4))


def test_positive_advantage_raises_its_tokens_probability():
    logits = torch.zeros(1, 3, 7, requires_grad=True)
    targets = torch.tensor([[1, 2, 3]])
    logprobs = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    loss, _, _ = grpo_loss(logprobs, logprobs.detach(), logprobs.detach(), torch.tensor([1.0]),
                           torch.ones(1, 3, dtype=torch.bool), 0.2, beta=0.04)
    loss.backward()
    chosen_grad = logits.grad[0, torch.arange(3), targets[0]]
    assert (chosen_grad < 0).all()  # gradient descent increases the sampled tokens' logits


@pytest.mark.parametrize("text, score", [
    ("<think>\nadd them\n</think>\n<answer>\n7\n</answer>", 1.0),
    ("<think>\n\n</think>\n<answer>\n7\n</answer>", 0.75),  # empty think block
    ("<think>\nadd them\n</think>\n<answer>\n7", 0.75),  # answer not closed
    ("<think>\nadd them", 0.25),
    ("the answer is 7", 0.0),
    ("<answer>\n7\n</answer><think>x</think>", 0.25),  # out of order: only the closing answer tag is in place
])
def test_format_reward_partial_credit(text, score):
    assert format_reward(text) == score


def test_accuracy_reward_compares_final_numbers():
    reference = "<think>\n3 + 4 = 7, 7 * 2 = 14\n</think>\n<answer>\n14\n</answer>"
    assert final_number(reference) == 14
    assert accuracy_reward("<think>\n...\n</think>\n<answer>\nIt is 14.\n</answer>", reference) == 1.0
    assert accuracy_reward("<think>\n14\n</think>\n<answer>\n15\n</answer>", reference) == 0.0
    assert accuracy_reward("so 1,200 in total", "<answer>\n1200\n</answer>") == 1.0
    assert accuracy_reward("no number", reference) == 0.0


def test_user_rewards_plug_in_by_name():
    @reward("test_length")
    def short(completion, reference):
        return float(len(completion) < 5)

    try:
        assert get_rewards("format,test_length")["test_length"]("abc", None) == 1.0
        with pytest.raises(ValueError, match="unknown reward 'nope'"):
            get_rewards("nope")
    finally:
        REWARDS.pop("test_length")


PROMPTS = [f"Add {a}, {b} and {c}." for a, b, c in [(2, 5, 7), (9, 1, 4), (3, 3, 8), (6, 2, 1), (4, 4, 4), (7, 0, 5),
                                                    (1, 8, 2), (5, 6, 3)]]


def _format_rewards(folder, tokenizer, samples=16, seed=0):
    """The format reward of `samples` sampled replies to each of PROMPTS (8 x 16 = 128 replies)."""
    from model import MiniMindForCausalLM

    model = MiniMindForCausalLM.from_pretrained(folder).eval()
    torch.manual_seed(seed)
    scores = []
    for prompt in PROMPTS:
        # prompted and judged as GRPO does: the thinking switch on, the reply read with the <think> the prompt opened
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            open_thinking=True, return_tensors="pt", return_dict=True)["input_ids"]
        out = model.generate(ids.repeat(samples, 1), do_sample=True, temperature=1.0, top_k=0, max_new_tokens=30,
                             pad_token_id=0, eos_token_id=2)
        replies = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        scores += [format_reward(reply_in_turn(t, thinking=True)) for t in replies]
    return scores


def test_format_reward_rises_over_a_short_run(tmp_path):
    from transformers import AutoTokenizer

    from model import TOKENIZER_DIR

    demo = make_demo_data(tmp_path / "demo", seed=0, scale=0.2)
    # a little reasoning SFT so the format appears now and then; GRPO then has something to reinforce
    run(REASON, [*TINY, "--from_weight", "none", "--data_path", demo["reason"], "--out_dir", tmp_path,
                 "--learning_rate", "3e-3", "--batch_size", "16", "--max_steps", "12", "--save_interval", "0",
                 "--cache_dir", tmp_path / "cache"])
    grpo = [*TINY, "--from_weight", tmp_path / "reason_64", "--data_path", demo["reason"], "--rewards", "format",
            "--batch_size", "4", "--num_generations", "8", "--max_new_tokens", "30", "--max_steps", "16",
            "--beta", "0.0", "--log_interval", "1", "--save_interval", "0"]
    run(GRPO_STAGE, [*grpo, "--out_dir", tmp_path / "trained", "--learning_rate", "1e-2"])
    # the control: the same run, sampling and all, with the learning switched off
    run(GRPO_STAGE, [*grpo, "--out_dir", tmp_path / "control", "--learning_rate", "0"])
    rows = [json.loads(l) for l in (tmp_path / "trained" / "runs" / "grpo_64" / "metrics.jsonl").read_text().splitlines()]
    assert {"reward_format", "reward_std", "kl", "clip_fraction", "completion_length"} <= rows[0].keys()

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    trained = _format_rewards(tmp_path / "trained" / "grpo_64", tokenizer)
    control = _format_rewards(tmp_path / "control" / "grpo_64", tokenizer)
    n = len(trained)
    mean_t, mean_c = sum(trained) / n, sum(control) / n
    # standard error of the difference of two means of n rewards in [0, 1]
    se = math.sqrt((sum((x - mean_t) ** 2 for x in trained) + sum((x - mean_c) ** 2 for x in control)) / (n - 1) / n)
    print(f"mean format reward of {n} sampled replies: control (lr 0) {mean_c:.3f}, trained {mean_t:.3f} (s.e. {se:.3f})")
    assert mean_t - mean_c > max(0.05, 4 * se), (mean_c, mean_t, se)  # measured: 0.006 -> 0.098, s.e. 0.011
