"""The evaluation tools: perplexity / bits per byte (scripts/eval_ppl.py, trainer/evaluation.py), the per-stage
report (scripts/eval_report.py, and the demo pipeline's measurements built on it) and the lm-evaluation-harness
wrapper with the project's offline task (scripts/eval_harness.py)."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, command, run_command, save_tiny, skip_unless_required, tiny_config
from dataset.demo import IDENTITY_HELD_OUT, NUMBER_WORDS, REASON_HELD_OUT, write_demo_heldout
from inference import harness
from inference.report import demo_summary, measure_demo
from model import MiniMindForCausalLM
from trainer import DPO_STAGE, FULL_SFT, LORA, PRETRAIN, REASON, run
from trainer.evaluation import Score, score_file, token_byte_lengths
from trainer.modelio import load_model, load_tokenizer

TINY = ["--config", "tiny", "--device", "cpu", "--dtype", "float32", "--quiet", "--num_workers", "0"]
SEQ = 128  # the tiny preset's max_seq_len


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok):
    return save_tiny(tmp_path_factory.mktemp("models") / "full_sft_64", tok, initializer_range=0.1)


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory):
    """A LoRA adapter for `base` whose update is not zero (a fresh adapter's B matrix is)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    peft_model = get_peft_model(load_model(base), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.3)
    folder = tmp_path_factory.mktemp("adapters") / "lora" / "lora_test_64"
    peft_model.save_pretrained(folder)
    return folder


def merged(base, adapter):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(base), adapter).merge_and_unload().eval()


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------- perplexity and bits per byte

def test_uniform_logit_model_has_perplexity_equal_to_its_vocab_size(tmp_path, demo, tok, cache, capsys):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(tie_word_embeddings=False))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: the uniform distribution over the vocabulary
    model.save_pretrained(tmp_path / "uniform_64")
    tok.save_pretrained(tmp_path / "uniform_64")
    vocab = model.config.vocab_size
    code, out, err = run_command("eval_ppl", [tmp_path / "uniform_64", "--data", demo["pretrain"], "--data", demo["sft"],
                                              "--data", demo["dpo"], "--max_seq_len", SEQ, "--json", "--no_progress",
                                              "--cache_dir", cache], capsys)
    assert code == 0, err
    results = json.loads(out)
    assert [r["kind"] for r in results] == ["pretrain", "sft", "dpo"]  # read from each file's first record
    for r in results:
        assert r["tokens"] > 100 and r["bytes"] > r["tokens"]
        assert r["perplexity"] == pytest.approx(vocab, rel=1e-5)
        assert r["loss"] == pytest.approx(math.log(vocab), rel=1e-6)
        assert r["bits_per_byte"] == pytest.approx(r["tokens"] * math.log2(vocab) / r["bytes"], rel=1e-6)


def test_bits_per_byte_matches_a_hand_computation(tmp_path, base, tok, cache):
    model = load_model(base).eval()
    window = 16
    texts = ["The capital of France is Paris.", "天空是蓝色的。雪是白色的，煤是黑色的。",
             "mixed 𝔘nicode ✓ and a <think>tag</think>, then a much longer sentence that needs several windows."]
    path = write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in texts])
    nll = tokens = 0
    with torch.no_grad():
        for text in texts:
            ids = [tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"], tok.eos_token_id]
            inputs, targets = ids[:-1], ids[1:]
            for start in range(0, len(inputs), window):  # consecutive windows, each without earlier context
                x, y = inputs[start:start + window], targets[start:start + window]
                logp = torch.log_softmax(model(input_ids=torch.tensor([x])).logits[0].double(), dim=-1)
                nll -= sum(logp[t, label].item() for t, label in enumerate(y))
                tokens += len(y)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)  # the end-of-text targets add no bytes
    score = score_file(model, tok, path, "auto", max_seq_len=window, batch_size=2, cache_dir=cache)
    assert len(texts[2].encode("utf-8")) > 3 * window  # windows split it, some inside a multi-byte character
    assert (score.tokens, score.bytes) == (tokens, n_bytes)
    assert score.nll == pytest.approx(nll, rel=1e-5)
    assert score.bits_per_byte == pytest.approx(nll / (math.log(2) * n_bytes), rel=1e-5)
    assert score.perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-5)


def assistant_turn(content: str) -> tuple[str, str]:
    """(what the prompt opens the turn with, what the assistant writes): a reply with reasoning gets "<think>\n" and
    writes "reasoning\n</think>\n\n" + the answer; one without gets the closed empty block and writes the answer."""
    if "</think>" not in content:
        return "<think>\n\n</think>\n\n", content
    reasoning = content.split("</think>")[0].split("<think>")[-1].strip("\n")
    return "<think>\n", reasoning + "\n</think>\n\n" + content.split("</think>")[-1].lstrip("\n")


def test_conversations_score_the_assistant_replies_and_their_bytes(tmp_path, base, tok, cache):
    model = load_model(base).eval()
    conversations = [
        [("user", "What is 2 plus 2?"), ("assistant", "<think>\n2 + 2 = 4\n</think>\n<answer>\n4\n</answer>")],
        [("user", "你好"), ("assistant", "你好！有什么可以帮你？"), ("user", "Who are you?"), ("assistant", "I am MiniMind.")],
    ]
    path = write_jsonl(tmp_path / "chats.jsonl", [{"conversations": [{"role": r, "content": c} for r, c in conv]}
                                                 for conv in conversations])
    nll = tokens = 0
    with torch.no_grad():
        for conv in conversations:  # the template by hand: what the assistant writes after its prompt carries loss
            ids, scored = [], []
            for role, content in conv:
                if role == "user":
                    parts = [(f"<|im_start|>user\n{content}<|im_end|>\n", False)]
                else:
                    opening, written = assistant_turn(content)
                    parts = [("<|im_start|>assistant\n" + opening, False), (f"{written}<|im_end|>", True), ("\n", False)]
                for text, loss in parts:
                    piece = tok(text, add_special_tokens=False)["input_ids"]
                    ids += piece
                    scored += [loss] * len(piece)
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]])).logits[0].double(), dim=-1)
            for t in range(len(ids) - 1):
                if scored[t + 1]:
                    nll -= logp[t, ids[t + 1]].item()
                    tokens += 1
    n_bytes = sum(len(assistant_turn(c)[1].encode("utf-8")) for conv in conversations for r, c in conv if r == "assistant")
    score = score_file(model, tok, path, "sft", max_seq_len=SEQ, cache_dir=cache)
    assert (score.tokens, score.bytes) == (tokens, n_bytes)
    assert score.nll == pytest.approx(nll, rel=1e-5)


def test_an_export_loaded_by_transformers_scores_the_same(tmp_path, base, tok, cache):
    """score_file and preference_accuracy run a MiniMind model's LM head at the labelled positions only; a model
    without that option (the Llama export, loaded by transformers) gives every position's logits, picked after.
    Both give the same figures."""
    from transformers import AutoModelForCausalLM

    from inference.convert import export_llama
    from trainer.evaluation import preference_accuracy

    llama = AutoModelForCausalLM.from_pretrained(export_llama(base, tmp_path / "llama")).eval()
    minimind = load_model(base).eval()
    assert type(llama).__name__ == "LlamaForCausalLM"
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"conversations": [
        {"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "An answer " * (i + 1)}]}
        for i in range(5)])
    pairs = write_jsonl(tmp_path / "dpo.jsonl", [{
        "chosen": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "yes " * (i + 1)}],
        "rejected": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "no " * (2 * i + 1)}]}
        for i in range(6)])
    ours, theirs = (score_file(m, tok, chats, "sft", max_seq_len=SEQ, batch_size=2, cache_dir=cache)
                    for m in (minimind, llama))
    assert ours.tokens == theirs.tokens > 0 and ours.nll == pytest.approx(theirs.nll, rel=1e-5)
    assert preference_accuracy(minimind, tok, pairs, SEQ, 4) == preference_accuracy(llama, tok, pairs, SEQ, 4)
    # the implicit reward against a reference: the model against a copy of itself ties everywhere (counted wrong)
    assert preference_accuracy(minimind, tok, pairs, SEQ, 4, reference=load_model(base)) == 0.0


def test_token_byte_lengths(tok):
    table = token_byte_lengths(tok)
    assert len(table) == len(tok)
    assert all(table[i] == 0 for i in tok.all_special_ids)
    assert table[tok.convert_tokens_to_ids("<think>")] == len("<think>")
    for text in ["plain ascii", "中文和 emoji 🙂", "\n\t  spaces"]:
        assert int(table[tok(text, add_special_tokens=False)["input_ids"]].sum()) == len(text.encode("utf-8"))


def test_score_ratios():
    s = Score(nll=10 * math.log(4), tokens=10, bytes=20, samples=2)
    assert s.perplexity == pytest.approx(4) and s.bits_per_byte == pytest.approx(1.0)
    assert math.isnan(Score(0.0, 0, 0, 0).perplexity)


def test_eval_ppl_table_json_and_adapters(demo, base, adapter, cache, capsys):
    argv = [base, adapter, "--data", demo["sft"], "--max_seq_len", SEQ, "--no_progress", "--cache_dir", cache]
    code, out, err = run_command("eval_ppl", [*argv, "--json"], capsys)
    assert code == 0, err
    plain, adapted = json.loads(out)
    assert (plain["model"], adapted["model"]) == ("full_sft_64", "full_sft_64+lora_test_64")
    assert adapted["adapter"] == str(adapter) and adapted["model_path"] == str(base)  # base read from the adapter
    expected = score_file(merged(base, adapter), load_tokenizer(base), demo["sft"], "sft", SEQ, cache_dir=cache)
    assert adapted["perplexity"] == pytest.approx(expected.perplexity, rel=1e-5)
    assert abs(adapted["loss"] - plain["loss"]) > 1e-3
    assert (adapted["tokens"], adapted["bytes"]) == (plain["tokens"], plain["bytes"])

    code, out, _ = run_command("eval_ppl", argv, capsys)
    header, _, *rows = out.strip().splitlines()
    assert code == 0 and header.split() == ["model", "data", "kind", "tokens", "bytes", "loss", "ppl", "bpb"]
    assert [r.split()[0] for r in rows] == ["full_sft_64", "full_sft_64+lora_test_64"]
    assert rows[0].split()[6] == f"{plain['perplexity']:.3f}"


@pytest.mark.parametrize("model, data, expected", [
    ("out_x/rlhf_64", "DATA", ["out_x/rlhf_64 not found", "python train_dpo.py"]),
    ("out_x/lora/lora_medical_64", "DATA", ["out_x/lora/lora_medical_64 not found",
                                            "python train_lora.py --lora_name lora_medical"]),
    ("BASE", "missing.jsonl", ["missing.jsonl not found", "scripts/make_demo_data.py"]),
])
def test_eval_ppl_missing_inputs_are_one_line_errors(tmp_path, demo, base, capsys, model, data, expected):
    model = str(base) if model == "BASE" else str(tmp_path / model)
    data = str(demo["sft"]) if data == "DATA" else str(tmp_path / data)
    code, out, err = run_command("eval_ppl", [model, "--data", data, "--no_progress"], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and all(e in err for e in expected), err


@pytest.mark.parametrize("name", ["eval_ppl", "eval_report", "eval_harness"])
def test_every_flag_is_explained(name):
    parser = command(name)["build_parser"]()
    for action in parser._actions:
        assert action.help, action.option_strings or action.dest
    if name == "eval_ppl":
        text = " ".join(parser.format_help().split())
        assert "UTF-8 bytes of the scored text" in text and "count 0 bytes" in text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_and_cuda_give_the_same_numbers(demo, base, cache):
    tok = load_tokenizer(base)
    cpu = score_file(load_model(base), tok, demo["sft"], "sft", SEQ, cache_dir=cache)
    gpu = score_file(load_model(base).cuda(), tok, demo["sft"], "sft", SEQ, cache_dir=cache)
    assert (gpu.tokens, gpu.bytes) == (cpu.tokens, cpu.bytes)
    assert gpu.nll == pytest.approx(cpu.nll, rel=1e-4)


# ---------------------------------------------------------------- the per-stage report on a tiny pipeline

@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, demo, cache):
    """pretrain → full_sft → LoRA identity → DPO → reason on the tiny preset, a few steps each, as
    scripts/demo_pipeline.py runs them (its stage settings, fewer steps), plus the demo world's held-out files."""
    out = tmp_path_factory.mktemp("pipeline")
    common = [*TINY, "--out_dir", out, "--cache_dir", cache, "--save_interval", "0", "--max_steps", "10"]
    for stage, data, flags in [
        (PRETRAIN, demo["pretrain"], ["--learning_rate", "3e-3", "--batch_size", "16"]),
        (FULL_SFT, demo["sft"], ["--learning_rate", "2e-3", "--batch_size", "16"]),
        (LORA, demo["lora_identity"], ["--learning_rate", "1e-2", "--batch_size", "8", "--lora_rank", "8"]),
        (DPO_STAGE, demo["dpo"], ["--learning_rate", "2e-4", "--batch_size", "8"]),
        (REASON, demo["reason"], ["--learning_rate", "2e-3", "--batch_size", "16"]),
    ]:
        run(stage, [*common, "--data_path", data, *flags])
    heldout = write_demo_heldout(out / "heldout")
    return out, heldout


def test_report_on_the_tiny_pipeline(pipeline, tok, cache, capsys):
    out, heldout = pipeline
    code, stdout, err = run_command("eval_report", ["--out_dir", out, "--device", "cpu", "--cache_dir", cache,
                                                    "--no_progress", "--samples", "2", "--max_new_tokens", "24"], capsys)
    assert code == 0, err
    report = json.loads((out / "eval" / "report.json").read_text(encoding="utf-8"))
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["pretrain", "full_sft", "full_sft + lora_identity", "rlhf", "reason"]
    assert report["dim"] == 64 and report["settings"]["max_seq_len"] == SEQ  # from the runs' args.json
    markdown = (out / "eval" / "report.md").read_text(encoding="utf-8")
    assert markdown.strip() in stdout
    for name, row in rows.items():
        assert f"| {name} |" in markdown
        m = row["metrics"]
        assert {"text_ppl", "text_bpb", "chat_ppl", "chat_bpb", "pref_acc"} <= set(m)
        assert ("dpo_reward_acc" in m) == (name == "rlhf")
        assert ({"well_formed", "identity"} <= set(m)) == (name != "pretrain")
        assert 1 < m["text_ppl"] < 6400 and 1 < m["chat_ppl"] < 6400
        if name != "pretrain":
            answers = row["details"]["identity_answers"]
            assert [p for p, _ in answers] == IDENTITY_HELD_OUT
            assert m["identity"] == sum("MiniMind" in a for _, a in answers) / len(answers)
            assert len(row["details"]["reason_replies"]) == 2 * len(REASON_HELD_OUT)
    # what training bought, robust after a few steps: pretraining beats the uniform guess, SFT the chat tokens
    assert rows["pretrain"]["metrics"]["text_ppl"] < 0.85 * 6400
    assert rows["full_sft"]["metrics"]["chat_ppl"] < 0.7 * rows["pretrain"]["metrics"]["chat_ppl"]
    bought = {(b["model"], b["measure"]): b for b in report["bought"]}
    assert bought["pretrain", "text_ppl"]["before"] == 6400 and bought["pretrain", "text_ppl"]["before_model"] == "uniform guess"
    assert bought["full_sft", "chat_ppl"]["before"] == rows["pretrain"]["metrics"]["chat_ppl"]
    assert bought["reason", "well_formed"]["before"] == rows["rlhf"]["metrics"]["well_formed"]
    png = (out / "eval" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000

    # the DPO stage's own accuracy statistic (its reference = the SFT model) agrees with the implicit-reward figure
    from dataset import DPOCollator, build_dataset
    from trainer.args import parse_args
    from trainer.distributed import DistInfo
    from trainer.stages import DPO

    stage = DPO()
    args = parse_args(stage, [*TINY])
    stage.setup(args, load_model(out / "full_sft_64"), tok, DistInfo())
    pairs = build_dataset("dpo", heldout["dpo"], tok, SEQ, cache_dir=cache)
    batch = DPOCollator(tok.pad_token_id, SEQ)([pairs[i] for i in range(len(pairs))])
    with torch.no_grad():
        _, sums = stage.loss(load_model(out / "rlhf_64").eval(), batch, args)
    assert rows["rlhf"]["metrics"]["dpo_reward_acc"] == pytest.approx(sums["accuracy"].item() / batch["num_items"])

    # the same chat perplexity from eval_ppl
    code, stdout, err = run_command("eval_ppl", [out / "full_sft_64", "--data", heldout["chat"], "--max_seq_len", SEQ,
                                                 "--json", "--no_progress", "--cache_dir", cache], capsys)
    assert json.loads(stdout)[0]["perplexity"] == pytest.approx(rows["full_sft"]["metrics"]["chat_ppl"], rel=1e-9)


def test_demo_pipeline_measures_through_the_report(pipeline, capsys):
    out, heldout = pipeline
    report, evaluation = measure_demo(out, 64, heldout, "lora_identity", SEQ, seed=42)
    rows = {r["name"]: r["metrics"] for r in evaluation["rows"]}
    assert report["dpo"]["before"] == rows["full_sft"]["pref_acc"] and report["dpo"]["after"] == rows["rlhf"]["pref_acc"]
    assert report["dpo"]["reward_accuracy"] == rows["rlhf"]["dpo_reward_acc"]
    assert report["reason"]["before"] == rows["rlhf"]["well_formed"] and report["reason"]["after"] == rows["reason"]["well_formed"]
    assert report["identity"]["lora_share"] == rows["full_sft + lora_identity"]["identity"]
    assert [p for p, _ in report["identity"]["lora"]] == IDENTITY_HELD_OUT
    assert set(report["chats"]) == {"pretrain", "full_sft", "rlhf", "reason"}
    # tool use and the thinking switch: before (rlhf) and after (reason) on the held-out tool file
    tools = report["tools"]
    assert tools["chat_ppl"]["ratio"] == pytest.approx(rows["reason"]["chat_ppl"] / rows["full_sft"]["chat_ppl"])
    for key in ("before", "after"):
        tasks = tools[key]["tasks"]
        assert len(tasks) == sum(1 for _ in open(heldout["tools"], encoding="utf-8"))
        valid = [t["valid_calls"] for t in tasks if "valid_calls" in t]
        assert tools[key]["measures"]["valid_calls"] == sum(valid) / len(valid)
    adapter = report["adapter"]  # what the identity adapter costs, from the same evaluation rows
    assert adapter["chat_ppl_on"] == rows["full_sft + lora_identity"]["chat_ppl"] and adapter["chat_ppl_off"] == rows["full_sft"]["chat_ppl"]
    assert adapter["fact_acc_off"] == rows["full_sft"]["fact_acc"] and adapter["fact_acc_on"] == rows["full_sft + lora_identity"]["fact_acc"]
    print(demo_summary({**report, "lora_name": "lora_identity"}, {"total": 1.0}, out, 64))
    printed = capsys.readouterr().out
    assert "implicit-reward accuracy" in printed and "Tool use and the thinking switch" in printed
    assert "adapter off → on" in printed


def test_report_adapters_facts_and_sentences(pipeline, cache, capsys):
    """Every adapter's cost (base chat ppl and facts, adapter off and on) and target (identity, or domain ppl with
    --adapter_data), the exact-answer fact and sum accuracies, and identity answers checked word by word."""
    from dataset.demo import words
    from dataset.prompts import read_questions
    from inference.generation import build_prompt, generate
    from inference.loading import load_model as load_with_adapter

    out, heldout = pipeline
    code, stdout, err = run_command("eval_report", [
        "--out_dir", out, "--device", "cpu", "--cache_dir", cache, "--no_progress", "--samples", "1",
        "--max_new_tokens", "8", "--adapter_data", f"lora_identity={heldout['chat']}",
        "--report_dir", out / "eval_adapters"], capsys)
    assert code == 0, err
    report = json.loads((out / "eval_adapters" / "report.json").read_text(encoding="utf-8"))
    rows = {r["name"]: r for r in report["rows"]}
    sft, lora = rows["full_sft"], rows["full_sft + lora_identity"]

    # facts and sums: the replies are the greedy replies, and the share counts exact answer sentences
    facts = read_questions(heldout["prompts"], "fact")
    assert len(facts) >= 20 and len(read_questions(heldout["prompts"], "sum")) > 0
    for row in (sft, lora):
        answers = row["details"]["fact_answers"]
        assert [(p, a) for p, _, a in answers] == facts
        assert row["metrics"]["fact_acc"] == sum(r == a for _, r, a in answers) / len(answers)
    model, tok = load_with_adapter(lora["path"], lora["adapter"])
    prompt, reply, _ = lora["details"]["fact_answers"][0]
    expected = generate(model, tok, build_prompt(tok, [{"role": "user", "content": prompt}]), max_new_tokens=32,
                        temperature=0.0, top_p=1.0).strip()
    assert reply == expected

    # identity as sentence: the name, and only words of the training data (read here from the runs' data files)
    vocabulary = set()
    for args_file in (out / "runs").glob("**/args.json"):
        vocabulary |= set(words(open(json.loads(args_file.read_text())["data_path"], encoding="utf-8").read()))
    assert report["vocabulary_size"] == len(vocabulary)
    def clean(answer):
        rest = [w for w in words(answer) if w != "minimind"]
        mixed = any(w.isascii() for w in rest) and any(not w.isascii() for w in rest)
        return "MiniMind" in answer and bool(words(answer)) and set(words(answer)) <= vocabulary and not mixed

    clean = [clean(a) for _, a in lora["details"]["identity_answers"]]
    assert lora["metrics"]["identity_clean"] == sum(clean) / len(clean)

    # the adapter line: off = the base's own row, on = the adapter's row; domain ppl on and off from eval_ppl
    (line,) = report["adapters"]
    assert line["chat_ppl_off"] == sft["metrics"]["chat_ppl"] and line["chat_ppl_on"] == lora["metrics"]["chat_ppl"]
    assert line["fact_acc_off"] == sft["metrics"]["fact_acc"] and line["fact_acc_on"] == lora["metrics"]["fact_acc"]
    assert line["target"] == "domain_ppl"
    code, ppl_out, err = run_command("eval_ppl", [out / "full_sft_64", lora["adapter"], "--data", heldout["chat"],
                                                  "--max_seq_len", SEQ, "--json", "--no_progress", "--cache_dir", cache], capsys)
    plain, adapted = json.loads(ppl_out)
    assert line["target_off"] == pytest.approx(plain["perplexity"], rel=1e-6)
    assert line["target_on"] == pytest.approx(adapted["perplexity"], rel=1e-5)
    markdown = (out / "eval_adapters" / "report.md").read_text(encoding="utf-8")
    assert "## Adapters" in markdown and "| full_sft + lora_identity |" in markdown.split("## Adapters")[1]


def test_report_without_models_or_data_names_the_command(tmp_path, pipeline, capsys):
    code, out, err = run_command("eval_report", ["--out_dir", tmp_path / "nothing", "--heldout_dir", pipeline[1]["text"].parent],
                              capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "nothing" in err and "python scripts/demo_pipeline.py" in err
    code, out, err = run_command("eval_report", ["--out_dir", pipeline[0], "--heldout_dir", tmp_path / "none"], capsys)
    assert code == 2 and "--write_demo_heldout" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- lm-evaluation-harness

def test_local_task_items_are_well_formed():
    items = harness.world_items()
    assert len(items) == 60 and items == harness.world_items()  # deterministic
    for item in items:
        assert len(item["choices"]) == 4 == len(set(item["choices"]))
        assert 0 <= item["answer"] < 4
    answers = {item["context"]: item["choices"][item["answer"]] for item in items}
    assert answers["The capital of France is"] == " Paris" and answers["法国的首都是"] == "巴黎"
    assert answers["The sky is"] == " blue" and answers["雪是"] == "白色的"
    sums = [(c.split(), a) for c, a in answers.items() if " plus " in c]
    assert len(sums) == 20
    for (a, _, b, _), answer in sums:
        assert answer == " " + NUMBER_WORDS[NUMBER_WORDS.index(a.lower()) + NUMBER_WORDS.index(b)]


@torch.no_grad()
def hand_loglikelihoods(model, tok, items) -> list[list[float]]:
    """Per item, each choice's log-likelihood as lm-eval computes it for multiple choice: the tokens of the whole
    context+choice string minus the context's tokens, scored after the context (in float64 here)."""
    scores = []
    for item in items:
        context_ids = tok(item["context"], add_special_tokens=False)["input_ids"]
        row = []
        for choice in item["choices"]:
            whole = tok(item["context"] + choice, add_special_tokens=False)["input_ids"]
            continuation = whole[len(context_ids):]
            logp = torch.log_softmax(model(input_ids=torch.tensor([whole[:-1]])).logits[0].double(), dim=-1)
            start = len(whole) - 1 - len(continuation)
            row.append(sum(logp[start + k, t].item() for k, t in enumerate(continuation)))
        scores.append(row)
    return scores


def accuracy_bounds(scores, items, tie=1e-4) -> tuple[float, float]:
    """Accuracy when near-ties (choices within `tie` nats of the best, where lm-eval's float32 may pick either) all
    go against the answer, and when they all go for it."""
    low = high = 0
    for row, item in zip(scores, items):
        best_other = max(s for i, s in enumerate(row) if i != item["answer"])
        low += row[item["answer"]] > best_other + tie
        high += row[item["answer"]] >= best_other - tie
    return low / len(items), high / len(items)


def test_harness_runs_the_local_task_offline_on_a_lora_model(tmp_path, base, adapter):
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        skip_unless_required("lm-eval is an optional extra: pip install -r requirements-eval.txt", "REQUIRE_EVAL")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))}
    env.update(OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf_home"))  # an empty cache: nothing downloaded before
    result = subprocess.run(
        [sys.executable, "scripts/eval_harness.py", "--model_path", str(base), "--lora_name", str(adapter),
         "--task_dir", str(tmp_path / "tasks"), "--device", "cpu", "--output", str(tmp_path / "results.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "minimind_world" in result.stdout and "acc" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert results["n-samples"]["minimind_world"]["effective"] == 60
    assert results["model"]["lora"] == str(adapter)
    acc = results["results"]["minimind_world"]["acc,none"]
    items = [json.loads(l) for l in (tmp_path / "tasks" / "minimind_world.jsonl").read_text(encoding="utf-8").splitlines()]
    with_adapter = hand_loglikelihoods(merged(base, adapter), load_tokenizer(base), items)
    low, high = accuracy_bounds(with_adapter, items)
    assert low - 1e-9 <= acc <= high + 1e-9 and high - low <= 3 / 60, (low, acc, high)  # few near-ties, if any
    without = hand_loglikelihoods(load_model(base).eval(), load_tokenizer(base), items)
    assert max(abs(a - b) for x, y in zip(with_adapter, without) for a, b in zip(x, y)) > 1e-2  # the adapter counted


def test_harness_errors_are_one_line(tmp_path, capsys):
    code, out, err = run_command("eval_harness", ["--model_path", tmp_path / "nope", "--task_dir", tmp_path / "t"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nope" in err
    code, out, err = run_command("eval_harness", ["--model_mode", "2", "--out_dir", tmp_path, "--dim", "64",
                                                  "--task_dir", tmp_path / "t"], capsys)
    assert code == 2 and "python train_dpo.py" in err and len(err.strip().splitlines()) == 1
    code, out, _ = run_command("eval_harness", ["--write_task", "--task_dir", tmp_path / "t"], capsys)
    assert code == 0 and (tmp_path / "t" / "minimind_world.yaml").exists()
