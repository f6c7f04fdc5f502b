"""The tool loop: a model answers, its tool calls run, their results go back as `tool` turns, and it answers
again, until it replies without calls or the limit of calls is reached.

  result = run_tool_loop(model, tokenizer, [{"role": "user", "content": "What is 37 * 12?"}],
                         builtin_toolbox(), open_thinking=False, max_tool_calls=4)
  result.answer        # the final reply's content
  result.messages      # the conversation with the assistant turns (and their tool_calls) and tool turns added
  result.calls         # [(call, ToolResult)] in order

Each round renders the conversation with the tokenizer's chat template
(`apply_chat_template(messages, tools=..., open_thinking=..., add_generation_prompt=True)`), generates, and reads
the reply back with inference.chat_format.parse_assistant. The chat CLI (eval_model.py --tools),
scripts/eval_toolcall.py and the demo report use this one function; RL rollouts can too (pass `generate_fn`).

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


def run_tool_loop(model, tokenizer, messages, toolbox: Toolbox | None = None, *, open_thinking=None,
                  max_tool_calls: int = 4, generate_fn=None, on_reply=None, on_result=None, **sampling) -> LoopResult:
    """Run the loop (see the module docstring). `generate_fn(prompt_text) -> generated text` replaces the default
    (inference.generation.generate with `sampling`: max_new_tokens, temperature, top_p, ...), e.g. to stream;
    `on_reply(AssistantReply)` and `on_result(call, ToolResult)` are told about each step as it happens."""
    toolbox = toolbox if toolbox is not None else Toolbox()
    if generate_fn is None:
        def generate_fn(prompt):
            return generate(model, tokenizer, prompt, **sampling)
    messages = [dict(m) for m in messages]
    calls, texts, made = [], [], 0
    while True:
        text = generate_fn(render_prompt(tokenizer, messages, toolbox.schemas, open_thinking))
        texts.append(text)
        reply = parse_assistant(text, thinking=bool(open_thinking))
        messages.append(reply.message())
        if on_reply:
            on_reply(reply)
        if not reply.tool_calls or not toolbox:  # an answer (calls with no tools offered are left unanswered)
            return LoopResult(reply, messages, calls, texts, "stop")
        if made >= max_tool_calls:
            return LoopResult(reply, messages, calls, texts, "max_tool_calls")
        for call in reply.tool_calls:
            if made < max_tool_calls:
                result = toolbox.run(call)
                made += 1
            else:
                result = ToolResult.error(call["name"], f"limit of {max_tool_calls} tool calls reached: answer with "
                                                        f"what you have")
            calls.append((call, result))
            messages.append({"role": "tool", "content": result.content})
            if on_result:
                on_result(call, result)
