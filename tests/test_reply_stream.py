"""inference/reply_stream.py: the streamed split of a reply into reasoning, content and tool calls agrees with
chat_format.parse_assistant's split of the whole text, however the text is cut into pieces."""
import pytest

from inference.chat_format import parse_assistant
from inference.reply_stream import ReplySplitter, split_reply

CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
CASES = [  # (text, the prompt opened <think>)
    ("  Hello world \n", False),
    ("你好！我是 MiniMind。\n", False),
    ("step 1\nstep 2\n</think>\n\nThe answer is 4.", True),
    ("<think>\nhmm, 6*7\n</think>\n<answer>42</answer>", False),  # MiniMind2-style reasoning reply
    ("<think>\nagain\n</think>\n\nok", True),  # the model reopens the block the prompt opened
    ("Let me add.\n" + CALL, False),
    ("I should add them.\n</think>\n\n" + CALL, True),
    ('<tool_call>{"name":"f","arguments":"{\\"x\\": 1}"}</tool_call>\n'
     '<tool_call>\n{"type": "function", "function": {"name": "g", "arguments": {}}}\n</tool_call>', False),
    ("text\n" + CALL + "\nmore text", False),
    ("before <tool_call>{not json}</tool_call> after", False),
    ('x <tool_call>{"name": "f"', False),  # unclosed call
    ("still thinking, cut off", True),  # unclosed think
    ("<think>never closed", False),
    ("a < b and <tool> x </thinking> <answer", False),  # tag-like text that is no tag
    ("<thi", False),
    ("", False),
    ("\n\n", True),
]


def parts(reply):
    return reply.content, reply.reasoning_content, reply.tool_calls, reply.problems


def streamed(pieces, thinking, tool_calls=True):
    """Feed `pieces`; the joined events by kind, and the splitter's own reply."""
    splitter = ReplySplitter(thinking, tool_calls)
    events = [e for piece in pieces for e in splitter.feed(piece)] + splitter.finish()
    text = {kind: "".join(v for k, v in events if k == kind) for kind in ("reasoning", "content")}
    calls = [v for k, v in events if k == "tool_call"]
    return (text["content"], text["reasoning"] or None, calls), splitter.reply()


@pytest.mark.parametrize("text, thinking", CASES)
def test_whole_text_split_equals_parse_assistant(text, thinking):
    assert parts(split_reply(text, thinking)) == parts(parse_assistant(text, thinking))


@pytest.mark.parametrize("text, thinking", CASES)
def test_any_cut_into_pieces_streams_the_same_split(text, thinking):
    want = parse_assistant(text, thinking)
    wanted = (want.content, want.reasoning_content, want.tool_calls)
    cuts = [[text[:i], text[i:j], text[j:]] for i in range(len(text) + 1) for j in range(i, len(text) + 1, 3)]
    cuts.append(list(text))  # one character at a time
    for pieces in cuts:
        got, reply = streamed(pieces, thinking)
        assert got == wanted, pieces
        assert parts(reply) == parts(want)


def test_tags_arriving_as_whole_pieces():
    pieces = ["<think>", "\n", "hmm", "\n", "</think>", "\n\n", "Sure", ".", "\n", "<tool_call>", "\n",
              '{"name": "add", ', '"arguments": {"a": 1}}', "\n", "</tool_call>"]
    got, _ = streamed(pieces, thinking=False)
    assert got == ("Sure.", "hmm", [{"name": "add", "arguments": {"a": 1}}])


def test_text_streams_as_it_comes_and_only_possible_tags_are_held():
    splitter = ReplySplitter()
    assert splitter.feed("Hello wor") == [("content", "Hello wor")]  # not held until the end
    assert splitter.feed("ld <tool") == [("content", "ld")]  # " <tool" may become <tool_call>
    assert splitter.feed("_call>\n{\"name\": \"f\", \"arg") == []  # inside a call: nothing until it closes
    assert splitter.feed("uments\": {}}\n</tool_call>") == [("tool_call", {"name": "f", "arguments": {}})]
    # not a tag after all; the space held before the call comes back with it, as parse_assistant keeps it
    assert splitter.feed(" <tools are fun") == [("content", "  <tools are fun")]
    assert splitter.finish() == []

    thinking = ReplySplitter(thinking=True)
    assert thinking.feed("plan: a\n</thi") == [("reasoning", "plan: a")]
    assert thinking.feed("nk>\n\nAnswer") == [("content", "Answer")]


def test_tool_calls_off_leaves_blocks_in_the_content():
    text = "Let me add.\n" + CALL
    reply = split_reply(text, tool_calls=False)
    assert reply.content == text and reply.tool_calls == [] and not reply.problems
    got, _ = streamed(list(text), thinking=False, tool_calls=False)
    assert got == (text, None, [])


def test_feed_after_finish_is_an_error():
    splitter = ReplySplitter()
    splitter.finish()
    with pytest.raises(RuntimeError):
        splitter.feed("x")
