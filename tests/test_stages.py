"""The fine-tuning stages (LoRA, DPO, reasoning distillation, knowledge distillation) and the reply-format
measurement, on the tiny preset: each stage's loss against a hand computation, and a short real run per stage."""
import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, run_command, save_tiny
from dataset import DPOCollator, PackedBatchCollator, build_dataset
from inference.convert import merge_lora
from dataset.demo import REASON_HELD_OUT
from dataset import read_prompts
from inference import generation
from inference.reasoning import diagnose, format_share, is_well_formed
from trainer import DISTILL, DPO_STAGE, LORA, run
from trainer import losses
from trainer.args import parse_args
from trainer.distributed import DistInfo
from trainer.modelio import load_model
from trainer.stages import DPO, REASON_TAGS, Distillation, DistillReason, LoRA

TINY = ["--config", "tiny", "--device", "cpu", "--dtype", "float32", "--quiet", "--num_workers", "0"]
SEQ = 128  # the tiny preset's max_seq_len
CPU = DistInfo()


# ---------------------------------------------------------------- shared fixtures and helpers

@pytest.fixture(scope="module")
def base(tmp_path_factory, tok):
    """A random tiny model folder to start the stages from. Initialised at std 0.1 instead of 0.02: with a frozen
    tied embedding of std 0.02 no adapter can move a dim-64 model's logits by more than ~1.3, which would make
    "the LoRA loss falls well below the base's" a statement about the init rather than about the adapter."""
    return save_tiny(tmp_path_factory.mktemp("base") / "base_64", tok, initializer_range=0.1)


def metrics(out, name):
    return [json.loads(l) for l in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sft_batch(path, tok, cache, n=None, packing=False):
    ds = build_dataset("sft", path, tok, SEQ, packing=packing, cache_dir=cache)
    return PackedBatchCollator(tok.pad_token_id, SEQ)([ds[i] for i in range(n or len(ds))])


def dpo_batch(path, tok, cache):
    ds = build_dataset("dpo", path, tok, SEQ, cache_dir=cache)
    return DPOCollator(tok.pad_token_id, SEQ)([ds[i] for i in range(len(ds))])


@torch.no_grad()
def mean_assistant_loss(model, path, tok, cache):
    """Mean cross entropy over the assistant tokens of every conversation in `path`."""
    model.eval()
    batch = sft_batch(path, tok, cache)
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    return losses.causal_lm_loss(logits, batch["labels"]).item() / batch["num_items"]


def forward(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 position_ids=batch["position_ids"], use_cache=False).logits


def first_lines(src, dst, n):
    dst.write_text("".join(src.read_text(encoding="utf-8").splitlines(keepends=True)[:n]), encoding="utf-8")
    return dst


# ---------------------------------------------------------------- LoRA

class CapturingLoRA(LoRA):
    """The LoRA stage, keeping hold of the model it trains and of the base weights it started with."""

    def setup(self, args, model, tokenizer, info):
        super().setup(args, model, tokenizer, info)
        self.model = model
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        self.base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


def test_lora_trains_only_the_adapter_and_it_round_trips(tmp_path, demo, base, tok, cache):
    data = tmp_path / "identity_demo.jsonl"  # a name of its own: the adapter must be named after it
    data.write_text(demo["lora_identity"].read_text(encoding="utf-8"), encoding="utf-8")
    before = {f.name: sha256(f) for f in base.iterdir() if f.is_file()}
    stage = CapturingLoRA()
    run(stage, [*TINY, "--data_path", data, "--from_weight", base, "--out_dir", tmp_path / "out", "--cache_dir", cache,
                "--max_steps", "3", "--batch_size", "8", "--learning_rate", "1e-2", "--save_interval", "0"])

    assert {f.name: sha256(f) for f in base.iterdir() if f.is_file()} == before  # base folder bit-identical
    assert stage.trainable and all("lora_" in n for n in stage.trainable)
    params = dict(stage.model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in stage.base_before.items())  # in-memory base untouched
    assert any(not torch.equal(params[n], torch.zeros_like(params[n])) for n in stage.trainable if "lora_B" in n)

    adapter = tmp_path / "out" / "lora" / "identity_demo_64"  # --lora_name defaulted from the data file
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    from peft import PeftModel

    ids = torch.tensor([tok.apply_chat_template([{"role": "user", "content": "Who are you?"}],
                                                tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]])
    with torch.no_grad():
        trained = stage.model.eval()(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(load_model(base), adapter).eval()(input_ids=ids).logits
        merge_lora(base, adapter, tmp_path / "merged")
        merged = load_model(tmp_path / "merged").eval()(input_ids=ids).logits
        plain = load_model(base).eval()(input_ids=ids).logits
    torch.testing.assert_close(reloaded, trained, atol=1e-5, rtol=0)
    torch.testing.assert_close(merged, trained, atol=1e-4, rtol=0)
    assert (trained - plain).abs().max() > 1e-2


def test_lora_learns_the_kit_identity_file(tmp_path, data_kit, base, tok, cache):
    from peft import PeftModel

    data = data_kit / "lora_identity.jsonl"
    before = mean_assistant_loss(load_model(base), data, tok, cache)
    run(LORA, [*TINY, "--data_path", data, "--from_weight", base, "--out_dir", tmp_path, "--cache_dir", cache,
               "--max_steps", "15", "--batch_size", "8", "--learning_rate", "1e-2", "--lora_rank", "16",
               "--lora_alpha", "32", "--save_interval", "0"])
    adapted = PeftModel.from_pretrained(load_model(base), tmp_path / "lora" / "lora_identity_64")
    after = mean_assistant_loss(adapted, data, tok, cache)
    assert after < before - 1.5, (before, after)


def test_lora_without_base_names_the_sft_command(tmp_path, demo, capsys):
    with pytest.raises(SystemExit) as exc:
        run(LORA, [*TINY, "--data_path", demo["lora_identity"], "--out_dir", tmp_path, "--cache_dir", tmp_path / "c"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "python train_full_sft.py" in err and "full_sft_64" in err and "Traceback" not in err


# ---------------------------------------------------------------- DPO

def test_dpo_loss_matches_closed_form():
    pc, pr, rc, rr, beta = [-3.0, -10.0, -4.5], [-5.0, -9.0, -4.0], [-4.0, -9.5, -5.0], [-4.5, -9.5, -3.0], 0.3
    loss, chosen, rejected = losses.dpo_loss(*(torch.tensor(v, dtype=torch.float64) for v in (pc, pr, rc, rr)), beta)
    expected, margins = 0.0, []
    for a, b, c, d in zip(pc, pr, rc, rr):
        margin = beta * (a - c) - beta * (b - d)
        expected += -math.log(1 / (1 + math.exp(-margin)))
        margins.append(margin)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert (chosen - rejected).tolist() == pytest.approx(margins, rel=1e-12)
    assert chosen.tolist() == pytest.approx([beta * (a - c) for a, c in zip(pc, rc)], rel=1e-12)


def test_dpo_at_step_zero_is_log_two_with_zero_margin(demo, base, tok, cache):
    stage = DPO()
    args = parse_args(stage, [*TINY, "--beta", "0.1"])
    model = load_model(base)
    stage.setup(args, model, tok, CPU)
    batch = dpo_batch(demo["dpo"], tok, cache)
    loss, sums = stage.loss(model, batch, args)
    n = batch["num_items"]
    assert n == len(demo["dpo"].read_text().splitlines())
    assert loss.item() / n == pytest.approx(math.log(2), abs=1e-6)
    assert sums["reward_margin"].item() == 0 and sums["accuracy"].item() == 0


def test_dpo_run_raises_preference_accuracy_and_logs_rewards(tmp_path, demo, base, tok, cache):
    pairs = first_lines(demo["dpo"], tmp_path / "pairs.jsonl", 8)
    run(DPO_STAGE, [*TINY, "--data_path", pairs, "--from_weight", base, "--out_dir", tmp_path, "--cache_dir", cache,
                    "--batch_size", "4", "--epochs", "4", "--learning_rate", "2e-3", "--log_interval", "1",
                    "--save_interval", "0"])
    rows = metrics(tmp_path, "rlhf_64")
    assert [r["step"] for r in rows] == list(range(1, 9))
    for r in rows:
        assert {"loss", "reward_chosen", "reward_rejected", "reward_margin", "accuracy"} <= set(r)
        assert r["reward_margin"] == pytest.approx(r["reward_chosen"] - r["reward_rejected"], abs=1e-5)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and rows[0]["reward_margin"] == 0

    # implicit-reward accuracy on the same pairs, with the stage's own loss: reference = the starting model
    stage, args = DPO(), parse_args(DPO(), [*TINY])
    start, trained = load_model(base).eval(), load_model(tmp_path / "rlhf_64").eval()
    stage.setup(args, start, tok, CPU)
    batch = dpo_batch(pairs, tok, cache)
    with torch.no_grad():
        _, before = stage.loss(start, batch, args)
        loss, after = stage.loss(trained, batch, args)
        policy = losses.sequence_logprobs(forward(trained, batch), batch["labels"])
        reference = losses.sequence_logprobs(forward(start, batch), batch["labels"])
    n = batch["num_items"]
    assert before["accuracy"].item() == 0
    assert after["accuracy"].item() / n >= 0.75 and after["reward_margin"].item() > 0
    assert loss.item() / n < math.log(2)
    # and the policy's own preference (log π(chosen) > log π(rejected)) improved too
    assert (policy[:n] > policy[n:]).float().mean() > (reference[:n] > reference[n:]).float().mean()


# ---------------------------------------------------------------- reasoning distillation

def test_tag_token_weights():
    labels = torch.tensor([[-100, 3, 10, 4, -100], [5, 99, 6, -100, 7]])
    w = losses.tag_token_weights(labels, torch.tensor([3, 4, 5, 6]), 7.5)
    assert w.tolist() == [[0, 7.5, 1, 7.5, 0], [7.5, 1, 7.5, 0, 1]]


def test_reason_tags_are_single_tokens(tok):
    ids = [tok.convert_tokens_to_ids(t) for t in REASON_TAGS]
    assert len(set(ids)) == 4 and tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "".join(REASON_TAGS)  # they survive decoding


@pytest.mark.parametrize("tag_weight", [10.0, 1.0])
def test_reason_stage_loss_matches_hand_computation(demo, base, tok, cache, tag_weight):
    stage = DistillReason()
    args = parse_args(stage, [*TINY, "--tag_weight", str(tag_weight)])
    stage.setup(args, None, tok, CPU)
    batch = sft_batch(demo["reason"], tok, cache, n=2, packing=True)  # packed rows: several samples each
    model = load_model(base)
    with torch.no_grad():
        loss_sum, _ = stage.loss(model, batch, args)
        logp = torch.log_softmax(forward(model, batch).double(), dim=-1)
    tag_ids = {tok.convert_tokens_to_ids(t) for t in REASON_TAGS}
    hand, count, n_tags = 0.0, 0, 0
    for b, row in enumerate(batch["labels"].tolist()):
        for t, label in enumerate(row):
            if label == -100:
                continue
            count += 1
            n_tags += label in tag_ids
            hand += (tag_weight if label in tag_ids else 1.0) * -logp[b, t, label].item()
    # tags carry loss, but never <think>: the generation prompt writes it (the chat template; a reply without
    # reasoning gets a closed empty block from the prompt, so the demo's file has tag-less replies too)
    assert n_tags > 0 and tok.convert_tokens_to_ids("<think>") not in set(batch["labels"].flatten().tolist())
    assert count == batch["num_items"]
    assert loss_sum.item() / batch["num_items"] == pytest.approx(hand / count, rel=1e-5)


# ---------------------------------------------------------------- knowledge distillation

def test_distillation_loss_matches_hand_computation():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 5, dtype=torch.float64), torch.randn(2, 3, 5, dtype=torch.float64)
    labels = torch.tensor([[1, -100, 4], [-100, 0, 2]])
    alpha, T = 0.3, 2.0
    loss, ce, kl = losses.distillation_loss(student, teacher, labels, alpha, T)

    def log_softmax(xs):
        top = max(xs)
        z = math.log(sum(math.exp(x - top) for x in xs)) + top
        return [x - z for x in xs]

    ce_hand = kl_hand = 0.0
    for b in range(2):
        for t in range(3):
            y = labels[b, t].item()
            if y == -100:
                continue
            s_row, t_row = student[b, t].tolist(), teacher[b, t].tolist()
            ce_hand -= log_softmax(s_row)[y]
            ls, lt = log_softmax([x / T for x in s_row]), log_softmax([x / T for x in t_row])
            kl_hand += sum(math.exp(q) * (q - p) for p, q in zip(ls, lt))
    # the losses compute in float32
    assert ce.item() == pytest.approx(ce_hand, rel=1e-6)
    assert kl.item() == pytest.approx(kl_hand, rel=1e-5)
    assert loss.item() == pytest.approx(alpha * ce_hand + (1 - alpha) * T * T * kl_hand, rel=1e-5)


def test_distillation_from_itself_has_zero_kl(demo, base, tok, cache):
    stage = Distillation()
    args = parse_args(stage, [*TINY, "--teacher", str(base), "--alpha", "0.3"])
    model = load_model(base)
    stage.setup(args, model, tok, CPU)
    batch = sft_batch(demo["sft"], tok, cache, n=4, packing=True)
    with torch.no_grad():
        loss, sums = stage.loss(model, batch, args)
    assert abs(sums["kl"].item()) < 1e-4 * batch["num_items"]
    assert loss.item() == pytest.approx(0.3 * sums["ce"].item(), rel=1e-5)


def test_distillation_run_end_to_end(tmp_path, demo, base, tok, cache):
    teacher = save_tiny(tmp_path / "teacher", tok, seed=1, hidden_size=32, num_hidden_layers=1)
    run(DISTILL, [*TINY, "--data_path", demo["sft"], "--from_weight", base, "--teacher", teacher,
                  "--out_dir", tmp_path / "out", "--cache_dir", cache, "--max_steps", "3", "--batch_size", "4",
                  "--learning_rate", "1e-3", "--log_interval", "1", "--save_interval", "0"])
    rows = metrics(tmp_path / "out", "distill_64")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["kl"] > 0 and r["loss"] == pytest.approx(0.5 * r["ce"] + 0.5 * 4.0 * r["kl"], rel=1e-4)
    assert (tmp_path / "out" / "distill_64" / "model.safetensors").exists()


def test_distillation_teacher_with_other_vocab_is_refused(tmp_path, demo, base, tok, capsys):
    teacher = save_tiny(tmp_path / "teacher", tok, vocab_size=6500)
    with pytest.raises(SystemExit) as exc:
        run(DISTILL, [*TINY, "--data_path", demo["sft"], "--from_weight", base, "--teacher", teacher,
                      "--out_dir", tmp_path / "out", "--cache_dir", tmp_path / "c", "--max_steps", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "vocab_size 6500" in err and "6400" in err and "Traceback" not in err


# ---------------------------------------------------------------- malformed data, through the real scripts

def test_malformed_pairs_and_conversations_exit_2_naming_the_line(tmp_path):
    user = {"role": "user", "content": "What is 2 plus 2?"}
    good_pair = {"chosen": [user, {"role": "assistant", "content": "4"}],
                 "rejected": [user, {"role": "assistant", "content": "5"}]}
    good_chat = {"conversations": [user, {"role": "assistant", "content": "<think>\n2+2\n</think>\n<answer>\n4\n</answer>"}]}
    cases = {
        "train_dpo.py": ([good_pair, {"chosen": good_pair["chosen"], "rejected": [user]}], "pairs.jsonl:2: rejected"),
        "train_lora.py": ([good_chat, good_chat, {"conversations": [user, {"role": "assistant", "content": 4}]}],
                          "chats.jsonl:3: conversations[1].content"),
        "train_distill_reason.py": ([good_chat, {"conversations": [{"role": "bot", "content": "hi"}]}],
                                    "reason.jsonl:2: conversations[0].role"),
    }
    names = {"train_dpo.py": "pairs.jsonl", "train_lora.py": "chats.jsonl", "train_distill_reason.py": "reason.jsonl"}
    procs = {}
    for script, (records, _) in cases.items():  # the three runs in parallel: their time is mostly start-up
        path = tmp_path / names[script]
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        procs[script] = subprocess.Popen(
            [sys.executable, script, *TINY, "--data_path", str(path), "--out_dir", str(tmp_path / script),
             "--cache_dir", str(tmp_path / "cache" / script)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    for script, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (script, err)
        assert cases[script][1] in err and "Traceback" not in err, (script, err)


# ---------------------------------------------------------------- reply format measurement

@pytest.mark.parametrize("text", [
    "<think>\n1 + 2 = 3\n</think>\n<answer>\n3\n</answer>",
    "  <think>x</think><answer>y</answer>\n",
    "<think>a\nb</think>\n\n<answer> 7 </answer>",
])
def test_well_formed_replies(text):
    assert is_well_formed(text)


@pytest.mark.parametrize("text", [
    "",
    "3",
    "<think>\n1 + 2 = 3\n</think>",                                  # no answer
    "<answer>\n3\n</answer>",                                         # no think
    "<answer>3</answer><think>1 + 2</think>",                         # wrong order
    "<think>1 + 2 = 3\n<answer>\n3\n</answer>",                       # think not closed
    "<think>1 + 2</think>\n<answer>\n3",                              # answer not closed
    "<think> \n </think>\n<answer>3</answer>",                        # empty think
    "<think>1 + 2</think>\n<answer>\n\n</answer>",                    # empty answer
    "<think>a</think><answer>3</answer><answer>4</answer>",           # a second answer
    "<think>a</think><think>b</think><answer>3</answer>",             # a second think
    "so: <think>a</think><answer>3</answer>",                         # text before
    "<think>a</think><answer>3</answer> and more",                    # text after
    "<think>a</think> because <answer>3</answer>",                    # text between
    "</think>a<think><answer>3</answer>",                             # closing tag first
])
def test_malformed_replies(text):
    assert not is_well_formed(text)


@pytest.mark.parametrize("text, problem", [
    ("<think>a</think><answer>3</answer>", "ok"),
    ("<think>a</think>", "no <answer>"),
    ("<think>a</think><answer>\n<answer>3</answer>", "2 x <answer>"),
    ("<think>a</think>\n<answer>\n</answer>", "empty <answer>"),
    ("<answer>3</answer><think>a</think>", "tags out of order or text outside the blocks"),
])
def test_diagnose_names_the_problem(text, problem):
    assert diagnose(text) == problem


def test_format_share_counts_well_formed_replies(monkeypatch):
    fake = ["<think>a</think><answer>1</answer>", "nope", "<think>b</think>\n<answer>2</answer>", "<think>c</think>"]
    monkeypatch.setattr(generation, "sample_replies", lambda *a, **k: list(fake))
    share, replies = format_share(torch.nn.Linear(1, 1), None, ["p1", "p2"], samples=2)
    assert share == 0.5 and replies == fake


def test_format_share_batches_with_left_padding(base, tok):
    model = load_model(base).eval()
    prompts = ["Add 2, 5 and 7.", "What is the capital of a country with a rather long name, please?"]
    share, replies = format_share(model, tok, prompts, samples=1, temperature=0, max_new_tokens=6)
    alone = [format_share(model, tok, [p], samples=1, temperature=0, max_new_tokens=6)[1][0] for p in prompts]
    assert replies == alone and share == 0.0 and tok.padding_side == "right"
    share, replies = format_share(model, tok, prompts, samples=3, temperature=0.7, max_new_tokens=4, seed=1)
    assert len(replies) == 6 and all(isinstance(r, str) for r in replies) and 0 <= share <= 1


def test_reason_format_reads_prompt_files(tmp_path, demo):
    assert read_prompts(demo["heldout"]) == REASON_HELD_OUT  # only the reason-kind held-out prompts
    assert read_prompts(demo["reason"])[:2] == [json.loads(l)["conversations"][0]["content"]
                                                for l in demo["reason"].read_text().splitlines()[:2]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_prompts(bad)


def test_reason_format_cli_json(demo, base, capsys):
    code, out, _ = run_command("reason_format", ["--model_path", base, "--prompts", demo["heldout"], "--samples", "2",
                                                 "--max_new_tokens", "4", "--json"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["total"] == 8 and len(report["replies"]) == 8 and report["prompts"] == REASON_HELD_OUT
    assert report["share"] == report["well_formed"] / 8


def test_format_reward_and_well_formed_check_agree():
    """The GRPO format reward gives full credit exactly to the replies the evaluation counts as well formed."""
    from trainer.rewards import REWARDS

    replies = [
        "<think>2+5=7, 7+7=14</think><answer>14</answer>",          # well formed
        "  <think>a</think>\n\n<answer>b</answer>\n",              # whitespace around and between: well formed
        "<think>a</think> junk <answer>b</answer>",                 # text between the blocks
        "intro <think>a</think><answer>b</answer>",                 # text before
        "<think>a</think><answer>b</answer> outro",                 # text after
        "<think> </think><answer>b</answer>",                       # empty think
        "<think>a</think><answer>  </answer>",                      # empty answer
        "<think>a</think><think>b</think><answer>c</answer>",       # a tag twice
        "<answer>b</answer><think>a</think>",                       # out of order
        "<think>a</think><answer>b",                                # unclosed
        "<think>a<answer>b</answer></think>",                       # nested
        "plain answer",                                             # no tags
        "",
    ]
    for reply in replies:
        score = REWARDS["format"](reply, None)
        assert (score == 1.0) == is_well_formed(reply), (reply, score, diagnose(reply))
        assert 0.0 <= score <= 1.0
    assert sum(map(is_well_formed, replies)) == 2  # the set covers both answers
    assert REWARDS["format"]("<think>a</think><answer>b", None) == 0.75  # partial credit remains for near misses


def test_a_run_leaves_the_stage_object_clean(tmp_path, demo, cache):
    """Run state (DPO's frozen reference) belongs to the run, not to the module-level stage objects."""
    from trainer import DPO_STAGE, FULL_SFT

    common = ["--dim", "64", "--n_layers", "2", "--n_heads", "4", "--n_kv_heads", "2", "--max_seq_len", "64",
              "--out_dir", tmp_path, "--cache_dir", cache, "--save_interval", "0", "--max_steps", "2",
              "--dtype", "float32", "--batch_size", "4"]
    run(FULL_SFT, [str(a) for a in [*common, "--data_path", demo["sft"], "--from_weight", "none"]])
    run(DPO_STAGE, [str(a) for a in [*common, "--data_path", demo["dpo"]]])
    assert (tmp_path / "rlhf_64" / "config.json").exists()
    assert not hasattr(DPO_STAGE, "reference")
