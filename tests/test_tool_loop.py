"""inference/tool_loop.py: the loop renders each round with the chat template (tools, thinking switch), runs the
calls it reads back, appends the assistant and tool turns, respects the call limit; checked against MiniMind-3's
reference template rendering of the transcript we expect, with a scripted generator standing in for a model."""
import json

import pytest
from transformers import AutoTokenizer

from conftest import ROOT, tiny_config
from model import TOKENIZER_DIR, MiniMindForCausalLM
from inference.tool_loop import ToolLoop, render_prompt, run_tool_loop, run_tool_loops
from inference.tools import builtin_toolbox

REFERENCE = ROOT.parent / "shared" / "reference" / "minimind3" / "tokenizer_config.json"


@pytest.fixture(scope="module")
def tokenizer():
    """The project's tokenizer rendering with MiniMind-3's template (the one the chat template must equal)."""
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} absent (MiniMind-3's reference template)")
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    tok.chat_template = json.loads(REFERENCE.read_text(encoding="utf-8"))["chat_template"]
    return tok


class Scripted:
    """Stands in for a model: returns the given texts in turn and records the prompts it was given."""

    def __init__(self, *texts):
        self.texts, self.prompts = list(texts), []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        return self.texts.pop(0)


def call_text(name, **arguments):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)}\n</tool_call>'


USER = {"role": "user", "content": "What is the capital of Peru, and what is 37 times 12?"}


def test_two_steps_render_run_and_append_in_minimind3_format(tokenizer):
    box = builtin_toolbox()
    model = Scripted(call_text("get_capital", country="Peru"),
                     call_text("calculate", expression="37 * 12"),
                     "The capital of Peru is Lima, and 37 times 12 is 444.")
    seen = []
    result = run_tool_loop(None, tokenizer, [USER], box, open_thinking=False, generate_fn=model,
                           on_result=lambda call, r: seen.append((call["name"], r.content)))
    assert result.finish_reason == "stop"
    assert result.answer == "The capital of Peru is Lima, and 37 times 12 is 444." and result.reasoning is None
    assert seen == [("get_capital", '{"result": "Lima"}'), ("calculate", '{"result": 444}')]
    expected = [
        USER,
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_capital", "arguments": {"country": "Peru"}}]},
        {"role": "tool", "content": '{"result": "Lima"}'},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "calculate", "arguments": {"expression": "37 * 12"}}]},
        {"role": "tool", "content": '{"result": 444}'},
        {"role": "assistant", "content": "The capital of Peru is Lima, and 37 times 12 is 444."},
    ]
    assert result.messages == expected
    # every round's prompt is the reference template's rendering of the conversation so far, tools listed
    for n_turns, prompt in zip((1, 3, 5), model.prompts):
        assert prompt == tokenizer.apply_chat_template(expected[:n_turns], tools=box.schemas, tokenize=False,
                                                       add_generation_prompt=True)
    last = model.prompts[-1]
    assert '"name": "calculate"' in last.split("\n</tools>")[0]  # the tools block in the system turn
    assert last.endswith('</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n{"result": 444}\n'
                         '</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n')


def test_thinking_switch_and_reasoning_in_the_transcript(tokenizer):
    model = Scripted("The user wants a product.\n</think>\n\n" + call_text("calculate", expression="6 * 7"),
                     "I have the result.\n</think>\n\n6 times 7 is 42.")
    result = run_tool_loop(None, tokenizer, [{"role": "user", "content": "6 times 7?"}], builtin_toolbox(["calculate"]),
                           open_thinking=True, generate_fn=model)
    assert all(p.endswith("<|im_start|>assistant\n<think>\n") for p in model.prompts)
    assert result.answer == "6 times 7 is 42." and result.reasoning == "I have the result."
    assert result.messages[1]["reasoning_content"] == "The user wants a product."
    assert "<think>\nThe user wants a product.\n</think>\n\n<tool_call>" in model.prompts[1]
    # without the switch the template's default applies (MiniMind-3's: an empty, closed think block)
    assert render_prompt(tokenizer, [USER]).endswith("<think>\n\n</think>\n\n")
    assert "# Tools" not in render_prompt(tokenizer, [USER], tools=[])


def test_bad_calls_get_error_results_and_the_limit_stops_the_loop(tokenizer):
    box = builtin_toolbox()
    two_calls = call_text("calculate", expression="1 + 1") + "\n" + call_text("calculate", expression="2 + 2")
    model = Scripted(call_text("launch_rockets"), call_text("calculate"), two_calls, two_calls)
    result = run_tool_loop(None, tokenizer, [USER], box, max_tool_calls=3, generate_fn=model)
    outcomes = [(call["name"], json.loads(r.content)) for call, r in result.calls]
    assert outcomes == [
        ("launch_rockets", {"error": "unknown function 'launch_rockets' (known: calculate, convert_units, get_capital, get_colour)"}),
        ("calculate", {"error": "missing argument: expression"}),
        ("calculate", {"result": 2}),
        ("calculate", {"error": "limit of 3 tool calls reached: answer with what you have"}),
    ]
    assert result.finish_reason == "max_tool_calls" and len(model.prompts) == 4 and not model.texts
    assert [m["role"] for m in result.messages] == ["user", "assistant", "tool", "assistant", "tool", "assistant",
                                                     "tool", "tool", "assistant"]


def test_unreadable_calls_and_calls_without_tools_end_the_loop(tokenizer):
    result = run_tool_loop(None, tokenizer, [USER], builtin_toolbox(), generate_fn=Scripted('<tool_call>{"name": </tool_call>'))
    assert result.calls == [] and result.reply.problems and result.answer == '<tool_call>{"name": </tool_call>'
    result = run_tool_loop(None, tokenizer, [USER], None, generate_fn=Scripted(call_text("calculate", expression="1")))
    assert result.calls == [] and result.reply.tool_calls and result.finish_reason == "stop"


def test_with_a_real_model_and_the_projects_own_tokenizer():
    """The default generator: a tiny random model through inference.generation, greedy, so two runs agree."""
    import torch

    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config()).eval()
    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    runs = [run_tool_loop(model, tok, [USER], builtin_toolbox(), max_new_tokens=6, temperature=0) for _ in range(2)]
    assert runs[0].texts == runs[1].texts and len(runs[0].texts) == 1
    assert runs[0].messages[-1]["role"] == "assistant" and runs[0].answer == runs[0].texts[0].strip()


def test_loops_in_lockstep_match_loops_run_alone(tokenizer):
    """run_tool_loops: one generate_many call per round over the loops still running (three loops ending after 1,
    2 and 3 rounds here, one of them at the call limit); each ends exactly as run_tool_loop ends it alone."""
    box = builtin_toolbox()
    questions = ["What is 2 plus 3?", "What is the capital of Peru?", "Compute 37 * 12, then add 1."]
    scripts = {questions[0]: ["5."],
               questions[1]: [call_text("get_capital", country="Peru"), "Lima."],
               questions[2]: [call_text("calculate", expression="37 * 12"), call_text("calculate", expression="444 + 1"),
                              call_text("calculate", expression="0")]}

    def reply_for(prompt):  # the script of the prompt's question, at the round its tool results say
        question = next(q for q in questions if q in prompt)
        return scripts[question][prompt.count("<tool_response>")]

    alone = [run_tool_loop(None, tokenizer, [{"role": "user", "content": q}], box, open_thinking=False,
                           max_tool_calls=2, generate_fn=reply_for) for q in questions]
    rounds = []

    def generate_many(prompts):
        rounds.append(len(prompts))
        return [reply_for(p) for p in prompts]

    loops = [ToolLoop(tokenizer, [{"role": "user", "content": q}], box, open_thinking=False, max_tool_calls=2)
             for q in questions]
    together = run_tool_loops(loops, generate_many)
    assert rounds == [3, 2, 1]
    assert [r.finish_reason for r in together] == ["stop", "stop", "max_tool_calls"]
    for a, b in zip(alone, together):
        assert (a.messages, a.texts, a.calls, a.finish_reason) == (b.messages, b.texts, b.calls, b.finish_reason)
    assert all(loop.prompt is None for loop in loops)
    with pytest.raises(RuntimeError, match="ended"):
        loops[0].step("more")
