"""A reply split into reasoning, content and tool calls while it is being generated, for streamed answers.

chat_format.parse_assistant splits a finished reply; ReplySplitter does the same split piece by piece, so that a
server can stream the think part as `reasoning_content`, the answer as `content` and each tool call as soon as its
`</tool_call>` arrives. Tags may arrive whole (single tokens) or split across pieces: text that could still grow into
a tag is held back until it can be told apart. On a well-formed reply the streamed parts, joined, equal
parse_assistant's split of the whole text (the tests check this over every way of cutting the text into pieces);
one difference on malformed replies: a `</think>` in the answer part of a reply that did not start inside a think
block is left in the content (the content before it has been streamed already and cannot be taken back)."""
import json

from .chat_format import (ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN, TOOL_CALL_CLOSE, TOOL_CALL_OPEN,
                          AssistantReply, FormatError, normalize_call)


def _partial_tag(text: str, tags) -> int:
    """Length of the longest tail of `text` that is a proper beginning of one of `tags` (it may become that tag)."""
    return max((k for tag in tags for k in range(1, len(tag)) if text.endswith(tag[:k])), default=0)


class ReplySplitter:
    """Feed the generated text piece by piece; each feed() returns the events it completes:
    ("reasoning", text), ("content", text) or ("tool_call", {"name", "arguments": dict}). finish() returns the
    rest at the end; reply() the whole split as an AssistantReply.

    `thinking`: the prompt opened a <think> block, so the text starts inside the reasoning.
    `tool_calls`: read <tool_call> blocks as calls (off: they are plain content, as when a request offers no tools).
    Like parse_assistant, both parts are stripped of surrounding whitespace: leading whitespace is dropped and
    trailing whitespace is held until more text of the same part follows."""

    def __init__(self, thinking: bool = False, tool_calls: bool = True):
        self.mode = "reasoning" if thinking else "start"  # start | reasoning | content | answer | call | done
        self.parse_calls = tool_calls
        self.buffer = ""  # text received but not yet classified
        self.after_call = "content"  # the mode a <tool_call> block returns to
        self.started = {"reasoning": False, "content": False}
        self.pending = {"reasoning": "", "content": ""}  # trailing whitespace held back
        self.parts = {"reasoning": [], "content": []}
        self.calls, self.problems = [], []
        self.finished = False

    # -- output
    def _text(self, kind: str, text: str, events: list):
        if not self.started[kind]:
            text = text.lstrip()
        if not text:
            return
        body = text.rstrip()
        if not body:
            self.pending[kind] += text
            return
        out = self.pending[kind] + body
        self.started[kind], self.pending[kind] = True, text[len(body):]
        self.parts[kind].append(out)
        events.append((kind, out))

    def _call_block(self, inner: str, events: list):
        try:
            call = normalize_call(json.loads(inner.strip()), "tool_call")
        except (json.JSONDecodeError, FormatError) as e:
            self.problems.append(f"unreadable <tool_call>: {e}")
            self._text("content", TOOL_CALL_OPEN + inner + TOOL_CALL_CLOSE, events)
            return
        self.calls.append(call)
        events.append(("tool_call", call))

    # -- input
    def feed(self, piece: str) -> list:
        if self.finished:
            raise RuntimeError("feed() after finish()")
        self.buffer += piece or ""
        events = []
        while self._step(events):
            pass
        return events

    def _step(self, events) -> bool:
        """Consume what can be decided from the buffer; True when the mode changed (look again)."""
        mode, buf = self.mode, self.buffer
        if mode == "start":  # a reply may open its own think block (MiniMind2-style reasoning models)
            head = buf.lstrip()
            if head.startswith(THINK_OPEN):
                self.mode, self.buffer = "reasoning", head[len(THINK_OPEN):]
                return True
            self.buffer = head
            if not head or THINK_OPEN.startswith(head):
                return False  # whitespace, or maybe the start of <think>
            self.mode = "content"
            return True
        if mode == "reasoning":
            if not self.started["reasoning"]:  # a think block the prompt opened may be opened again by the model
                head = buf.lstrip()
                if head.startswith(THINK_OPEN):
                    buf = self.buffer = head[len(THINK_OPEN):]
                elif head and THINK_OPEN.startswith(head):
                    return False
            end = buf.find(THINK_CLOSE)
            if end >= 0:
                self._text("reasoning", buf[:end], events)
                self.mode, self.buffer = "content", buf[end + len(THINK_CLOSE):]
                return True
            keep = _partial_tag(buf, [THINK_CLOSE])
            self._text("reasoning", buf[:len(buf) - keep], events)
            self.buffer = buf[len(buf) - keep:]
            return False
        if mode in ("content", "answer"):
            tags = ([TOOL_CALL_OPEN] if self.parse_calls else []) + [ANSWER_OPEN if mode == "content" else ANSWER_CLOSE]
            found = [(buf.find(tag), tag) for tag in tags if tag in buf]
            if found:
                at, tag = min(found)
                self._text("content", buf[:at], events)
                self.buffer = buf[at + len(tag):]
                if tag == TOOL_CALL_OPEN:
                    self.mode, self.after_call = "call", mode
                else:  # <answer>: the answer block is the content; </answer>: what follows it is dropped
                    self.mode = "answer" if tag == ANSWER_OPEN else "done"
                return True
            keep = _partial_tag(buf, tags)
            self._text("content", buf[:len(buf) - keep], events)
            self.buffer = buf[len(buf) - keep:]
            return False
        if mode == "call":
            end = buf.find(TOOL_CALL_CLOSE)
            if end < 0:
                return False
            self._call_block(buf[:end], events)
            self.mode, self.buffer = self.after_call, buf[end + len(TOOL_CALL_CLOSE):]
            return True
        self.buffer = ""  # done
        return False

    def finish(self) -> list:
        """The end of the text: whatever was held back, as what it turned out to be."""
        if self.finished:
            return []
        self.finished = True
        events, buf, self.buffer = [], self.buffer, ""
        if self.mode == "reasoning":
            self._text("reasoning", buf, events)
            self.problems.append("unclosed <think>")
        elif self.mode == "call":
            self._text("content", TOOL_CALL_OPEN + buf, events)
            self.problems.append("unclosed <tool_call>")
        elif self.mode != "done":
            self._text("content", buf, events)
        return events

    def reply(self) -> AssistantReply:
        self.finish()
        return AssistantReply(content="".join(self.parts["content"]),
                              reasoning_content="".join(self.parts["reasoning"]) or None,
                              tool_calls=list(self.calls), problems=list(self.problems))


def split_reply(text: str, thinking: bool = False, tool_calls: bool = True) -> AssistantReply:
    """The whole-text split by ReplySplitter (parse_assistant's, with tool-call parsing optional)."""
    splitter = ReplySplitter(thinking, tool_calls)
    splitter.feed(text)
    return splitter.reply()
