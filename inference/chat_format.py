"""MiniMind-3's chat format, read back from text: a reply's reasoning (`<think>…</think>`), its answer and its tool
calls (`<tool_call>{"name": …, "arguments": …}</tool_call>`), and the normalisation of `tools` / `tool_calls` fields
that data files and API requests carry in several shapes.

Rendering goes the other way, through the tokenizer's chat template (`tokenizer.apply_chat_template(messages,
tools=..., open_thinking=...)`); this module is what the chat CLI, the server, the evaluation and RL rollouts use to
understand what the model wrote.
"""
import json
import re
from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"  # MiniMind2-era reasoning replies
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
# What the chat template's generation prompt writes after the assistant header: the thinking switch on opens a
# reasoning block for the model to fill; off (the default) writes an empty, closed one, so the model answers directly.
THINKING_ON_PROMPT = THINK_OPEN + "\n"
THINKING_OFF_PROMPT = THINK_OPEN + "\n\n" + THINK_CLOSE + "\n\n"
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)


class FormatError(ValueError):
    """A `tools` / `tool_calls` value that cannot be understood; the message names the field."""


@dataclass
class AssistantReply:
    """What an assistant turn says, split the way the OpenAI API returns it."""
    content: str
    reasoning_content: str | None = None
    tool_calls: list = field(default_factory=list)  # [{"name": str, "arguments": dict}]
    problems: list = field(default_factory=list)  # unparseable <tool_call> blocks, unclosed tags (left in content)

    def message(self) -> dict:
        """The reply as a chat message (what goes back into the conversation)."""
        message = {"role": "assistant", "content": self.content}
        if self.reasoning_content:
            message["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            message["tool_calls"] = [dict(call) for call in self.tool_calls]
        return message


def parse_assistant(text: str, thinking: bool = False) -> AssistantReply:
    """Split generated text into reasoning, content and tool calls.

    `thinking`: the prompt already opened a `<think>` block (the thinking switch was on), so the text starts inside
    the reasoning. A `<think>…</think>` block in the text counts either way; so does MiniMind2's
    `<think>…</think><answer>…</answer>` (the answer block is the content). Tool-call blocks whose JSON cannot be read
    stay in the content and are listed in `problems`."""
    text = text or ""
    reasoning = None
    if THINK_CLOSE in text:
        head, text = text.split(THINK_CLOSE, 1)
        reasoning = head.split(THINK_OPEN, 1)[-1].strip("\n").strip()
    elif thinking or text.lstrip().startswith(THINK_OPEN):
        return AssistantReply(content="", reasoning_content=text.split(THINK_OPEN, 1)[-1].strip() or None,
                              problems=["unclosed <think>"])
    answer = re.search(r"<answer>(.*?)(?:</answer>|$)", text, re.S)
    if answer:
        text = answer.group(1)
    calls, problems = [], []

    def take(match):
        try:
            calls.append(normalize_call(json.loads(match.group(1).strip()), "tool_call"))
            return ""
        except (json.JSONDecodeError, FormatError) as e:
            problems.append(f"unreadable <tool_call>: {e}")
            return match.group(0)

    content = _TOOL_CALL.sub(take, text)
    if TOOL_CALL_OPEN in content and TOOL_CALL_CLOSE not in content.split(TOOL_CALL_OPEN)[-1]:
        problems.append("unclosed <tool_call>")
    return AssistantReply(content=content.strip(), reasoning_content=reasoning or None, tool_calls=calls,
                          problems=problems)


# ---------------------------------------------------------------- the fields' shapes

def normalize_call(call, where: str = "tool_calls") -> dict:
    """{"name": str, "arguments": dict} from `{name, arguments}` or `{type: "function", function: {...}}`, the
    arguments an object or a JSON string (MiniMind-3's and OpenAI's shapes)."""
    if not isinstance(call, dict):
        raise FormatError(f"{where}: expected an object with a name, got {type(call).__name__}")
    if isinstance(call.get("function"), dict):
        call = call["function"]
    name = call.get("name")
    if not isinstance(name, str) or not name.strip():
        raise FormatError(f"{where}: a call without a name")
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}: arguments of {name!r} are not valid JSON: {e.msg}") from None
    if not isinstance(arguments, dict):
        raise FormatError(f"{where}: arguments of {name!r} must be an object, got {type(arguments).__name__}")
    return {"name": name, "arguments": arguments}


def normalize_tool_calls(value, where: str = "tool_calls") -> list[dict]:
    """A `tool_calls` field (a JSON string or a list) as [{"name", "arguments": dict}]."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}: not valid JSON: {e.msg}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise FormatError(f"{where}: expected a list of calls, got {type(value).__name__}")
    return [normalize_call(call, f"{where}[{i}]") for i, call in enumerate(value)]


def normalize_tools(value, where: str = "tools") -> list[dict]:
    """A `tools` field (a JSON string or a list of OpenAI function schemas, with or without the
    {"type": "function", "function": ...} wrapper) as a list of wrapped schemas."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise FormatError(f"{where}: not valid JSON: {e.msg}") from None
    if not isinstance(value, list):
        raise FormatError(f"{where}: expected a list of function schemas, got {type(value).__name__}")
    tools = []
    for i, tool in enumerate(value):
        spec = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"].strip():
            raise FormatError(f"{where}[{i}]: a function schema needs a name")
        tools.append({"type": "function", "function": spec})
    return tools


def tool_names(tools) -> set:
    return {t["function"]["name"] for t in normalize_tools(tools)} if tools else set()


def check_call(call: dict, tools) -> str | None:
    """None for a call to a listed function with its required arguments, else what is wrong."""
    by_name = {t["function"]["name"]: t["function"] for t in normalize_tools(tools or [])}
    if call["name"] not in by_name:
        return f"unknown function {call['name']!r}" + (f" (known: {', '.join(sorted(by_name))})" if by_name else "")
    required = (by_name[call["name"]].get("parameters") or {}).get("required") or []
    missing = [r for r in required if r not in call["arguments"]]
    return f"{call['name']}: missing argument{'s' if len(missing) > 1 else ''} {', '.join(missing)}" if missing else None
