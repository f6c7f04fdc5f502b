"""Tool calling and the thinking switch through the OpenAI-compatible server, driven by the official `openai` client.

A random tiny model does not call tools, so the served model here is a real tiny MiniMind run by transformers'
generate() whose logits are overwritten to spell out a scripted reply, chosen from the prompt it is given: a tool call
while the conversation has no tool result, an answer quoting the result once it has one, reasoning first when the
prompt opened a think block. Everything between the HTTP request and the decoded text (validation, the chat
template, generation, streaming, the reply split) is the server's real code path. Each test runs with the project's
tokenizer and with one whose tool tags are single added tokens (the tags then arrive whole instead of in pieces); the
thinking tests also render with MiniMind-3's own template (../shared/reference, skipped where absent)."""
import json
import threading

import pytest

from inference.chat_format import THINK_OPEN
from inference.openai_api import ServedModel
from inference.server import make_server
from scripted_model import (ANSWER, CALL_TEXT, PREAMBLE, REASONING, RESULT, TOOLS, USER, ScriptedModel,
                            tokenizer_variant)

openai = pytest.importorskip("openai")

@pytest.fixture(scope="module", params=["project-tokenizer", "single-token-tags", "minimind3-template"])
def served(request):
    tokenizer = tokenizer_variant(request.param)
    model = ServedModel("scripted", ScriptedModel(tokenizer), tokenizer)
    server = make_server([model], "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="x", max_retries=0, timeout=60) as client:
        yield client, model
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def ask(client, messages, **kwargs):
    return client.chat.completions.create(model="scripted", messages=messages, max_tokens=80, temperature=0, **kwargs)


def collect(chunks):
    """A streamed reply put together: (content, reasoning, [tool call deltas], finish_reason, chunks)."""
    content, reasoning, calls, finish = "", "", [], None
    for chunk in chunks:
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        reasoning += getattr(choice.delta, "reasoning_content", None) or ""
        calls += choice.delta.tool_calls or []
        finish = choice.finish_reason or finish
    return content, reasoning or None, calls, finish


def rendered(model, messages, **kwargs):
    return model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


def test_tool_round_trip(served):
    client, model = served
    first = ask(client, USER, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == PREAMBLE and choice.message.reasoning_content is None
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    # the tools reached the template (a template without a tools block renders the same either way)
    assert model.model.prompts[-1] == rendered(model, USER, tools=TOOLS, open_thinking=False)

    # the client appends the assistant message as it came back, and the tool's result
    messages = USER + [choice.message, {"role": "tool", "tool_call_id": call.id, "content": RESULT}]
    second = ask(client, messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop" and not second.choices[0].message.tool_calls
    assert second.choices[0].message.content == ANSWER
    # the model saw the conversation in MiniMind-3's shape: the call as {name, arguments}, the result as a tool turn
    history = USER + [{"role": "assistant", "content": PREAMBLE,
                       "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
                      {"role": "tool", "content": RESULT}]
    assert model.model.prompts[-1] == rendered(model, history, tools=TOOLS, open_thinking=False)


def test_streamed_tool_round_trip_equals_the_plain_one(served):
    client, model = served
    content, reasoning, calls, finish = collect(ask(client, USER, tools=TOOLS, stream=True))
    assert (content, reasoning, finish) == (PREAMBLE, None, "tool_calls")
    [call] = calls  # the whole call in one delta, once its block closed
    assert call.index == 0 and call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}

    messages = USER + [{"role": "assistant", "content": content, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": RESULT}]
    content, reasoning, calls, finish = collect(ask(client, messages, tools=TOOLS, stream=True))
    assert (content, reasoning, calls, finish) == (ANSWER, None, [], "stop")


@pytest.mark.parametrize("switch, stream", [("open_thinking", False), ("enable_thinking", True)])
def test_thinking_switch_returns_reasoning_apart(served, stream, switch):
    client, model = served
    opens = rendered(model, USER, open_thinking=True).rstrip().endswith(THINK_OPEN)  # does the template have it?
    response = ask(client, USER, stream=stream, extra_body={"chat_template_kwargs": {switch: True}})
    if stream:
        content, reasoning, calls, finish = collect(response)
    else:
        message = response.choices[0].message
        content, reasoning, calls, finish = (message.content, message.reasoning_content, message.tool_calls,
                                             response.choices[0].finish_reason)
    assert model.model.prompts[-1] == rendered(model, USER, open_thinking=True)
    assert reasoning == (REASONING if opens else None)
    assert content == f"{PREAMBLE}\n{CALL_TEXT}" and not calls and finish == "stop"  # no tools offered: text
    if model.tokenizer.chat_template and "open_thinking" in model.tokenizer.chat_template:
        assert opens  # a template with the switch opens the block


def test_named_and_required_tool_choice_open_the_call(served):
    client, model = served
    for choice, name, arguments, stream in (
            ({"type": "function", "function": {"name": "get_weather"}}, "get_weather", {"city": "Paris"}, False),
            ({"type": "function", "function": {"name": "get_weather"}}, "get_weather", {"city": "Paris"}, True),
            ("required", "add", {"a": 2, "b": 3}, True)):
        response = ask(client, USER, tools=TOOLS, tool_choice=choice, stream=stream,
                       extra_body={"chat_template_kwargs": {"open_thinking": True}})  # a forced call skips thinking
        if stream:
            content, reasoning, calls, finish = collect(response)
        else:
            message = response.choices[0].message
            content, reasoning, calls, finish = (message.content, message.reasoning_content, message.tool_calls,
                                                 response.choices[0].finish_reason)
        assert finish == "tool_calls" and not content and reasoning is None
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [(name, arguments)]
        assert model.model.prompts[-1].startswith(rendered(model, USER, tools=TOOLS, open_thinking=False))


def test_tool_choice_none_leaves_tools_out_and_calls_as_text(served):
    client, model = served
    response = ask(client, USER, tools=TOOLS, tool_choice="none")
    assert model.model.prompts[-1] == rendered(model, USER)
    assert response.choices[0].message.content == f"{PREAMBLE}\n{CALL_TEXT}"
    assert not response.choices[0].message.tool_calls and response.choices[0].finish_reason == "stop"


def test_tool_results_are_put_in_the_order_of_the_calls(served):
    client, model = served
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": "add", "arguments": json.dumps({"a": i, "b": 1})}}
             for i in range(2)]
    messages = USER + [{"role": "assistant", "content": None, "tool_calls": calls},
                       {"role": "tool", "tool_call_id": "c1", "content": "2"},
                       {"role": "tool", "tool_call_id": "c0", "content": RESULT}]
    assert ask(client, messages, tools=TOOLS).choices[0].message.content == ANSWER
    history = USER + [{"role": "assistant", "content": "",
                       "tool_calls": [{"name": "add", "arguments": {"a": i, "b": 1}} for i in range(2)]},
                      {"role": "tool", "content": RESULT}, {"role": "tool", "content": "2"}]
    assert model.model.prompts[-1] == rendered(model, history, tools=TOOLS, open_thinking=False)


def test_minimind3_template_lists_tools_and_wraps_results():
    """With MiniMind-3's own template the prompt has the tools block, the call and the result where MiniMind-3's
    model expects them."""
    tokenizer = tokenizer_variant("minimind3-template")
    model = ServedModel("m3", ScriptedModel(tokenizer), tokenizer)
    history = USER + [{"role": "assistant", "content": PREAMBLE,
                       "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
                      {"role": "tool", "content": RESULT}]
    prompt = model.prompt(history, TOOLS, open_thinking=True)
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in prompt
    assert (f'{PREAMBLE}\n<tool_call>\n{{"name": "get_weather", "arguments": {{"city": "Paris"}}}}\n</tool_call><|im_end|>\n'
            f"<|im_start|>user\n<tool_response>\n{RESULT}\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n<think>\n") in prompt
    assert model.prompt(USER, open_thinking=False).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_serve_tools_flag_gives_the_page_the_builtin_tools():
    """`serve_openai_api.py --tools all`: the page's tools are the built-in ones and run through the toolbox."""
    from conftest import command

    tools = command("serve_openai_api")["page_tools"]("all")
    assert {"calculate", "get_capital"} <= tools.names
    result = json.loads(tools.call(json.dumps({"name": "calculate", "arguments": {"expression": "6*7"}}).encode())["content"])
    assert result["result"] == 42
    bad = json.loads(tools.call(json.dumps({"name": "calculate", "arguments": {"expression": "__import__('os')"}}).encode())["content"])
    assert "error" in bad
