"""The chat template: MiniMind-3-identical rendering, the thinking switch, tools, and what the loss mask covers."""
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from dataset.tokenizer_training import CHAT_TEMPLATE, THINKING_OFF_PROMPT, THINKING_ON_PROMPT

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference" / "minimind3" / "tokenizer_config.json"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "城市"}},
                   "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"]}}}
TOOLS = [WEATHER, ADD]
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}

# Conversations in MiniMind-3's format, as its loader hands them to the template (tools / tool_calls parsed).
CASES = {
    "plain chat": ([{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"},
                    {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}], None),
    "system prompt": ([SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], None),
    "reasoning_content": ([{"role": "user", "content": "1+1=?"},
                           {"role": "assistant", "reasoning_content": "\nOne plus one.\n", "content": "2"}], None),
    "empty reasoning_content": ([{"role": "user", "content": "1+1=?"},
                                 {"role": "assistant", "reasoning_content": "", "content": "2"}], None),
    "inline think in content": ([{"role": "user", "content": "2+2?"},
                                 {"role": "assistant", "content": "<think>\nadd them\n</think>\n\nIt is 4."}], None),
    "MiniMind2 think/answer": ([{"role": "user", "content": "1+1=?"},
                                {"role": "assistant", "content": "<think>\n简单\n</think>\n<answer>\n2\n</answer>"}], None),
    "tool call, object arguments": ([
        SYSTEM, {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 degrees in Paris."}], TOOLS),
    "tool call, OpenAI shape, string arguments": ([
        {"role": "user", "content": "北京天气？"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"北京"}'}}]},
        {"role": "tool", "content": "晴, 25°C"},
        {"role": "assistant", "reasoning_content": "The tool said sunny.", "content": "北京晴，25°C。"}], TOOLS),
    "several tool turns": ([
        SYSTEM, {"role": "user", "content": "Weather in Oslo and 2+3?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "add", "arguments": {"a": 2, "b": 3}}]},
        {"role": "tool", "content": "rain, 9°C"}, {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "Oslo: rain, 9°C. 2+3 = 5."}], TOOLS),
    "multi-step": ([
        {"role": "user", "content": "Add 1 and 2, then add 10."},
        {"role": "assistant", "reasoning_content": "First 1+2.", "content": "",
         "tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}}]},
        {"role": "tool", "content": "3"},
        {"role": "assistant", "reasoning_content": "Now 3+10.", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": '{"a": 3, "b": 10}'}}]},
        {"role": "tool", "content": "13"},
        {"role": "assistant", "content": "The result is 13."},
        {"role": "user", "content": "Thanks"}, {"role": "assistant", "content": "You are welcome."}], TOOLS),
}

# Generation prompts: the conversation so far, the tools, and the switch (None: not passed).
PROMPTS = {
    "plain": ([{"role": "user", "content": "Hi"}], None),
    "system + history": ([SYSTEM, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                          {"role": "user", "content": "What is 3*3?"}], None),
    "after a tool result": (CASES["tool call, object arguments"][0][:4], TOOLS),
    "with tools": ([{"role": "user", "content": "Weather in Rome?"}], TOOLS),
}


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(ROOT / "model"))


@pytest.fixture(scope="module")
def reference_template():
    if not REFERENCE.exists():
        pytest.skip(f"needs MiniMind-3's tokenizer_config.json at {REFERENCE} (present in CI, not in a user's clone)")
    return json.loads(REFERENCE.read_text(encoding="utf-8"))["chat_template"]


def render(tok, messages, template=CHAT_TEMPLATE, **kwargs):
    return tok.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)


def test_the_committed_tokenizer_carries_this_template(tok):
    assert tok.chat_template == CHAT_TEMPLATE


@pytest.mark.parametrize("name", CASES)
def test_renders_like_minimind3(tok, reference_template, name):
    messages, tools = CASES[name]
    ours = render(tok, messages, tools=tools)
    assert ours == render(tok, messages, reference_template, tools=tools)
    if tools:  # tools on the system turn (how data files carry them) render the same as the tools= argument
        with_system = messages if messages[0]["role"] == "system" else [{"role": "system", "content": ""}] + messages
        on_turn = [{**with_system[0], "tools": tools}] + with_system[1:]
        assert render(tok, on_turn) == render(tok, with_system, reference_template, tools=tools)


@pytest.mark.parametrize("open_thinking", [None, True, False])
@pytest.mark.parametrize("name", PROMPTS)
def test_generation_prompt_like_minimind3(tok, reference_template, name, open_thinking):
    messages, tools = PROMPTS[name]
    switch = {} if open_thinking is None else {"open_thinking": open_thinking}
    ours = render(tok, messages, tools=tools, add_generation_prompt=True, **switch)
    assert ours == render(tok, messages, reference_template, tools=tools, add_generation_prompt=True, **switch)
    assert ours.endswith("<|im_start|>assistant\n" + (THINKING_ON_PROMPT if open_thinking else THINKING_OFF_PROMPT))


def test_enable_thinking_is_an_alias(tok):
    messages = PROMPTS["plain"][0]
    assert render(tok, messages, add_generation_prompt=True, enable_thinking=True) == \
        render(tok, messages, add_generation_prompt=True, open_thinking=True)


def test_rendering_by_hand(tok):
    """An independent spelling of the format for one conversation with everything in it."""
    messages = [
        {"role": "system", "content": "Be brief.", "tools": [ADD]},
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "reasoning_content": "Use the tool.", "content": "",
         "tool_calls": [{"name": "add", "arguments": '{"a": 2, "b": 3}'}]},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "5"},
    ]
    expected = (
        "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
        "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + json.dumps(ADD, ensure_ascii=False) +
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
        "<args-json-object>}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n2+3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nUse the tool.\n</think>\n\n"
        "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 2, \"b\": 3}}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n5<|im_end|>\n"
    )
    assert render(tok, messages) == expected


def _masked_runs(ids, mask):
    runs, current = [], []
    for token, keep in zip(ids, mask):
        if keep:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_loss_mask_covers_what_the_assistant_writes(tok):
    messages = [{"role": "system", "content": "sys", "tools": [ADD]}] + CASES["multi-step"][0][:5] + [
        {"role": "assistant", "content": "13"}]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    runs = [tok.decode(run) for run in _masked_runs(out["input_ids"], out["assistant_masks"])]
    assert runs == [
        'First 1+2.\n</think>\n\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call><|im_end|>',
        'Now 3+10.\n</think>\n\n<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 10}}\n</tool_call><|im_end|>',
        "13<|im_end|>",
    ]
    unmasked = tok.decode([t for t, m in zip(out["input_ids"], out["assistant_masks"]) if not m])
    for never in ("sys", "# Tools", "Add 1 and 2", "<tool_response>\n3\n</tool_response>", "13\n</tool_response>",
                  "<think>\n\n</think>\n\n"):
        assert never in unmasked


@pytest.mark.parametrize("reasoning, switch", [("", False), ("Think about it.", True)])
def test_generation_prompt_tokens_prefix_the_trained_turn(tok, reasoning, switch):
    """The prompt that asks for a turn tokenizes to a prefix of that turn as trained, and the masked tokens are the
    rest of it: the model is trained on exactly what it is later asked to continue."""
    history = [SYSTEM, {"role": "user", "content": "Hello there"}]
    for content in ("Hi.", " spaced", "\n\nnewlines first", "Hello\n\nworld"):
        turn = {"role": "assistant", "reasoning_content": reasoning, "content": content}
        prompt = tok.apply_chat_template(history, tokenize=True, return_dict=True, add_generation_prompt=True,
                                         open_thinking=switch)["input_ids"]
        full = tok.apply_chat_template(history + [turn], tokenize=True, return_dict=True,
                                       return_assistant_tokens_mask=True)
        ids, mask = full["input_ids"], full["assistant_masks"]
        assert ids[:len(prompt)] == prompt, (content, tok.convert_ids_to_tokens(ids[len(prompt) - 3:len(prompt) + 2]))
        assert mask[:len(prompt)] == [0] * len(prompt) and all(mask[len(prompt):-1]) and mask[-1] == 0
