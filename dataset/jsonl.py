"""Reading and validating MiniMind jsonl files.

Kinds and their record shapes:
  pretrain  {"text": str}
  sft       {"conversations": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}
            (reasoning and LoRA files use the sft shape too)
  dpo       {"chosen": [turns], "rejected": [turns]}, both ending with an assistant turn

Turns may also carry MiniMind-3's fields (its chat format, see README "Conversation formats"):
  reasoning_content  assistant: the reasoning, rendered as a <think> block
  tools              the first, system turn: the functions the assistant may call, a list of OpenAI function
                     schemas or that list as a JSON string
  tool_calls         assistant: a list (or JSON string) of {name, arguments} or {type: "function", function: {...}},
                     arguments an object or a JSON string; the content may then be empty
  role "tool"        a call's result; it follows the assistant turn that made the calls, one per call at most
MiniMind2-era replies with inline <think>…</think><answer>…</answer> content need none of them.

Validated turns keep all five fields (None where absent); `tools` and `tool_calls` are kept as JSON text, exactly as
given when given as a string, so that the Arrow cache holds them losslessly whatever their shape, and the template
renders them as MiniMind-3's does. `template_messages` turns them back into chat-template messages.
Keys other than these are ignored.
"""
import json
from pathlib import Path
from typing import Iterator, NamedTuple

from inference.chat_format import FormatError, normalize_tool_calls, normalize_tools

KINDS = ("pretrain", "sft", "dpo")
ROLES = ("system", "user", "assistant", "tool")
TURN_FIELDS = ("role", "content", "reasoning_content", "tools", "tool_calls")


class DataError(Exception):
    """A bad line in a data file; the message reads `path:line: field: problem`.

    Constructible from the message alone so that it survives pickling and DataLoader workers.
    """

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        super().__init__(message)
        self.path, self.line = path, line

    @classmethod
    def at(cls, path, line: int, problem: str) -> "DataError":
        return cls(f"{path}:{line}: {problem}", str(path), line)


class _Invalid(Exception):
    """A validation failure inside one record, before the file and line are known."""


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r} (expected one of {', '.join(KINDS)})")


def _json_type(value) -> str:
    names = {str: "string", bool: "boolean", int: "number", float: "number",
             list: "array", dict: "object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _text(record: dict, key: str, field: str) -> str:
    if key not in record:
        raise _Invalid(f"{field}: missing")
    value = record[key]
    if not isinstance(value, str):
        raise _Invalid(f"{field}: expected a string, got {_json_type(value)}")
    if not value.strip():
        raise _Invalid(f"{field}: empty")
    return value


def _optional_text(turn: dict, key: str, field: str) -> str | None:
    value = turn.get(key)
    if value is not None and not isinstance(value, str):
        raise _Invalid(f"{field}: expected a string, got {_json_type(value)}")
    return value


def _as_json_text(value) -> str:
    """A tools / tool_calls value as JSON text: a string as given (it was parsed to check it), a list dumped."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _turn(turn, i: int, key: str, tool_names: set | None) -> dict:
    """One validated turn (all of TURN_FIELDS, None where absent). `tool_names`: the functions listed by the system
    turn, None when it lists none."""
    field = f"{key}[{i}]"
    if not isinstance(turn, dict):
        raise _Invalid(f"{field}: expected an object with role and content, got {_json_type(turn)}")
    role = _text(turn, "role", f"{field}.role")
    if role not in ROLES:
        raise _Invalid(f"{field}.role: unknown role {role!r} (expected {'/'.join(ROLES)})")
    if role == "system" and i > 0:
        raise _Invalid(f"{field}.role: a system turn is only allowed first")
    for name, allowed in (("tools", "system"), ("tool_calls", "assistant"), ("reasoning_content", "assistant")):
        if turn.get(name) is not None and role != allowed:
            raise _Invalid(f"{field}.{name}: only {allowed} turns carry {name}")
    clean = dict.fromkeys(TURN_FIELDS)
    clean["role"] = role
    if turn.get("tools") is not None:
        try:
            normalize_tools(turn["tools"], f"{field}.tools")
        except FormatError as e:
            raise _Invalid(str(e)) from None
        clean["tools"] = _as_json_text(turn["tools"])
    if turn.get("tool_calls") is not None:
        try:
            calls = normalize_tool_calls(turn["tool_calls"], f"{field}.tool_calls")
        except FormatError as e:
            raise _Invalid(str(e)) from None
        for j, call in enumerate(calls):
            if tool_names is None:
                raise _Invalid(f"{field}.tool_calls[{j}]: calls {call['name']!r} but the conversation lists no tools "
                               f"(give them as `tools` on a first, system turn)")
            if call["name"] not in tool_names:
                raise _Invalid(f"{field}.tool_calls[{j}]: calls {call['name']!r}, which is not in tools "
                               f"(known: {', '.join(sorted(tool_names))})")
        clean["tool_calls"] = _as_json_text(turn["tool_calls"])
    clean["reasoning_content"] = _optional_text(turn, "reasoning_content", f"{field}.reasoning_content")
    # Content may be empty (or null) where the turn says something else: a system turn listing tools, an assistant
    # turn making calls, a tool result. Elsewhere it must be non-blank text.
    may_be_empty = (role == "system" and clean["tools"]) or (role == "assistant" and clean["tool_calls"]) \
        or role == "tool"
    if may_be_empty and role != "tool":
        clean["content"] = _optional_text(turn, "content", f"{field}.content") or ""
    elif may_be_empty:
        content = turn.get("content")
        if not isinstance(content, str):
            raise _Invalid(f"{field}.content: " + ("missing" if "content" not in turn else
                                                    f"expected a string, got {_json_type(content)}"))
        clean["content"] = content
    else:
        clean["content"] = _text(turn, "content", f"{field}.content")
    return clean


def _n_calls(turn: dict) -> int:
    return len(normalize_tool_calls(turn["tool_calls"])) if turn["tool_calls"] else 0


def _conversation(record: dict, key: str, must_end_with_assistant: bool) -> list[dict]:
    if key not in record:
        raise _Invalid(f"{key}: missing")
    turns = record[key]
    if not isinstance(turns, list):
        raise _Invalid(f"{key}: expected an array of turns, got {_json_type(turns)}")
    if not turns:
        raise _Invalid(f"{key}: empty")
    clean, tool_names = [], None
    open_calls = 0  # calls of the last assistant turn not yet answered by a tool turn
    for i, turn in enumerate(turns):
        clean.append(_turn(turn, i, key, tool_names))
        role = clean[-1]["role"]
        if i == 0 and clean[0]["tools"]:
            tool_names = {t["function"]["name"] for t in normalize_tools(clean[0]["tools"])}
        if role == "tool":
            if not open_calls:
                raise _Invalid(f"{key}[{i}]: a tool result with no call before it (it must follow an assistant turn "
                               f"with tool_calls, one result per call)")
            open_calls -= 1
        else:
            open_calls = _n_calls(clean[-1]) if role == "assistant" else 0
    if not any(turn["role"] == "assistant" for turn in clean):
        raise _Invalid(f"{key}: no assistant turn")
    if must_end_with_assistant and clean[-1]["role"] != "assistant":
        raise _Invalid(f"{key}: must end with an assistant turn")
    return clean


def template_messages(turns: list[dict]) -> list[dict]:
    """Validated turns as chat-template messages: absent fields left out, tools and tool_calls parsed (one call given
    as an object becomes a list of one)."""
    messages = []
    for turn in turns:
        message = {name: value for name, value in turn.items() if value is not None}
        for name in ("tools", "tool_calls"):
            if name in message:
                value = json.loads(message[name])
                message[name] = [value] if isinstance(value, dict) else value
        messages.append(message)
    return messages


def validate(kind: str, record) -> dict:
    """The record reduced to the keys that `kind` uses; raises _Invalid on the first problem."""
    if not isinstance(record, dict):
        raise _Invalid(f"line is not a JSON object (got {_json_type(record)})")
    if kind == "pretrain":
        return {"text": _text(record, "text", "text")}
    if kind == "sft":
        return {"conversations": _conversation(record, "conversations", must_end_with_assistant=False)}
    return {"chosen": _conversation(record, "chosen", must_end_with_assistant=True),
            "rejected": _conversation(record, "rejected", must_end_with_assistant=True)}


def json_lines(path, error: type[Exception] = ValueError) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON value) for each non-blank line of a small jsonl file (prompts, questions, tool tasks);
    `error` is raised naming file:line on a line that is not JSON. Training data goes through iter_lines instead,
    which validates each record for its kind and can skip bad lines."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield line_no, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                raise error(f"{path}:{line_no}: invalid JSON: {e.msg} (column {e.colno})") from None


def iter_lines(path, kind: str, start: int = 0, end: int | None = None, first_line: int = 1,
               shard_index: int = 0, num_shards: int = 1) -> Iterator[tuple[int, dict | None, str | None]]:
    """(line number, clean record, None) for a good line, (line number, None, problem) for a bad one.

    Blank lines are skipped. Lines are decoded one at a time so that one bad byte costs one line.
    start/end: read only the lines that begin in this byte range (start at a line start, numbered from
    first_line; see line_ranges). shard_index/num_shards: only every num_shards-th non-blank line, the others
    skipped before they are decoded or parsed.
    """
    check_kind(kind)
    ordinal = -1
    with open(path, "rb") as f:
        f.seek(start)
        position = start
        for line_no, raw in enumerate(f, start=first_line):
            if end is not None and position >= end:
                break
            position += len(raw)
            if not raw.strip():
                continue
            ordinal += 1
            if ordinal % num_shards != shard_index:
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield line_no, None, f"invalid UTF-8 at byte {e.start}"
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as e:
                yield line_no, None, f"invalid JSON: {e.msg} (column {e.colno})"
                continue
            try:
                yield line_no, validate(kind, record), None
            except _Invalid as e:
                yield line_no, None, str(e)


def line_ranges(path, n: int, chunk: int = 1 << 24) -> list[tuple[int, int, int]]:
    """The file cut into about n byte ranges at line starts: [(start, end, number of the first line)], for
    validating the ranges in parallel with iter_lines. One pass that only counts newlines."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        cuts = [0]
        for k in range(1, n):
            f.seek(max(cuts[-1], size * k // n))
            if f.tell() > 0:
                f.seek(f.tell() - 1)
                f.readline()  # to the start of the next line (stays put if already at one)
            if f.tell() < size and f.tell() > cuts[-1]:
                cuts.append(f.tell())
        cuts.append(size)
        ranges, line = [], 1
        for start, end in zip(cuts[:-1], cuts[1:]):
            ranges.append((start, end, line))
            f.seek(start)
            remaining = end - start
            while remaining:
                block = f.read(min(chunk, remaining))
                line += block.count(b"\n")
                remaining -= len(block)
    return ranges


class Records(NamedTuple):
    records: list[dict]
    n_bad_lines: int
    first_error: DataError | None


def load_records(kind: str, path, skip_bad_lines: bool = False) -> Records:
    """All good records of a file, in file order.

    The first bad line raises DataError unless skip_bad_lines, in which case bad lines are
    counted and the first one is kept as `first_error`.
    """
    records, n_bad, first_error = [], 0, None
    for line_no, record, problem in iter_lines(path, kind):
        if problem is None:
            records.append(record)
            continue
        error = DataError.at(path, line_no, problem)
        if not skip_bad_lines:
            raise error
        n_bad += 1
        first_error = first_error or error
    return Records(records, n_bad, first_error)


def skipped_lines_message(path, n_bad: int, first_error: DataError) -> str:
    return f"skipped {n_bad} bad line{'s' if n_bad != 1 else ''} in {path} (first: {first_error})"


def file_signature(path) -> dict:
    """What identifies a file's contents for caching: absolute path, size and modification time."""
    stat = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
