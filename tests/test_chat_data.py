"""MiniMind-3's conversation fields in data files: validation, lossless caching, and the training loss masks."""
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from dataset import DataError, build_dataset, load_records
from dataset.jsonl import template_messages
from dataset.samples import IGNORE_INDEX

ROOT = Path(__file__).resolve().parents[1]

ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"]}}}
CAPITAL = {"name": "capital", "parameters": {"type": "object", "properties": {"country": {"type": "string"}}}}
TOOLS = [ADD, {"type": "function", "function": CAPITAL}]


def tool_conversation(tools=TOOLS, calls=None, system="You can use tools."):
    """A MiniMind-3 record: tools on the system turn, a call, its result, the answer."""
    calls = calls if calls is not None else [{"name": "add", "arguments": {"a": 2, "b": 3}}]
    return {"conversations": [
        {"role": "system", "content": system, "tools": tools},
        {"role": "user", "content": "What is 2+3?"},
        {"role": "assistant", "content": "", "reasoning_content": "Use add.", "tool_calls": calls},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "2+3 = 5."}]}


GOOD_RECORDS = [
    tool_conversation(),
    tool_conversation(tools=json.dumps(TOOLS)),  # tools as a JSON string (MiniMind-3's loader keeps them so)
    tool_conversation(calls=json.dumps([{"name": "add", "arguments": {"a": 2, "b": 3}}])),
    tool_conversation(calls=[{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a":2,"b":3}'}}]),
    tool_conversation(system=""),  # a system turn that only lists tools
    {"conversations": [  # two calls, two results, then a second step
        {"role": "system", "content": "s", "tools": TOOLS},
        {"role": "user", "content": "Capital of France, and 1+1?"},
        {"role": "assistant", "content": None, "tool_calls": [{"name": "capital", "arguments": {"country": "France"}},
                                                              {"name": "add", "arguments": {"a": 1, "b": 1}}]},
        {"role": "tool", "content": "Paris"}, {"role": "tool", "content": "2"},
        {"role": "assistant", "content": "Checking once more.", "tool_calls": [{"name": "add", "arguments": "{}"}]},
        {"role": "tool", "content": ""},
        {"role": "assistant", "content": "Paris; 2."}]},
    {"conversations": [{"role": "user", "content": "1+1?"},
                       {"role": "assistant", "reasoning_content": "one and one", "content": "2"}]},
    {"conversations": [{"role": "user", "content": "1+1?"},  # MiniMind2 style
                       {"role": "assistant", "content": "<think>\none and one\n</think>\n<answer>\n2\n</answer>"}]},
]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(ROOT / "model"))


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
                    encoding="utf-8")
    return path


def as_template_messages(turns):
    """What MiniMind-3's loader hands its template: tools / tool_calls given as JSON strings parsed."""
    out = []
    for turn in turns:
        turn = {k: v for k, v in turn.items() if v is not None}
        for key in ("tools", "tool_calls"):
            if isinstance(turn.get(key), str):
                turn[key] = json.loads(turn[key])
        out.append(turn)
    return out


def test_minimind3_records_load_and_cache_losslessly(tmp_path, tok):
    """Every record renders, after validation and a round trip through the Arrow cache (map-style and streaming),
    to the same tokens as the original messages do."""
    path = write_jsonl(tmp_path / "m3.jsonl", GOOD_RECORDS)
    records = load_records("sft", path).records
    assert len(records) == len(GOOD_RECORDS)
    expected = [tok.apply_chat_template(as_template_messages(r["conversations"]), tokenize=True, return_dict=True)
                ["input_ids"] for r in GOOD_RECORDS]
    for record, ids in zip(records, expected):
        assert tok.apply_chat_template(template_messages(record["conversations"]), return_dict=True)["input_ids"] == ids
    for streaming in (False, True):
        rows = build_dataset("sft", path, tok, 1024, packing=False, cache_dir=str(tmp_path / "cache"),
                             streaming=streaming)
        samples = [sample for row in rows for sample in row]
        # a sample's inputs are the rendered tokens but the last (the newline after the final <|im_end|>)
        assert sorted(s["input_ids"] for s in samples) == sorted(ids[:-1] for ids in expected), streaming
    # what was given as a string is kept as that string
    assert records[1]["conversations"][0]["tools"] == json.dumps(TOOLS)
    assert records[3]["conversations"][2]["tool_calls"] == json.dumps(GOOD_RECORDS[3]["conversations"][2]["tool_calls"])


def _bad(turn_index, **fields):
    record = tool_conversation()
    record["conversations"][turn_index].update(fields)
    return record


BAD = [
    (_bad(0, tools='[{"type": "function", "function": {"name": "add"}'),
     "conversations[0].tools: not valid JSON: "),
    (_bad(0, tools=[{"description": "no name"}]), "conversations[0].tools[0]: a function schema needs a name"),
    (_bad(2, tool_calls='[{"name": "add", "arguments": {"a": 2}'), "conversations[2].tool_calls: not valid JSON: "),
    (_bad(2, tool_calls=[{"name": "add", "arguments": '{"a": 2'}]),
     "conversations[2].tool_calls[0]: arguments of 'add' are not valid JSON"),
    (_bad(2, tool_calls=[{"name": "multiply", "arguments": {}}]),
     "conversations[2].tool_calls[0]: calls 'multiply', which is not in tools (known: add, capital)"),
    (_bad(2, tool_calls=[{"arguments": {"a": 1}}]), "conversations[2].tool_calls[0]: a call without a name"),
    (_bad(2, tool_calls=[{"type": "function", "function": {"name": " "}}]),
     "conversations[2].tool_calls[0]: a call without a name"),
    (_bad(0, tools=None), "conversations[2].tool_calls[0]: calls 'add' but the conversation lists no tools"),
    (_bad(2, tool_calls=None), "conversations[2].content: empty"),
    ({"conversations": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "5"},
                        {"role": "assistant", "content": "ok"}]},
     "conversations[1]: a tool result with no call before it"),
    ({"conversations": tool_conversation()["conversations"][:4] + [{"role": "tool", "content": "6"}]},
     "conversations[4]: a tool result with no call before it"),
    (_bad(1, tools=TOOLS), "conversations[1].tools: only system turns carry tools"),
    (_bad(1, reasoning_content="hm"), "conversations[1].reasoning_content: only assistant turns carry"),
    (_bad(4, reasoning_content=["x"]), "conversations[4].reasoning_content: expected a string, got array"),
    (_bad(3, content=None), "conversations[3].content: expected a string, got null"),
    ({"conversations": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
     "conversations[1].role: unknown role 'bot' (expected system/user/assistant/tool)"),
]


@pytest.mark.parametrize("record, problem", BAD)
def test_bad_fields_name_file_line_and_field(tmp_path, tok, record, problem):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD_RECORDS[0], record])
    with pytest.raises(DataError) as error:
        load_records("sft", path)
    assert str(error.value).startswith(f"{path}:2: {problem}"), str(error.value)
    with pytest.raises(DataError) as built:
        build_dataset("sft", path, tok, 256, cache_dir=str(tmp_path / "cache"))
    assert str(built.value) == str(error.value)


def label_runs(tok, sample) -> list[str]:
    runs, run = [], []
    for label in sample["labels"] + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            run.append(label)
        elif run:
            runs.append(tok.decode(run))
            run = []
    return runs


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_training_masks_on_hand_made_conversations(tmp_path, tok, kind):
    """The loss covers what the assistant writes (reasoning, content, tool calls, end of turn) and nothing of the
    tools block, system, user or tool turns, nor an empty think block; DPO scores the last reply only."""
    conversation = tool_conversation()["conversations"] + [
        {"role": "user", "content": "And 2+2?"}, {"role": "assistant", "content": "<think>\ntwo twos\n</think>\n4"}]
    record = {"conversations": conversation} if kind == "sft" else {
        "chosen": conversation, "rejected": conversation[:-1] + [{"role": "assistant", "content": "5"}]}
    path = write_jsonl(tmp_path / "masks.jsonl", [record])
    rows = build_dataset(kind, path, tok, 1024, packing=False, cache_dir=str(tmp_path / "cache"))
    if kind == "sft":
        assert label_runs(tok, rows[0][0]) == [
            'Use add.\n</think>\n\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call><|im_end|>',
            "2+3 = 5.<|im_end|>",
            "two twos\n</think>\n\n4<|im_end|>"]
        sample = rows[0][0]
        context = tok.decode([t for t, l in zip(sample["input_ids"][1:], sample["labels"]) if l == IGNORE_INDEX])
        for unlearned in ("You can use tools.", "# Tools", '"name": "capital"', "What is 2+3?",
                          "<tool_response>\n5\n</tool_response>", "And 2+2?", "<think>\n\n</think>\n\n"):
            assert unlearned in context
    else:
        chosen, rejected = rows[0]
        assert label_runs(tok, chosen) == ["two twos\n</think>\n\n4<|im_end|>"]
        assert label_runs(tok, rejected) == ["5<|im_end|>"]


def test_minimind2_kit_files_still_validate(data_kit):
    for name in ("sft.jsonl", "reason.jsonl", "lora_identity.jsonl"):
        records = load_records("sft", data_kit / name)
        assert records.n_bad_lines == 0 and records.records
    assert load_records("dpo", data_kit / "dpo.jsonl").n_bad_lines == 0
