"""Reading and validating MiniMind jsonl files.

Kinds and their record shapes:
  pretrain  {"text": str}
  sft       {"conversations": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
            (reasoning and LoRA files use the sft shape too)
  dpo       {"chosen": [turns], "rejected": [turns]}, both ending with an assistant turn

Keys other than these are ignored.
"""
import json
from pathlib import Path
from typing import Iterator, NamedTuple

KINDS = ("pretrain", "sft", "dpo")
ROLES = ("system", "user", "assistant")


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


def _conversation(record: dict, key: str, must_end_with_assistant: bool) -> list[dict]:
    if key not in record:
        raise _Invalid(f"{key}: missing")
    turns = record[key]
    if not isinstance(turns, list):
        raise _Invalid(f"{key}: expected an array of turns, got {_json_type(turns)}")
    if not turns:
        raise _Invalid(f"{key}: empty")
    clean = []
    for i, turn in enumerate(turns):
        field = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise _Invalid(f"{field}: expected an object with role and content, got {_json_type(turn)}")
        role = _text(turn, "role", f"{field}.role")
        if role not in ROLES:
            raise _Invalid(f"{field}.role: unknown role {role!r} (expected {'/'.join(ROLES)})")
        if role == "system" and i > 0:
            raise _Invalid(f"{field}.role: a system turn is only allowed first")
        clean.append({"role": role, "content": _text(turn, "content", f"{field}.content")})
    if not any(turn["role"] == "assistant" for turn in clean):
        raise _Invalid(f"{key}: no assistant turn")
    if must_end_with_assistant and clean[-1]["role"] != "assistant":
        raise _Invalid(f"{key}: must end with an assistant turn")
    return clean


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
