"""GRPO options: loss normalisations, reward scaling, clipping, truncation masking and rollout reuse
(--num_iterations), each against a hand computation or a run."""
import json
import math
import shutil
from argparse import Namespace

import pytest
import torch
from safetensors.torch import load_file

from dataset.demo import make_demo_data
from trainer import GRPO_STAGE, REASON, run
from trainer.distributed import DistInfo
from trainer.losses import group_advantages, grpo_loss, grpo_token_weights
from trainer.rewards import REWARDS, reward
from trainer.stages import GRPO

TINY = ["--config", "tiny", "--device", "cpu", "--dtype", "float32", "--quiet"]

# two completions in a batch of width 4: the first 2 tokens long, the second 4
MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
ADV = torch.tensor([1.0, -0.25])


def policy_term_only(logprobs, old, weights):
    """grpo_loss with no KL term and the policy where it sampled: each token's loss is −ratio·A."""
    return grpo_loss(logprobs, old, logprobs.detach(), ADV, MASK, clip_eps=0.2, beta=0.0, token_weights=weights)


@pytest.mark.parametrize("loss_type, expected_mean", [
    # per token −A; summed, divided by the 2 completions the trainer counts
    ("grpo", (-(1.0 * 2) / 2 + (0.25 * 4) / 4) / 2),  # each completion's token mean, then the mean
    ("dr_grpo", (-(1.0 * 2) / 8 + (0.25 * 4) / 8) / 2),  # every token / max_completion_length 8
    ("dapo", (-(1.0 * 2) + 0.25 * 4) / 6),  # the mean over all 6 tokens
])
def test_loss_types_by_hand(loss_type, expected_mean):
    logprobs = torch.full((2, 4), -1.0)
    weights = grpo_token_weights(MASK, loss_type, max_completion_length=8)
    loss, _, clipped = policy_term_only(logprobs, logprobs, weights)
    assert loss.item() / 2 == pytest.approx(expected_mean)
    assert torch.equal(clipped, torch.zeros(2))


def test_dapo_weights_span_the_whole_step():
    """Split over two micro-batches with the step's own completions-per-token, the trainer's sum / completions
    is still the mean over every token of the step."""
    token_loss = torch.tensor([[0.3, -1.2, 0.0, 0.0], [0.5, 0.1, 2.0, -0.7]])
    per_token_step = 2 / 6
    parts = [(token_loss[i:i + 1] * grpo_token_weights(MASK[i:i + 1], "dapo", items_per_token=per_token_step)).sum()
             for i in range(2)]
    assert (sum(parts) / 2).item() == pytest.approx(token_loss[MASK].mean().item())
    with pytest.raises(ValueError, match="unknown GRPO loss type"):
        grpo_token_weights(MASK, "ppo")


def test_clip_by_hand():
    """Ratios 1.5 and 0.5 on the tokens of a positive- and a negative-advantage completion: the clip cuts the
    gradient of the ratio above 1.2 for A > 0 and of the ratio below 0.8 for A < 0, nothing else."""
    old = torch.zeros(2, 4)
    shift = torch.tensor([[math.log(1.5), math.log(0.5), 0, 0], [math.log(1.5), math.log(0.5), math.log(1.1), 0]])
    logprobs = (old + shift).requires_grad_()
    loss, _, clipped = grpo_loss(logprobs, old, logprobs.detach(), ADV, MASK, 0.2, 0.0,
                                 token_weights=MASK.float())
    # completion 0 (A = 1): min(1.5, 1.2)·1 + min(0.5, 0.8)·1; completion 1 (A = −0.25): each min(r·A, clip(r)·A)
    objective = (1.2 + 0.5) + -0.25 * (1.5 + 0.8 + 1.1 + 1.0)
    assert loss.item() == pytest.approx(-objective, rel=1e-6)
    assert clipped.tolist() == pytest.approx([1 / 2, 1 / 4])  # 1.5 with A > 0; 0.5 with A < 0
    loss.backward()
    grad = logprobs.grad
    assert grad[0, 0] == 0 and grad[1, 1] == 0  # clipped: no gradient
    assert grad[0, 1].item() == pytest.approx(-0.5) and grad[1, 0].item() == pytest.approx(0.25 * 1.5)


def test_scale_rewards_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 4.0, 0.0])
    group_centred = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.0, 0.0, 2.0, -2.0])
    assert torch.allclose(group_advantages(rewards, 4, "none"), group_centred)
    batch_std = math.sqrt(sum((r - 1.125) ** 2 for r in rewards.tolist()) / 7)
    assert torch.allclose(group_advantages(rewards, 4, "batch"), group_centred / (batch_std + 1e-4))
    group_std = torch.tensor([0.5] * 4 + [math.sqrt(8 / 3)] * 4)
    assert torch.allclose(group_advantages(rewards, 4, "group"), group_centred / (group_std + 1e-4))


def test_truncated_completions_leave_the_loss():
    """A real rollout through the engine: the prompt whose greedy first token is the end token finishes, the
    other is cut at max_new_tokens; --mask_truncated_completions drops only the cut rows from the loss."""
    from model import MiniMindConfig, MiniMindForCausalLM
    from inference.loading import load_tokenizer

    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, initializer_range=0.3))
    prompts = torch.tensor([[5, 6, 7], [0, 9, 10]])
    mask = torch.tensor([[1, 1, 1], [0, 1, 1]])
    with torch.no_grad():
        first = model(input_ids=prompts[:1]).logits[0, -1].argmax().item()
    stage = GRPO()
    stage.rewards = {"length": lambda completion, reference: float(len(completion))}
    stage.tokenizer, stage.eos_ids, stage.progress, stage.thinking = load_tokenizer(), [first], 0.0, False
    stage.reference = model
    batch = {"input_ids": prompts, "attention_mask": mask, "references": [None, None], "num_items": 4}
    outs = {}
    for flag in (False, True):
        args = Namespace(num_generations=2, max_new_tokens=5, temperature=0.0, top_p=1.0, num_iterations=1,
                         loss_type="grpo", scale_rewards="group", mask_truncated_completions=flag,
                         format_weight_start=1.0, dtype="float32", beta=0.04, clip_eps=0.2, sampler="engine")
        (outs[flag],) = stage.rollouts(model, [batch], args, DistInfo(), seed=0)
    r = outs[True]
    assert r["finished"].tolist() == [True, True, False, False]
    assert r["completion_mask"][:2].sum(1).tolist() == [1, 1] and r["completion_mask"][2:].all()
    assert torch.equal(outs[False]["loss_mask"], r["completion_mask"])
    assert torch.equal(r["loss_mask"], r["completion_mask"] & torch.tensor([True, True, False, False])[:, None])
    loss, sums = stage.loss(model, r, args)
    assert sums["truncated"].item() == 2 and sums["completion_length"].item() == 1 + 1 + 5 + 5


def test_generate_sampler_gives_the_engines_layout_and_is_seeded():
    """--sampler generate (what --fsdp uses): the same Completions layout as the engine's (each row ends at its
    first end token, pad after it, `finished` says whether it has one), the same samples for the same seed, and
    the global RNG left as it was."""
    from model import MiniMindConfig, MiniMindForCausalLM
    from inference.loading import load_tokenizer

    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, initializer_range=0.3))
    stage = GRPO()
    stage.tokenizer, stage.eos_ids = load_tokenizer(), list(range(3, 6400, 40))  # many end tokens: most rows end
    args = Namespace(max_new_tokens=12, temperature=1.0, top_p=1.0, sampler="generate")
    prompts, mask = torch.tensor([[5, 6, 7], [0, 9, 10]]), torch.tensor([[1, 1, 1], [0, 1, 1]])
    rng = torch.get_rng_state()
    runs = [stage.generate(model, prompts, mask, 4, args, torch.Generator().manual_seed(seed)) for seed in (1, 1, 2)]
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(runs[0].tokens, runs[1].tokens) and not torch.equal(runs[0].tokens, runs[2].tokens)
    c = runs[0]
    assert c.tokens.shape[0] == 8 and c.finished.any()
    ends = torch.isin(c.tokens, torch.tensor(stage.eos_ids))
    for row in range(8):
        n = int(c.lengths[row])
        assert bool(c.finished[row]) == bool(ends[row].any())
        if c.finished[row]:
            assert ends[row, n - 1] and not ends[row, :n - 1].any()
            assert (c.tokens[row, n:] == stage.tokenizer.pad_token_id).all()
        else:
            assert n == c.tokens.shape[1] == 12


class HandMadeRollout(GRPO):
    """A subclass that replaces only the rollout, as a multi-turn stage does: two prompts x G = 2, fixed token ids
    where the completion has a "tool result" (tokens 40, 41) the model reads but did not write, fixed scores."""

    def rollout(self, model, batch, args, generator):
        prompt_mask = torch.tensor([[0, 1, 1]] * 2 + [[1, 1, 1]] * 2)
        completion = torch.tensor([[7, 40, 41, 8, 2, 0], [9, 2, 0, 0, 0, 0], [11, 12, 2, 0, 0, 0],
                                   [13, 40, 41, 14, 15, 16]])
        attended = completion != 0
        generated = attended & (completion != 40) & (completion != 41)
        return {"sequences": torch.cat([torch.tensor([[0, 5, 6]] * 2 + [[3, 4, 5]] * 2), completion], dim=1),
                "prompt_mask": prompt_mask, "completion_mask": generated, "completion_attention": attended,
                "finished": torch.tensor([True, True, True, False]), "scores": torch.tensor([[1.0], [0.0], [3.0], [1.0]])}


def hand_made_stage():
    from model import MiniMindConfig, MiniMindForCausalLM

    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, vocab_size=64))
    stage = HandMadeRollout()
    stage.rewards, stage.reference, stage.progress = {"score": None}, model, 0.0
    return stage, model


@pytest.mark.parametrize("loss_type, scale_rewards, mask_truncated", [
    ("grpo", "group", False), ("dr_grpo", "none", False), ("dapo", "batch", True), ("dapo", "none", False)])
def test_subclass_rollout_through_the_options_by_hand(loss_type, scale_rewards, mask_truncated):
    """A replaced rollout goes through the same advantages, masks and normalisations: with the policy where it
    sampled and no KL term, each token's loss is −A·weight, so the loss is a sum anyone can do by hand; the
    tool-result tokens are attended (they change the next token's log-prob) but carry no loss."""
    stage, model = hand_made_stage()
    args = Namespace(num_generations=2, max_new_tokens=6, num_iterations=1, loss_type=loss_type,
                     scale_rewards=scale_rewards, mask_truncated_completions=mask_truncated, format_weight_start=1.0,
                     dtype="float32", beta=0.0, clip_eps=0.2)
    (r,) = stage.rollouts(model, [{"num_items": 4}], args, DistInfo(), seed=0)
    generated = [3, 2, 3, 4]  # model tokens per row (tool results left out)
    centred = [0.5, -0.5, 1.0, -1.0]  # rewards 1, 0 | 3, 1 minus their group means
    scale = {"group": [math.sqrt(0.5)] * 2 + [math.sqrt(2.0)] * 2, "none": [1.0] * 4,
             "batch": [torch.tensor([1.0, 0.0, 3.0, 1.0]).std().item()] * 4}[scale_rewards]
    adv = [c / (s + 1e-4) if scale_rewards != "none" else c for c, s in zip(centred, scale)]
    assert r["advantages"].tolist() == pytest.approx(adv, rel=1e-5)
    counted = [n if (not mask_truncated or finished) else 0 for n, finished in zip(generated, [1, 1, 1, 0])]
    per_row = {"grpo": [1.0 if n else 0.0 for n in counted], "dr_grpo": [n / 6 for n in counted],
               "dapo": [n * 4 / sum(counted) for n in counted]}[loss_type]
    loss, sums = stage.loss(model, r, args)
    assert loss.item() == pytest.approx(-sum(a * w for a, w in zip(adv, per_row)), abs=1e-5)
    assert sums["truncated"].item() == 1 and sums["reward"].item() == 5.0
    # the log-probs the loss used: model tokens only, each under the full sequence (tool results included)
    old = r["saved"]["old"]
    assert torch.equal(old != 0, r["loss_mask"])
    with torch.no_grad():
        logits = model(input_ids=r["sequences"][:1, 1:]).logits[0]  # row 0 without its left pad
    by_hand = torch.log_softmax(logits[1:-1], dim=-1).gather(1, r["sequences"][0, 3:, None]).squeeze(1)
    assert old[0, [0, 3, 4]].tolist() == pytest.approx(by_hand[[0, 3, 4]].tolist(), abs=1e-4)


@pytest.fixture(scope="module")
def reason_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpo_opts")
    demo = make_demo_data(tmp / "demo", seed=0, scale=0.2)
    run(REASON, [*TINY, "--from_weight", "none", "--data_path", demo["reason"], "--out_dir", tmp,
                 "--learning_rate", "3e-3", "--batch_size", "16", "--max_steps", "4", "--save_interval", "0",
                 "--cache_dir", tmp / "cache"])
    return tmp / "reason_64", demo["reason"]


@pytest.fixture
def length_reward():
    """A reward that differs between almost any two completions, so every group has advantages to learn from."""
    reward("test_chars")(lambda completion, reference: len(completion) / 10)
    yield
    REWARDS.pop("test_chars")


def grpo_args(reason_model, out, *extra):
    weights, data = reason_model
    return [*TINY, "--from_weight", weights, "--data_path", data, "--out_dir", out, "--rewards", "test_chars",
            "--learning_rate", "2e-2", "--batch_size", "2", "--num_generations", "4", "--max_new_tokens", "12",
            "--beta", "0.0", "--log_interval", "1", *extra]


def test_num_iterations_reuses_each_rollout_and_the_clip_acts(reason_model, tmp_path, length_reward):
    run(GRPO_STAGE, grpo_args(reason_model, tmp_path, "--num_iterations", "2", "--max_steps", "4",
                              "--save_interval", "0", "--loss_type", "dapo", "--scale_rewards", "batch"))
    rows = [json.loads(l) for l in (tmp_path / "runs" / "grpo_64" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "clip_fraction" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # steps 1 and 3 sample (ratio 1: nothing clipped); steps 2 and 4 reuse those rollouts after an update
    assert rows[0]["clip_fraction"] == 0 and rows[2]["clip_fraction"] == 0
    assert rows[1]["clip_fraction"] > 0 and rows[3]["clip_fraction"] > 0, rows
    assert rows[1]["reward"] == rows[0]["reward"] and rows[3]["reward"] == rows[2]["reward"]  # the same samples


def test_resume_between_rollouts_is_bit_identical(reason_model, tmp_path, length_reward):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    common = ["--num_iterations", "2", "--max_steps", "4", "--save_interval", "2"]
    run(GRPO_STAGE, grpo_args(reason_model, full, *common))
    checkpoints = full / "runs" / "grpo_64" / "checkpoints"
    assert (checkpoints / "step_0000002").exists()
    shutil.copytree(full / "runs", resumed / "runs")
    (resumed / "runs" / "grpo_64" / "checkpoints" / "latest").write_text("step_0000002")
    run(GRPO_STAGE, grpo_args(reason_model, resumed, *common, "--resume"))
    a, b = load_file(full / "grpo_64" / "model.safetensors"), load_file(resumed / "grpo_64" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_each_pass_over_a_rollout_group_is_one_optimizer_step_also_for_an_epochs_short_last_group():
    """5 prompt batches, accumulation_steps 2, num_iterations 2: the groups are (1, 2), (3, 4) and the short (5);
    each is sampled once and served twice, each pass one whole optimizer step, and steps_per_epoch counts them."""
    class FiveBatches:
        def micro_batches(self, epoch, batch_size, seed, info, skip):
            return iter([f"b{i}" for i in range(1, 6)][skip:])

        def steps_per_epoch(self, batch_size, accumulation_steps, info):
            return math.ceil(5 / accumulation_steps)

    sampled = []

    def rollouts(model, group, args, info, seed):
        sampled.append(tuple(group))
        return [f"rollout of {b}" for b in group]

    stage = GRPO()
    stage.rollouts = rollouts
    args = Namespace(num_iterations=2, accumulation_steps=2, batch_size=4, seed=0)
    steps = list(stage.step_groups(FiveBatches(), None, 0, 0, args, DistInfo()))
    assert sampled == [("b1", "b2"), ("b3", "b4"), ("b5",)]
    assert [len(s) for s in steps] == [2, 2, 2, 2, 1, 1] and steps[0] == steps[1] and steps[4] == ["rollout of b5"]
    assert stage.steps_per_epoch(FiveBatches(), args, DistInfo()) == len(steps)
    # resumed at step 3 (the second pass over the second group): that group is sampled again, served once
    sampled.clear()
    resumed = list(stage.step_groups(FiveBatches(), None, 0, 3, args, DistInfo()))
    assert sampled == [("b3", "b4"), ("b5",)] and resumed == steps[3:]
