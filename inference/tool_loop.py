"""The tool loop: a model answers, its tool calls run, their results go back as `tool` turns, and it answers
again, until it replies without calls or the limit of calls is reached.

  result = run_tool_loop(model, tokenizer, [{"role": "user", "content": "What is 37 * 12?"}],
                         builtin_toolbox(), open_thinking=False, max_tool_calls=4)
  result.answer        # the final reply's content
  result.messages      # the conversation with the assistant turns (and their tool_calls) and tool turns added
  result.calls         # [(call, ToolResult)] in order

Each round renders the conversation with the tokenizer's chat template
(`apply_chat_template(messages, tools=..., open_thinking=..., add_generation_prompt=True)`), generates, and reads
the reply back with inference.chat_format.parse_assistant. The chat CLI (eval_model.py --tools) runs one loop
(run_tool_loop); scripts/eval_toolcall.py and the demo report run one per task in lockstep, a batched generation a
round (ToolLoop, run_tool_loops).

The limit: calls beyond `max_tool_calls` are not run; each gets the error result "limit of N tool calls reached"
and the model answers once more; if it still calls tools, the loop ends there (finish_reason "max_tool_calls").
"""
from dataclasses import dataclass, field

from .chat_format import AssistantReply, parse_assistant
from .generation import generate
from .tools import Toolbox, ToolResult


def render_prompt(tokenizer, messages, tools=None, open_thinking=None) -> str:
    """The conversation with the assistant turn opened. `tools`: schemas listed in the system turn (None/[]: none);
    `open_thinking`: True opens a <think> block, False closes an empty one, None leaves it to the template's
    default. Templates that do not know these variables ignore them."""
    kwargs = {}
    if tools:
        kwargs["tools"] = tools
    if open_thinking is not None:
        kwargs["open_thinking"] = bool(open_thinking)
    if not tokenizer.chat_template:  # a bare tokenizer: ChatML by hand, as inference.generation.build_prompt does
        return "".join(f"<|im_start|>{m['role']}\n{m.get('content') or ''}<|im_end|>\n" for m in messages) \
            + "<|im_start|>assistant\n"
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


@dataclass
class LoopResult:
    reply: AssistantReply  # the last reply
    messages: list  # the conversation given plus every assistant and tool turn added
    calls: list = field(default_factory=list)  # [(call, ToolResult)]
    texts: list = field(default_factory=list)  # the raw generated text of every round
    finish_reason: str = "stop"  # "stop" | "max_tool_calls"

    @property
    def answer(self) -> str:
        return self.reply.content

    @property
    def reasoning(self) -> str | None:
        return self.reply.reasoning_content


class ToolLoop:
    """The loop one round at a time, for driving many loops in lockstep (run_tool_loops) or one (run_tool_loop):
    `prompt` is the text to generate from next, `step(text)` takes that generation, runs its calls and renders the
    next prompt; once the loop has ended, `prompt` is None and `result` is set."""

    def __init__(self, tokenizer, messages, toolbox: Toolbox | None = None, *, open_thinking=None,
                 max_tool_calls: int = 4, on_reply=None, on_result=None):
        self.tokenizer, self.open_thinking, self.max_tool_calls = tokenizer, open_thinking, max_tool_calls
        self.toolbox = toolbox if toolbox is not None else Toolbox()
        self.on_reply, self.on_result = on_reply, on_result
        self.messages = [dict(m) for m in messages]
        self.calls, self.texts, self.made = [], [], 0
        self.result = None
        self.prompt = self._render()

    def _render(self) -> str:
        return render_prompt(self.tokenizer, self.messages, self.toolbox.schemas, self.open_thinking)

    def _end(self, reply, reason: str):
        self.result = LoopResult(reply, self.messages, self.calls, self.texts, reason)
        self.prompt = None

    def step(self, text: str):
        if self.result is not None:
            raise RuntimeError("the tool loop has ended")
        self.texts.append(text)
        reply = parse_assistant(text, thinking=bool(self.open_thinking))
        self.messages.append(reply.message())
        if self.on_reply:
            self.on_reply(reply)
        if not reply.tool_calls or not self.toolbox:  # an answer (calls with no tools offered are left unanswered)
            return self._end(reply, "stop")
        if self.made >= self.max_tool_calls:
            return self._end(reply, "max_tool_calls")
        for call in reply.tool_calls:
            if self.made < self.max_tool_calls:
                result = self.toolbox.run(call)
                self.made += 1
            else:
                result = ToolResult.error(call["name"], f"limit of {self.max_tool_calls} tool calls reached: answer "
                                                        f"with what you have")
            self.calls.append((call, result))
            self.messages.append({"role": "tool", "content": result.content})
            if self.on_result:
                self.on_result(call, result)
        self.prompt = self._render()


def run_tool_loop(model, tokenizer, messages, toolbox: Toolbox | None = None, *, open_thinking=None,
                  max_tool_calls: int = 4, generate_fn=None, on_reply=None, on_result=None, **sampling) -> LoopResult:
    """Run the loop (see the module docstring). `generate_fn(prompt_text) -> generated text` replaces the default
    (inference.generation.generate with `sampling`: max_new_tokens, temperature, top_p, ...), e.g. to stream;
    `on_reply(AssistantReply)` and `on_result(call, ToolResult)` are told about each step as it happens."""
    if generate_fn is None:
        def generate_fn(prompt):
            return generate(model, tokenizer, prompt, **sampling)
    loop = ToolLoop(tokenizer, messages, toolbox, open_thinking=open_thinking, max_tool_calls=max_tool_calls,
                    on_reply=on_reply, on_result=on_result)
    while loop.prompt is not None:
        loop.step(generate_fn(loop.prompt))
    return loop.result


def run_tool_loops(loops: list[ToolLoop], generate_many) -> list[LoopResult]:
    """Many loops in lockstep: each round, one `generate_many(prompt texts) -> texts` call (a batched generation)
    for every loop still running. Each loop sees the same replies as run alone with the same generation."""
    while running := [loop for loop in loops if loop.prompt is not None]:
        texts = generate_many([loop.prompt for loop in running])
        for loop, text in zip(running, texts, strict=True):
            loop.step(text)
    return [loop.result for loop in loops]
