"""Measuring tool use and the thinking switch on a held-out file (scripts/eval_toolcall.py and the demo report).

The file is jsonl, one task per line:

  {"kind": "calculate",                                   optional label, for the per-kind table
   "tools": [{"type": "function", "function": {...}}],    OpenAI schemas offered (or `tools` on a system turn)
   "messages": [{"role": "user", "content": "What is 37 times 12?"}],   the conversation so far ("conversations" too)
   "expected_calls": [{"name": "calculate", "arguments": {"expression": "37 * 12"}}],   every call the task needs
   "answer": ["444"]}                                     strings the final answer must contain (a string works too)

A line without `tools` and `expected_calls` is a thinking prompt: it is asked with the thinking switch on (the reply
should reason, in a closed <think> block) and off (it should not); its `answer`, when given, is checked both ways.

Measures (greedy decoding), over the tool tasks:
  valid calls       the first reply makes calls, every <tool_call> block is parseable JSON, and every call names an
                    offered function with its required arguments
  right function    the first call names the expected first function
  right arguments   ... and its arguments equal the expected ones (numbers by value, strings ignoring case)
  right calls       the whole loop made exactly the expected calls, in order
  answer, tools     the final answer after the tool loop contains every expected string
  answer, no tools  the same question asked without tools offered
and over the thinking prompts: `thinking on: reasons` and `thinking off: direct`.
Tools named in a task that are built-ins (inference/tools.py) run; others return the "no implementation" error.
"""
from pathlib import Path

from dataset.jsonl import json_lines

from .chat_format import FormatError, check_call, normalize_tool_calls, normalize_tools, \
    parse_assistant
from .generation import complete_prompts
from .reasoning import turn_is_well_formed
from .tool_loop import ToolLoop, render_prompt, run_tool_loops
from .tools import BUILTIN_TOOLS, Toolbox

MEASURE_LABELS = {
    "valid_calls": "valid calls", "right_function": "right function", "right_arguments": "right arguments",
    "right_calls": "right calls (all steps)", "answer_with_tools": "answer, with tools",
    "answer_without_tools": "answer, without tools", "thinking_on": "thinking on: reasons",
    "thinking_off": "thinking off: direct",
}


class ToolFileError(ValueError):
    """A bad line in a tool evaluation file; the message reads `path:line: field: problem`."""


def parse_task(raw, where: str) -> dict:
    """One task of the file format above, checked: {"kind", "tools", "messages", "expected_calls", "answer"};
    ToolFileError `where: field: problem` otherwise. (train_agent.py reads its tasks with it too.)"""
    if not isinstance(raw, dict):
        raise ToolFileError(f"{where}: expected a JSON object")
    messages = raw.get("messages", raw.get("conversations"))
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ToolFileError(f"{where}: messages: expected a non-empty list of turns")
    messages = [dict(m) for m in messages]
    tools = raw.get("tools")
    if messages[0].get("role") == "system" and messages[0].get("tools") is not None:
        on_system = messages[0].pop("tools")  # the system turn stays: its text is rendered before the tools block
        tools = on_system if tools is None else tools
    if not messages or messages[-1].get("role") != "user":
        raise ToolFileError(f"{where}: messages: the last turn must be the user's question")
    try:
        tools = normalize_tools(tools, f"{where}: tools") if tools else []
        expected = normalize_tool_calls(raw.get("expected_calls") or [], f"{where}: expected_calls")
    except FormatError as e:
        raise ToolFileError(str(e)) from None
    if expected and not tools:
        raise ToolFileError(f"{where}: expected_calls given but no tools offered")
    for i, call in enumerate(expected):
        problem = check_call(call, tools)
        if problem:
            raise ToolFileError(f"{where}: expected_calls[{i}]: {problem}")
    answer = raw.get("answer") or []
    answer = [answer] if isinstance(answer, str) else answer
    if not isinstance(answer, list) or not all(isinstance(a, str) and a.strip() for a in answer):
        raise ToolFileError(f"{where}: answer: expected a string or a list of strings")
    kind = raw.get("kind") or ("tools" if tools else "thinking")
    return {"kind": str(kind), "tools": tools, "messages": messages, "expected_calls": expected, "answer": answer}


def read_tool_file(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise ToolFileError(f"{path} not found (`python scripts/eval_report.py --write_demo_heldout DIR` writes the "
                            f"demo world's tools.jsonl)")
    records = [parse_task(raw, f"{path}:{line_no}") for line_no, raw in json_lines(path, ToolFileError)]
    if not records:
        raise ToolFileError(f"{path}: no tasks")
    return records


def _same(got, expected) -> bool:
    if isinstance(expected, bool) or isinstance(got, bool):
        return got is expected
    if isinstance(expected, (int, float)):
        try:
            return float(got) == float(expected)
        except (TypeError, ValueError):
            return False
    if isinstance(expected, str):
        return isinstance(got, str) and got.strip().lower() == expected.strip().lower()
    return got == expected


def arguments_match(got: dict, expected: dict) -> bool:
    return set(got) == set(expected) and all(_same(got[k], expected[k]) for k in expected)


def calls_match(got: dict, expected: dict) -> bool:
    return got["name"] == expected["name"] and arguments_match(got["arguments"], expected["arguments"])


def answer_correct(text: str, strings) -> bool:
    """The final answer is right: it contains every expected string (ignoring case). The evaluation's measure and
    the agent stage's `answer` reward (trainer/agent_rewards.py) both use this one check."""
    return all(s.lower() in (text or "").lower() for s in strings)


def valid_calls(reply, tools) -> bool:
    """A reply makes calls, every <tool_call> block of it is readable JSON, and every call names an offered
    function with its required arguments (the `valid calls` measure; the agent stage's `calls` reward)."""
    return bool(reply.tool_calls) and not reply.problems and all(check_call(c, tools) is None for c in reply.tool_calls)


def task_toolbox(record) -> Toolbox:
    """The tools a task offers: built-in names run the built-in, others answer "no implementation"."""
    return Toolbox(record["tools"], {t["function"]["name"]: BUILTIN_TOOLS[t["function"]["name"]]
                                     for t in record["tools"] if t["function"]["name"] in BUILTIN_TOOLS})


def _share(flags):
    return sum(flags) / len(flags) if flags else None


def measure_tool_use(model, tokenizer, records, *, max_tool_calls: int = 4, max_new_tokens: int = 80,
                     progress: bool = False, generate_fn=None, without_tools: bool = True, batch_size: int = 64) -> dict:
    """The measures of the module docstring on `records` (read_tool_file's), greedy. The tasks' tool loops run in
    lockstep, each round one batched generation (inference.generation.complete_prompts, up to `batch_size` prompts
    at a time); `generate_fn(prompt) -> text` replaces the model, one prompt at a time (tests, other back ends).
    `without_tools=False` skips asking the questions without tools. Returns {"measures": {name: share or None},
    "counts": {...}, "by_kind": {kind: {name: share}}, "settings": {...}, "tasks": [...]}."""
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(desc="tool tasks", unit="reply", dynamic_ncols=True)

    def generate_many(prompts: list[str]) -> list[str]:
        if generate_fn is not None:
            texts = [generate_fn(p) for p in prompts]
        else:
            texts = complete_prompts(model, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                                     batch_size=batch_size)
        if bar is not None:
            bar.update(len(prompts))
        return texts

    try:
        with_tools = [i for i, r in enumerate(records) if r["tools"]]
        loops = [ToolLoop(tokenizer, records[i]["messages"], task_toolbox(records[i]), open_thinking=False,
                          max_tool_calls=max_tool_calls) for i in with_tools]
        results = dict(zip(with_tools, run_tool_loops(loops, generate_many)))
        # every single-reply prompt in one batch: the questions without tools, the thinking prompts switched on and off
        single = []
        for i, record in enumerate(records):
            if record["tools"] and record["answer"] and without_tools:
                plain = [m for m in record["messages"] if m.get("role") != "system" or (m.get("content") or "").strip()]
                single.append((i, "bare", render_prompt(tokenizer, plain, None, False)))
            elif not record["tools"]:
                single += [(i, "on", render_prompt(tokenizer, record["messages"], None, True)),
                           (i, "off", render_prompt(tokenizer, record["messages"], None, False))]
        replies = dict(zip([(i, which) for i, which, _ in single], generate_many([p for _, _, p in single])))
    finally:
        if bar is not None:
            bar.close()
    tasks = []
    for i, record in enumerate(records):
        task = {"kind": record["kind"], "question": record["messages"][-1].get("content", "")}
        if record["tools"]:
            loop = results[i]
            first = parse_assistant(loop.texts[0], thinking=False)
            expected = record["expected_calls"]
            made = [call for call, _ in loop.calls]
            task.update(
                first_reply=loop.texts[0], transcript=loop.messages[len(record["messages"]):],
                valid_calls=valid_calls(first, record["tools"]),
                right_function=bool(first.tool_calls) and bool(expected) and first.tool_calls[0]["name"] == expected[0]["name"],
                right_arguments=bool(first.tool_calls) and bool(expected) and calls_match(first.tool_calls[0], expected[0]),
                right_calls=len(made) == len(expected) and all(calls_match(g, e) for g, e in zip(made, expected)),
                answer_with_tools=answer_correct(loop.answer, record["answer"]) if record["answer"] else None)
            if (i, "bare") in replies:
                bare = replies[i, "bare"]
                task.update(answer_no_tools_reply=bare,
                            answer_without_tools=answer_correct(parse_assistant(bare).content, record["answer"]))
        else:
            on, off = replies[i, "on"], replies[i, "off"]
            on_reply, off_reply = parse_assistant(on, thinking=True), parse_assistant(off, thinking=False)
            task.update(thinking_on_reply=on, thinking_off_reply=off,
                        thinking_on=turn_is_well_formed(on, thinking=True),
                        thinking_off=turn_is_well_formed(off, thinking=False))
            if record["answer"]:
                task.update(answer_thinking_on=answer_correct(on_reply.content, record["answer"]),
                            answer_thinking_off=answer_correct(off_reply.content, record["answer"]))
        tasks.append(task)

    def shares(selected):
        return {name: _share([t[name] for t in selected if t.get(name) is not None]) for name in MEASURE_LABELS}

    kinds = sorted({t["kind"] for t in tasks})
    return {"measures": shares(tasks), "by_kind": {k: shares([t for t in tasks if t["kind"] == k]) for k in kinds},
            "counts": {"tool_tasks": sum(1 for r in records if r["tools"]),
                       "thinking_prompts": sum(1 for r in records if not r["tools"])},
            "settings": {"max_tool_calls": max_tool_calls, "max_new_tokens": max_new_tokens, "decoding": "greedy"},
            "tasks": tasks}


def format_measures(results: dict) -> str:
    """A table: one row per measure, one column per model (`results`: {model label: measure_tool_use(...)})."""
    labels = list(results)
    rows = [["measure", *labels]]
    for name, label in MEASURE_LABELS.items():
        values = [results[m]["measures"].get(name) for m in labels]
        if all(v is None for v in values):
            continue
        rows.append([label, *("—" if v is None else f"{v:.0%}" for v in values)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
