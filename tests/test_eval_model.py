"""eval_model.py: scripted runs as a subprocess (answers printed, exit 0, never waiting for typing), the
one-line missing-checkpoint error, LoRA adapters, and the prompt each kind of model gets."""
import subprocess
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer

import eval_model
from conftest import ROOT, tiny_config
from model import TOKENIZER_DIR, MiniMindForCausalLM
from inference.checkpoints import resolve_lora_path, resolve_model_path
from inference.generation import build_prompt, generate
from inference.loading import load_model

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # from peft

DIM = 64  # tiny_config's hidden size: the folders are <stage>_64
MAX_NEW = 8


def tiny_random_model(seed=0):
    """A tiny model with large random weights, so greedy answers differ from prompt to prompt."""
    torch.manual_seed(seed)
    return MiniMindForCausalLM(tiny_config(initializer_range=0.3)).eval()


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    """out/full_sft_64, out/pretrain_64 and the adapter out/lora/lora_test_64, as the training scripts lay them out."""
    out = tmp_path_factory.mktemp("out")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    model = tiny_random_model()
    for stage in ("full_sft", "pretrain"):
        model.save_pretrained(out / f"{stage}_{DIM}")
        tokenizer.save_pretrained(out / f"{stage}_{DIM}")
    peft_model = get_peft_model(tiny_random_model(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():  # peft starts B at zero (a no-op adapter); give it weight so it changes the outputs
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(out / "lora" / f"lora_test_{DIM}")
    return out


def greedy(model, tokenizer, prompt_text, chat=True):
    return generate(model, tokenizer, build_prompt(tokenizer, [{"role": "user", "content": prompt_text}], chat),
                    max_new_tokens=MAX_NEW, temperature=0)


def run_cli(*args, stdin_text=None, keep_stdin_open=False, timeout=180):  # a hang detector: generous, the machine may be busy
    """Run eval_model.py; with keep_stdin_open the child's stdin is a pipe that never closes, so reading it
    would hang until the timeout."""
    cmd = [sys.executable, str(ROOT / "eval_model.py"), *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, encoding="utf-8")
    try:
        if keep_stdin_open:
            proc.wait(timeout=timeout)
            out, err = proc.stdout.read(), proc.stderr.read()
        else:
            out, err = proc.communicate(stdin_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"eval_model.py did not exit within {timeout}s (waiting for input?)")
    finally:
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f and not f.closed:
                f.close()
    return proc.returncode, out, err


def test_prompt_flags_print_answers_and_exit_without_reading_stdin(out_dir):
    model, tokenizer = load_model(out_dir / f"full_sft_{DIM}")
    prompts = ["hi", "你是谁？"]
    expected = [greedy(model, tokenizer, p) for p in prompts]
    assert expected[0] != expected[1] and all(e.strip() for e in expected)
    code, out, err = run_cli("--model_path", out_dir / f"full_sft_{DIM}", "--prompt", prompts[0], "--prompt", prompts[1],
                             "--max_new_tokens", MAX_NEW, "--temperature", 0, keep_stdin_open=True)
    assert code == 0, err
    for prompt, answer in zip(prompts, expected):
        assert f"👶: {prompt}" in out and f"🤖: {answer}" in out
    assert "Traceback" not in err


def test_prompts_on_stdin_with_mode_lookup(out_dir):
    model, tokenizer = load_model(out_dir / f"full_sft_{DIM}")
    code, out, err = run_cli("--out_dir", out_dir, "--dim", DIM, "--model_mode", 1, "--max_new_tokens", MAX_NEW,
                             "--temperature", 0, "--no-stream", stdin_text="hi\n\nhello there\n")
    assert code == 0, err
    assert out.count("👶: ") == 2  # the blank line is skipped
    assert f"🤖: {greedy(model, tokenizer, 'hi')}" in out
    assert f"🤖: {greedy(model, tokenizer, 'hello there')}" in out


@pytest.mark.parametrize("args, command", [
    (["--model_mode", 2], f"python train_dpo.py --dim {DIM}"),
    (["--model_mode", 3, "--use_moe"], f"python train_distill_reason.py --dim {DIM} --use_moe"),
])
def test_missing_checkpoint_is_one_line_naming_the_train_command(tmp_path, args, command):
    code, out, err = run_cli("--out_dir", tmp_path, "--dim", DIM, *args, "--prompt", "hi")
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and "not found" in err and command in err and "Traceback" not in err
    assert out == ""


def test_missing_lora_names_train_lora(out_dir):
    with pytest.raises(eval_model.ModelNotFound, match=f"python train_lora.py --lora_name lora_nope .*--dim {DIM}"):
        resolve_lora_path("lora_nope", out_dir, DIM)
    with pytest.raises(eval_model.ModelNotFound, match="no config.json"):
        resolve_model_path(out_dir / "lora")


def test_lora_adapter_changes_the_answers(out_dir):
    base, tokenizer = load_model(out_dir / f"full_sft_{DIM}")
    adapter = resolve_lora_path("lora_test", out_dir, DIM)
    assert adapter == out_dir / "lora" / f"lora_test_{DIM}"
    tuned, _ = load_model(out_dir / f"full_sft_{DIM}", adapter)
    assert greedy(base, tokenizer, "hi") != greedy(tuned, tokenizer, "hi")

    code, out, err = run_cli("--out_dir", out_dir, "--dim", DIM, "--lora_name", "lora_test", "--prompt", "hi",
                             "--max_new_tokens", MAX_NEW, "--temperature", 0)
    assert code == 0, err
    assert f"🤖: {greedy(tuned, tokenizer, 'hi')}" in out
    assert "LoRA" in err  # the loading line names the adapter


def test_pretrain_mode_continues_text_without_chat_template(out_dir, capsys):
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    messages = [{"role": "user", "content": "中国的首都是"}]
    assert build_prompt(tokenizer, messages, chat=False) == "<|im_start|>中国的首都是"
    chat_prompt = build_prompt(tokenizer, messages, chat=True)
    assert chat_prompt.startswith("<|im_start|>user\n中国的首都是<|im_end|>") and chat_prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # thinking off

    model, tokenizer = load_model(out_dir / f"pretrain_{DIM}")
    args = eval_model.parse_args(["--model_mode", "0", "--temperature", "0", "--max_new_tokens", str(MAX_NEW)])
    session = eval_model.Session(model, tokenizer, args)
    assert not session.chat
    answer = session.answer("中国的首都是")
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer.encode("中国的首都是", add_special_tokens=False)])
    reference = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False)
    assert answer == tokenizer.decode(reference[0, ids.shape[1]:], skip_special_tokens=True)
    assert f"🤖: {answer}" in capsys.readouterr().out


def test_history_keeps_the_last_messages(out_dir, capsys):
    model, tokenizer = load_model(out_dir / f"full_sft_{DIM}")
    args = eval_model.parse_args(["--temperature", "0", "--max_new_tokens", "4", "--history_cnt", "2", "--no-stream"])
    session = eval_model.Session(model, tokenizer, args)
    first = session.answer("one")
    session.answer("two")
    assert [m["content"] for m in session.messages_for("three")] == ["two", session.history[-1]["content"], "three"]
    assert session.history[:2] == [{"role": "user", "content": "one"}, {"role": "assistant", "content": first}]
    single = eval_model.Session(model, tokenizer, eval_model.parse_args(["--history_cnt", "0"]))
    single.history = session.history
    assert single.messages_for("x") == [{"role": "user", "content": "x"}]


def test_reasoning_display():
    text = "<think>let me see</think><answer>42</answer>"
    assert eval_model.ReasonFormatter(styled=False)(text) == text  # pipes and files get the raw tags
    styled = eval_model.ReasonFormatter(styled=True)(text)
    assert styled == f"{eval_model.DIM}[think] let me see [/think]{eval_model.RESET}42"


def test_builtin_prompts_follow_mode_and_lora():
    prompts = lambda *a: eval_model.builtin_prompts(eval_model.parse_args(list(a)))  # noqa: E731
    assert prompts("--model_mode", "0") == eval_model.CONTINUATION_PROMPTS
    assert prompts("--model_mode", "3") == eval_model.REASON_PROMPTS
    assert prompts("--model_mode", "1") == eval_model.CHAT_PROMPTS
    assert "你是谁？" in prompts("--lora_name", "lora_identity")
    assert prompts("--lora_name", "lora_medical") == eval_model.LORA_PROMPTS["lora_medical"]
    assert prompts("--model_mode", "3", "--tools", "all") == eval_model.TOOL_PROMPTS


def test_help_lists_the_model_modes(capsys):
    with pytest.raises(SystemExit):
        eval_model.parse_args(["--help"])
    help_text = capsys.readouterr().out
    for line in ("0  pretrain", "1  full_sft", "2  rlhf", "3  reason", "4  grpo", "5  distill"):
        assert line in help_text


# ---------------------------------------------------------------- the thinking switch and the tool loop

def test_tools_and_thinking_flags():
    args = eval_model.parse_args(["--tools", "all", "--max_tool_calls", "2", "--think"])
    assert args.toolbox.names == ["calculate", "convert_units", "get_capital", "get_colour"] and args.open_thinking
    args = eval_model.parse_args(["--tools", "calculate,get_capital", "--no-open_thinking"])
    assert args.toolbox.names == ["calculate", "get_capital"] and args.open_thinking is False
    args = eval_model.parse_args([])
    assert not args.toolbox and args.open_thinking is None


@pytest.mark.parametrize("argv, message", [
    (["--tools", "calculate,nope"], "--tools: unknown built-in tool nope"),
    (["--tools", "missing.json"], "--tools: missing.json: cannot read"),
    (["--max_tool_calls", "-1"], "--max_tool_calls must be >= 0"),
])
def test_bad_tool_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        eval_model.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_tool_loop_prints_calls_and_results_and_keeps_the_exchange(out_dir, capsys, monkeypatch):
    """A scripted reply stands in for the model: a call, then an answer; the call runs and is printed."""
    model, tokenizer = load_model(out_dir / f"full_sft_{DIM}")
    args = eval_model.parse_args(["--tools", "all", "--history_cnt", "10", "--no-stream"])
    session = eval_model.Session(model, tokenizer, args)
    replies = iter(['<tool_call>\n{"name": "calculate", "arguments": {"expression": "37 * 12"}}\n</tool_call>',
                    "37 times 12 is 444."])
    prompts = []
    monkeypatch.setattr(session, "stream_reply", lambda text, thinking=False: prompts.append(text) or next(replies))
    assert session.answer("What is 37 times 12?") == "37 times 12 is 444."
    out = capsys.readouterr().out
    assert '🔧 calculate({"expression": "37 * 12"}) → {"result": 444}' in out
    assert [m["role"] for m in session.history] == ["user", "assistant", "tool", "assistant"]
    assert session.history[2]["content"] == '{"result": 444}' and len(prompts) == 2
    assert prompts[1].endswith(build_prompt(tokenizer, session.history[:3])[-40:])  # the result went back in


def test_tools_and_thinking_from_the_command_line(out_dir):
    """The printed answer is the greedy reply to the prompt the tool loop renders (tools listed, switch on)."""
    from inference.tool_loop import render_prompt
    from inference.tools import builtin_toolbox

    model, tokenizer = load_model(out_dir / f"full_sft_{DIM}")
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "hi"}], builtin_toolbox().schemas, True)
    expected = generate(model, tokenizer, prompt, max_new_tokens=MAX_NEW, temperature=0)
    code, out, err = run_cli("--model_path", out_dir / f"full_sft_{DIM}", "--prompt", "hi", "--tools", "all",
                             "--open_thinking", "--max_new_tokens", MAX_NEW, "--temperature", 0)
    assert code == 0, err
    assert f"🤖: {expected}" in out and "Traceback" not in err
