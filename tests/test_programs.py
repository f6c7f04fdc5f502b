"""The commands the README shows, run as programs (a fresh interpreter, argv, exit code), on tiny models:
train_distillation.py, train_grpo.py, convert_model.py's three conversions, and serve_openai_api.py --model_path,
whose sampling settings (temperature, top-p, repetition penalty) must each change the answer as they should."""
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest
import torch

from conftest import ROOT, save_tiny

TINY = ["--config", "tiny", "--device", "cpu", "--dtype", "float32", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def program(*args, timeout=300):
    result = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args[0]} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok):
    return save_tiny(tmp_path_factory.mktemp("base") / "base_64", tok)


def _rows(out, name):
    return [json.loads(l) for l in (out / "runs" / name / "metrics.jsonl").read_text().splitlines()]


def test_train_distillation_program(tmp_path, demo, base, tok):
    teacher = save_tiny(tmp_path / "teacher", tok, seed=1, hidden_size=32, num_hidden_layers=1)
    program("train_distillation.py", *TINY, "--data_path", demo["sft"], "--from_weight", base, "--teacher", teacher,
            "--out_dir", tmp_path / "out", "--cache_dir", tmp_path / "cache", "--max_steps", "2", "--batch_size", "4",
            "--log_interval", "1", "--save_interval", "0", "--alpha", "0.3")
    rows = _rows(tmp_path / "out", "distill_64")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["loss"] == pytest.approx(0.3 * r["ce"] + 0.7 * 4.0 * r["kl"], rel=1e-4) for r in rows)
    assert (tmp_path / "out" / "distill_64" / "model.safetensors").exists()


def test_train_grpo_program(tmp_path, demo, base):
    program("train_grpo.py", *TINY, "--data_path", demo["reason"], "--from_weight", base, "--out_dir", tmp_path,
            "--max_steps", "2", "--batch_size", "2", "--num_generations", "4", "--max_new_tokens", "8",
            "--log_interval", "1", "--save_interval", "0")
    rows = _rows(tmp_path, "grpo_64")
    assert [r["step"] for r in rows] == [1, 2]
    assert {"reward_format", "reward_accuracy", "kl", "completion_length"} <= rows[0].keys()
    assert all(0 < r["completion_length"] <= 8 for r in rows)
    assert (tmp_path / "grpo_64" / "model.safetensors").exists()


def test_convert_model_program(tmp_path, base, tok):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from test_convert import HEADS, VOCAB, minimind2_state, reference_logits

    ids = torch.tensor([tok("The capital of France is Paris.")["input_ids"]])
    minimind = AutoModelForCausalLM.from_pretrained(base).eval()
    with torch.no_grad():
        expected = minimind(ids).logits

    program("scripts/convert_model.py", "export-llama", base, tmp_path / "llama")
    llama = LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    with torch.no_grad():
        torch.testing.assert_close(llama(ids).logits, expected, atol=1e-4, rtol=1e-4)

    torch.manual_seed(0)
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    for name, p in adapted.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained-looking adapter (fresh ones start at zero)
    adapted.save_pretrained(tmp_path / "adapter")
    program("scripts/convert_model.py", "merge-lora", base, tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "adapter").eval()(ids).logits
        torch.testing.assert_close(merged(ids).logits, with_adapter, atol=1e-4, rtol=1e-4)
        assert (with_adapter - expected).abs().max() > 1e-2  # the adapter matters

    state = minimind2_state(use_moe=False)
    torch.save(state, tmp_path / "full_sft_64.pth")
    program("scripts/convert_model.py", "import-minimind2", tmp_path / "full_sft_64.pth", tmp_path / "imported",
            "--n_heads", HEADS)
    imported = AutoModelForCausalLM.from_pretrained(tmp_path / "imported").eval()
    small_ids = ids % VOCAB
    with torch.no_grad():
        torch.testing.assert_close(imported(small_ids).logits, reference_logits(state, small_ids, False), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- the server, and what sampling settings do

def hand_greedy(model, prompt_ids, n, eos, penalty=1.0):
    """Greedy decoding written out: full forward each step, argmax of the last position. With a repetition
    penalty, every token already in the sequence (prompt included) has its logit divided by the penalty when
    positive and multiplied by it when negative (CTRL's rule, which transformers applies)."""
    ids = list(prompt_ids)
    new = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids])).logits[0, -1].double()
            if penalty != 1.0:
                for t in set(ids):
                    logits[t] = logits[t] / penalty if logits[t] > 0 else logits[t] * penalty
            token = int(logits.argmax())
            if token in eos:
                break
            ids.append(token)
            new.append(token)
    return new


@pytest.fixture(scope="module")
def server(tmp_path_factory, tok):
    # weights at std 0.1: the greedy answer starts varied, then repeats one token (something for a penalty to change)
    folder = save_tiny(tmp_path_factory.mktemp("served") / "chatty", tok, initializer_range=0.1)
    proc = subprocess.Popen([sys.executable, "scripts/serve_openai_api.py", "--model_path", str(folder), "--port", "0",
                             "--device", "cpu", "--quiet", "--no_web"], cwd=ROOT, env=ENV, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, start_new_session=True)
    match = None
    try:
        seen = []
        for line in proc.stderr:  # "serving chatty at http://127.0.0.1:PORT/v1 ..." once it listens
            seen.append(line)
            match = re.search(r"serving .* at (http://\S+)/v1", line)
            if match:
                break
        assert match, f"no 'serving' line in: {''.join(seen)}"
        yield match.group(1), folder
    finally:
        proc.send_signal(signal.SIGTERM)  # the documented clean stop
        try:
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)


def chat(url, **body):
    body = {"model": "chatty", "messages": [{"role": "user", "content": "Tell me about the sky."}], "max_tokens": 12, **body}
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"]


def test_server_program_and_sampling_settings(server, tok):
    from transformers import AutoModelForCausalLM

    url, folder = server
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "Tell me about the sky."}], tokenize=False,
                                     add_generation_prompt=True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    eos = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}

    greedy_ids = hand_greedy(model, prompt_ids, 12, eos)
    greedy = chat(url, temperature=0)
    assert greedy == tok.decode(greedy_ids, skip_special_tokens=True)
    assert chat(url, temperature=0) == greedy
    assert len(set(greedy_ids)) < len(greedy_ids)  # it repeats itself ...

    penalised_ids = hand_greedy(model, prompt_ids, 12, eos, penalty=1.3)
    penalised = chat(url, temperature=0, repetition_penalty=1.3)
    assert penalised == tok.decode(penalised_ids, skip_special_tokens=True)
    assert penalised != greedy and len(set(penalised_ids)) > len(set(greedy_ids))  # ... and the penalty stops that

    hot = [chat(url, temperature=1.5, top_p=1.0, seed=s) for s in (1, 2, 3)]
    assert chat(url, temperature=1.5, top_p=1.0, seed=1) == hot[0]  # seeded sampling is reproducible
    assert len(set(hot)) > 1 and any(h != greedy for h in hot)  # temperature samples
    # a nucleus smaller than the top token's probability leaves only that token: greedy again, at any temperature
    assert all(chat(url, temperature=1.5, top_p=1e-6, seed=s) == greedy for s in (1, 2))


# ---------------------------------------------------------------- CI's check of the demo's figures

def test_ci_demo_check_passes_the_readme_figures_and_fails_rot(tmp_path):
    # the figures the README states for the demo
    tools = {"measures": {"valid_calls": 0.92, "thinking_on": 1.0, "thinking_off": 1.0}}
    readme = {"report": {"identity": {"base_share": 0.0, "lora_share": 0.9},
                         "adapter": {"identity_sentence": 0.9, "fact_acc_off": 0.95, "fact_acc_on": 0.98,
                                     "chat_ppl_ratio": 1.0},
                         "dpo": {"before": 0.77, "after": 0.84}, "reason": {"before": 0.0, "after": 1.0},
                         "tools": {"after": tools, "chat_ppl": {"ratio": 1.002}}},
              "seconds": {"total": 418.0}}
    good = tmp_path / "good.json"
    good.write_text(json.dumps(readme))
    result = subprocess.run([sys.executable, ".ci/check_demo.py", str(good)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "FAIL" not in result.stdout, result.stdout

    readme["report"]["dpo"]["after"] = 0.6  # DPO stopped teaching: below its band, and no gain over SFT
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(readme))
    result = subprocess.run([sys.executable, ".ci/check_demo.py", str(bad)], cwd=ROOT, capture_output=True, text=True)
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert result.returncode == 1 and len(failed) == 2 and all("DPO" in line for line in failed), result.stdout

    result = subprocess.run([sys.executable, ".ci/check_demo.py", str(tmp_path / "absent.json")], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "absent.json" in result.stderr
