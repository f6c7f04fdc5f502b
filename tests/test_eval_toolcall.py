"""Tool-use measurement (inference/toolcall_eval.py, scripts/eval_toolcall.py) and the demo world's tool data:
the data agrees with the built-in tools, the file format is checked line by line, and the measures equal what an
independent count over the tasks gives for scripted models that are right, or wrong in known ways."""
import json
import random

import pytest
from transformers import AutoTokenizer

from conftest import ROOT, run_command, save_tiny
from dataset.demo import TOOL_TASKS, thinking_lines, tool_heldout_lines, tool_lines
from inference.chat_format import check_call, normalize_tool_calls, normalize_tools
from inference.toolcall_eval import ToolFileError, arguments_match, measure_tool_use, read_tool_file
from inference.tools import builtin_toolbox
from model import TOKENIZER_DIR

REFERENCE = ROOT.parent / "shared" / "reference" / "minimind3" / "tokenizer_config.json"


def test_demo_tool_conversations_agree_with_the_builtin_tools():
    """Every call in the training data names an offered function with its arguments, and every tool turn holds
    exactly what running that call gives; the final answer states the last result."""
    box = builtin_toolbox()
    rows = tool_lines(random.Random(1), 120)
    steps = []
    for row in rows:
        turns = row["conversations"]
        offered = normalize_tools(turns[0]["tools"])
        assert turns[0]["role"] == "system" and turns[1]["role"] == "user" and turns[-1]["role"] == "assistant"
        calls = [(t, turns[i + 1]) for i, t in enumerate(turns) if t.get("tool_calls")]
        steps.append(len(calls))
        assert len(offered) == len({c["name"] for t, _ in calls for c in normalize_tool_calls(t["tool_calls"])}) + 1
        for turn, result_turn in calls:
            (call,) = normalize_tool_calls(turn["tool_calls"])
            assert check_call(call, offered) is None and turn["content"] == ""
            assert result_turn["role"] == "tool" and result_turn["content"] == box.run(call).content
        last = json.loads(calls[-1][1]["content"])["result"]
        assert str(last) in turns[-1]["content"]
    assert set(steps) == {1, 2}  # single- and two-step tasks


def test_thinking_data_alternates_reasoning_and_direct_replies():
    rows = thinking_lines(random.Random(2), 10)
    with_reasoning = [r["conversations"][1].get("reasoning_content") for r in rows]
    assert all(with_reasoning[0::2]) and not any(with_reasoning[1::2])


def test_heldout_file_reads_back_with_every_kind(tmp_path):
    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in tool_heldout_lines(random.Random(3), 12, 4)) + "\n")
    records = read_tool_file(path)
    assert {r["kind"] for r in records} == set(TOOL_TASKS) | {"thinking"}
    assert sum(1 for r in records if r["tools"]) == 12 and all(r["messages"][-1]["role"] == "user" for r in records)


@pytest.mark.parametrize("line, problem", [
    ('{"messages": []}', "messages: expected a non-empty list"),
    ('{"messages": [{"role": "assistant", "content": "x"}]}', "the last turn must be the user's question"),
    ('{"messages": [{"role": "user", "content": "x"}], "expected_calls": [{"name": "f"}]}', "no tools offered"),
    ('{"tools": [{"name": "f"}], "messages": [{"role": "user", "content": "x"}], "expected_calls": [{"name": "g"}]}',
     "expected_calls[0]: unknown function 'g'"),
    ('{"tools": "[{", "messages": [{"role": "user", "content": "x"}]}', "tools: not valid JSON"),
    ('{"messages": [{"role": "user", "content": "x"}], "answer": 7}', "answer: expected a string"),
    ('{"messages": [{"role": "user"', "invalid JSON"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, problem):
    path = tmp_path / "t.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "fine"}]}\n' + line + "\n")
    with pytest.raises(ToolFileError, match=r"t\.jsonl:2: ") as info:
        read_tool_file(path)
    assert problem in str(info.value)


def test_tools_on_the_system_turn_as_in_minimind3_files(tmp_path):
    path = tmp_path / "t.jsonl"
    schema = {"name": "get_capital", "parameters": {"required": ["country"]}}
    path.write_text(json.dumps({"messages": [{"role": "system", "content": "", "tools": json.dumps([schema])},
                                             {"role": "user", "content": "Capital of Peru?"}],
                                "expected_calls": [{"name": "get_capital", "arguments": '{"country": "Peru"}'}]}))
    (record,) = read_tool_file(path)
    assert record["tools"][0]["function"]["name"] == "get_capital" and "tools" not in record["messages"][0]
    assert record["expected_calls"] == [{"name": "get_capital", "arguments": {"country": "Peru"}}]


def test_argument_matching():
    assert arguments_match({"value": "12", "to_unit": "M "}, {"value": 12, "to_unit": "m"})
    assert not arguments_match({"value": 12}, {"value": 12, "to_unit": "m"})
    assert not arguments_match({"value": "twelve"}, {"value": 12})
    assert not arguments_match({"flag": 1}, {"flag": True})


@pytest.fixture(scope="module")
def tokenizer():
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} absent (MiniMind-3's reference template)")
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    tok.chat_template = json.loads(REFERENCE.read_text(encoding="utf-8"))["chat_template"]
    return tok


class Oracle:
    """A scripted model that knows each task's expected calls and answer; `wrong_arguments` for some kinds,
    `never_thinks` ignores the thinking switch."""

    def __init__(self, records, wrong_arguments=(), never_thinks=False):
        self.by_question = {r["messages"][-1]["content"]: r for r in records}
        self.wrong_arguments, self.never_thinks = set(wrong_arguments), never_thinks

    def __call__(self, prompt):
        question = next(q for q in self.by_question if q in prompt)
        record = self.by_question[question]
        answer = "The answer: " + ", ".join(record["answer"]) + "."
        if not record["tools"]:
            thinking = prompt.endswith("<think>\n") and not self.never_thinks
            return f"Let me think.\n</think>\n\n{answer}" if thinking else answer
        if "# Tools" not in prompt:
            return "I do not know."  # asked without tools
        step = prompt.split(question, 1)[1].count("<tool_response>")
        if step == len(record["expected_calls"]):
            return answer
        call = dict(record["expected_calls"][step])
        if record["kind"] in self.wrong_arguments:
            call["arguments"] = {k: "0" for k in call["arguments"]}
        return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"


def test_measures_of_a_right_and_a_flawed_model(tokenizer, tmp_path):
    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in tool_heldout_lines(random.Random(4), 12, 4)) + "\n")
    records = read_tool_file(path)
    perfect = measure_tool_use(None, tokenizer, records, generate_fn=Oracle(records))["measures"]
    assert perfect == {"valid_calls": 1.0, "right_function": 1.0, "right_arguments": 1.0, "right_calls": 1.0,
                       "answer_with_tools": 1.0, "answer_without_tools": 0.0, "thinking_on": 1.0, "thinking_off": 1.0}

    wrong = {"calculate", "product_plus"}
    result = measure_tool_use(None, tokenizer, records, generate_fn=Oracle(records, wrong, never_thinks=True))
    tool_tasks = [r for r in records if r["tools"]]
    right = sum(r["kind"] not in wrong for r in tool_tasks) / len(tool_tasks)
    m = result["measures"]
    assert m["valid_calls"] == 1.0 and m["right_function"] == 1.0  # the calls are well-formed, to the right function
    assert m["right_arguments"] == pytest.approx(right) and m["right_calls"] == pytest.approx(right)
    assert m["thinking_on"] == 0.0 and m["thinking_off"] == 1.0
    assert result["by_kind"]["calculate"]["right_arguments"] == 0.0 and result["by_kind"]["capital"]["right_arguments"] == 1.0


def test_command_runs_any_model_on_any_file(tmp_path, capsys):
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    model_dir = save_tiny(tmp_path / "tiny", tok)
    data = tmp_path / "tools.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in tool_heldout_lines(random.Random(5), 2, 1)) + "\n")
    code, out, err = run_command("eval_toolcall", [model_dir, "--data", data, "--max_new_tokens", 3, "--no_progress",
                                                   "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)["tiny"]
    assert result["counts"] == {"tool_tasks": 2, "thinking_prompts": 1} and len(result["tasks"]) == 3
    code, out, err = run_command("eval_toolcall", [model_dir, "--data", tmp_path / "missing.jsonl"], capsys)
    assert code == 2 and "missing.jsonl not found" in err


def test_the_demo_reasoning_mix_adds_tool_and_thinking_conversations(demo):
    reason = demo["reason"].read_text(encoding="utf-8").splitlines()
    mix = demo["reason_tools"].read_text(encoding="utf-8").splitlines()
    assert mix[:len(reason)] == reason
    added = [json.loads(line)["conversations"] for line in mix[len(reason):]]
    assert any(turns[0].get("tools") for turns in added) and any("reasoning_content" in turns[-1] for turns in added)


def test_batched_measure_equals_one_generation_at_a_time(tmp_path):
    """The default path (every task's loop in lockstep, a batched greedy generation a round, prompts of different
    lengths left-padded together) gives the same replies as generate() one prompt at a time: a tiny random model,
    the project's own template."""
    import torch

    from conftest import tiny_config
    from inference.generation import generate
    from model import MiniMindForCausalLM

    torch.manual_seed(0)
    config = tiny_config()
    config.initializer_range = 0.5  # large random weights: each prompt gets a reply of its own, not one shared one
    model = MiniMindForCausalLM(config).eval()
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in tool_heldout_lines(random.Random(5), 6, 2)) + "\n")
    records = read_tool_file(path)
    batched = measure_tool_use(model, tok, records, max_new_tokens=12, batch_size=4)
    one_by_one = measure_tool_use(model, tok, records, max_new_tokens=12,
                                  generate_fn=lambda p: generate(model, tok, p, max_new_tokens=12, temperature=0.0))
    assert batched["tasks"] == one_by_one["tasks"]
    firsts = [t.get("first_reply", t.get("thinking_on_reply")) for t in batched["tasks"]]
    assert len(set(firsts)) == len(firsts)  # replies told apart: a reply handed to the wrong task would show


def test_an_export_the_engine_cannot_drive_is_measured_through_generate(tmp_path):
    """A Llama export loaded by transformers has no MiniMind cache: the measure falls back to generate(), one prompt
    at a time, and gives the same transcripts as the MiniMind model it came from."""
    from transformers import AutoModelForCausalLM

    from conftest import save_tiny
    from inference.convert import export_llama
    from model import MiniMindForCausalLM, is_minimind

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    folder = save_tiny(tmp_path / "tiny", tok, initializer_range=0.5)
    ours = MiniMindForCausalLM.from_pretrained(folder).eval()
    llama = AutoModelForCausalLM.from_pretrained(export_llama(folder, tmp_path / "llama")).eval()
    assert is_minimind(ours) and not is_minimind(llama)
    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in tool_heldout_lines(random.Random(6), 3, 1)) + "\n")
    records = read_tool_file(path)
    a, b = (measure_tool_use(m, tok, records, max_new_tokens=8) for m in (ours, llama))
    assert a["tasks"] == b["tasks"]
