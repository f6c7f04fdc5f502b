"""Talk to a trained MiniMind model.

Three ways to run it:
  automatic test   no --prompt and a terminal on stdin: a few built-in prompts suited to the model
                   (--model_mode, and the LoRA adapter if its name is known), then an interactive chat
  interactive chat --chat: straight into the chat (Ctrl-D or `exit` quits, `/clear` forgets the history)
  scripted         --prompt "..." (repeatable), or one prompt per line on stdin when stdin is not a
                   terminal: each answer is printed, then the program exits (it never waits for typing)

  python eval_model.py                               # out/full_sft_512, automatic test then chat
  python eval_model.py --model_mode 3                # the reasoning model out/reason_512
  python eval_model.py --lora_name lora_medical      # out/full_sft_512 + out/lora/lora_medical_512
  python eval_model.py --model_path out/rlhf_768 --prompt "你好" --temperature 0
  printf '你好\\n你是谁？\\n' | python eval_model.py --history_cnt 2
  python eval_model.py --model_mode 3 --open_thinking --prompt "Add 2, 5 and 7."   # thinking switch on
  python eval_model.py --model_mode 3 --tools all --prompt "What is 37 times 12?"  # the tool loop

The thinking switch (--open_thinking / --no-open_thinking) and --tools use MiniMind-3's chat format: the chat
template lists the tools in the system turn and opens (or closes) the <think> block; each reply is read back,
its <tool_call> blocks run (the built-ins are safe: an arithmetic parser, unit conversion, demo-world lookups,
each with time and size limits), every call is printed as `🔧 name({arguments}) → {result}`, the results go
back to the model as tool turns, and it answers again, until it answers without a call or --max_tool_calls runs
out.

Answers go to stdout, loading information to stderr. A pretrained model (--model_mode 0) continues the
prompt as plain text instead of chatting. Reasoning output: on a terminal the <think>…</think> part is
shown dim between "[think]" and "[/think]" and the <answer> tags are hidden; when stdout is not a terminal
(a pipe or a file) the text is printed exactly as generated, tags included.
"""
import argparse
import json
import os
import random
import sys

import numpy as np
import torch

from inference.checkpoints import ModelNotFound, chats, model_modes, modes_table
from inference.cli import HelpFormatter, add_model_arguments, add_sampling_arguments
from inference.generation import GenerationStream, build_prompt
from inference import loading
from inference.loading import describe, quiet_libraries
from inference.reasoning import ANSWER_CLOSE, ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from inference.tool_loop import run_tool_loop
from inference.tools import BUILTIN_TOOLS, load_toolbox

# Built-in prompts for the automatic test, per kind of model.
CONTINUATION_PROMPTS = [  # pretrained model: beginnings of sentences to continue
    "中国的首都是",
    "水在一个标准大气压下的沸点是",
    "太阳系中体积最大的行星是",
    "人工智能研究的主要目标是",
    "春天到了，公园里",
]
CHAT_PROMPTS = [
    "你好，请介绍一下你自己。",
    "为什么天空看起来是蓝色的？",
    "请用Python写一个判断素数的函数。",
    "给想学习机器学习的初学者一些建议。",
    "把“知识就是力量”翻译成英文。",
    "Explain in two sentences what a large language model is.",
]
REASON_PROMPTS = [
    "一个笼子里有鸡和兔共10只，脚共28只，鸡和兔各有几只？",
    "小明比小红大3岁，五年后两人年龄之和是29岁，小红现在几岁？",
    "9.11和9.9哪个数更大？",
    "如果所有的猫都怕水，而汤姆是一只猫，汤姆怕水吗？",
]
TOOL_PROMPTS = [  # --tools: questions the built-in tools answer
    "What is 37 times 12?",
    "Convert 12 km to m.",
    "What is the capital of Kenya?",
    "What is the capital of Japan, and what colour is a plum?",
    "What is 23 times 17, plus 45?",
]
LORA_PROMPTS = {
    "lora_identity": ["你是谁？", "你叫什么名字？", "Who are you?", "Who created you?", "你是ChatGPT吗？"],
    "lora_medical": [
        "我最近总是失眠，有什么改善睡眠的办法？",
        "高血压患者在饮食上需要注意什么？",
        "感冒发烧时应该吃抗生素吗？",
        "长期久坐对身体有哪些危害？",
    ],
}

DIM, RESET = "\033[2m", "\033[0m"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, epilog=modes_table(),
                                     formatter_class=HelpFormatter)
    add_model_arguments(parser)
    add_sampling_arguments(parser, max_new_tokens=512)
    g = parser.add_argument_group("conversation")
    g.add_argument("--prompt", action="append", default=None, help="a prompt to answer (repeatable); prints the answers and exits")
    g.add_argument("--chat", action="store_true", help="skip the automatic test and start the interactive chat")
    g.add_argument("--history_cnt", type=int, default=0,
                   help="multi-turn memory: keep the last N messages (user and assistant turns) as context; 0 = every prompt stands alone")
    g.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True, help="print answers as they are generated")
    g.add_argument("--seed", type=int, default=None, help="reseed before every answer so sampled answers are reproducible")
    g.add_argument("--open_thinking", "--think", action=argparse.BooleanOptionalAction, default=None,
                   help="the thinking switch (the chat template's open_thinking): on, the reply starts inside a <think> "
                        "block and reasons before answering; off (--no-open_thinking), the template closes an empty "
                        "one and the model answers directly; unset: the template's default (off in MiniMind-3's)")
    t = parser.add_argument_group("tools (the tool loop: inference/tool_loop.py)")
    t.add_argument("--tools", default=None, metavar="SPEC",
                   help="offer tools to the model and run its calls: `all` (the built-ins), built-in names separated by "
                        f"commas ({', '.join(BUILTIN_TOOLS)}), or a JSON file of OpenAI function schemas (functions "
                        "that are not built-ins are offered but answer \"no implementation\")")
    t.add_argument("--max_tool_calls", type=int, default=4,
                   help="tool calls run per answer; calls beyond it get an error result and the model answers once more")
    args = parser.parse_args(argv)
    if args.history_cnt < 0 or args.max_new_tokens < 1 or args.temperature < 0 or not 0 <= args.top_p <= 1:
        parser.error("need --history_cnt >= 0, --max_new_tokens >= 1, --temperature >= 0 and 0 <= --top_p <= 1")
    if args.max_tool_calls < 0:
        parser.error("--max_tool_calls must be >= 0")
    try:
        args.toolbox = load_toolbox(args.tools)
    except ValueError as e:
        parser.error(f"--tools: {e}")
    return args


# ---------------------------------------------------------------- display

class ReasonFormatter:
    """Shows the reasoning part of an answer distinguishably on a terminal: the <think> section dim, between
    [think] and [/think], the <answer> tags hidden. Elsewhere the text passes through unchanged. The tags are
    single tokens, so a streamed piece always holds a whole tag."""

    def __init__(self, styled: bool):
        self.styled = styled

    def __call__(self, piece: str) -> str:
        if not self.styled:
            return piece
        return (piece.replace(THINK_OPEN, f"{DIM}[think] ").replace(THINK_CLOSE, f" [/think]{RESET}")
                .replace(ANSWER_OPEN, "").replace(ANSWER_CLOSE, ""))


def use_color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- one turn

class Session:
    """A loaded model plus the conversation so far."""

    def __init__(self, model, tokenizer, args):
        self.model, self.tokenizer, self.args = model, tokenizer, args
        self.chat = chats(args.model_mode)
        self.history = []
        self.format = ReasonFormatter(use_color())

    def messages_for(self, prompt: str):
        kept = self.history[-self.args.history_cnt:] if self.args.history_cnt else []
        return kept + [{"role": "user", "content": prompt}]

    @property
    def uses_tool_loop(self) -> bool:
        """Tools offered or the thinking switch set: the chat goes through the tool loop (MiniMind-3's format)."""
        return self.chat and (bool(self.args.toolbox) or self.args.open_thinking is not None)

    def answer(self, prompt: str, remember: bool = True) -> str:
        """Generate and print the answer to `prompt`; returns its text."""
        args = self.args
        if args.seed is not None:
            seed_everything(args.seed)
        if self.uses_tool_loop:
            return self.answer_with_tools(prompt, remember)
        text = build_prompt(self.tokenizer, self.messages_for(prompt), chat=self.chat)
        answer = self.stream_reply(text)
        if remember and args.history_cnt:
            self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        return answer

    def stream_reply(self, text: str, thinking: bool = False) -> str:
        """Generate from the prompt `text`, printing as it goes; returns the generated text. `thinking`: the
        prompt opened a <think> block, so the reply starts inside it."""
        args = self.args
        stream = GenerationStream(self.model, self.tokenizer, text, max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, top_p=args.top_p,
                                  repetition_penalty=args.repetition_penalty)
        print("🤖: ", end="", flush=True)
        if thinking and self.format.styled:
            print(f"{DIM}[think] ", end="", flush=True)
        try:
            for piece in stream:
                if args.stream:
                    print(self.format(piece), end="", flush=True)
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the program
            print(" [interrupted]", end="")
        finally:
            stream.close()  # the generation thread ends here, whatever happened; the text so far is kept
        answer = stream.text
        if not args.stream:
            print(self.format(answer), end="")
        if self.format.styled and answer.count(THINK_OPEN) + thinking > answer.count(THINK_CLOSE):
            print(RESET, end="")  # an unfinished think part: end the dim style
        print("\n", flush=True)
        return answer

    def answer_with_tools(self, prompt: str, remember: bool = True) -> str:
        """The tool loop: each reply is streamed, each call and its result printed on one line; returns the final
        answer's content. The history keeps the whole exchange (assistant calls, tool results, the answer)."""
        args = self.args
        thinking = bool(args.open_thinking)

        def show_result(call, result):
            arguments = json.dumps(call["arguments"], ensure_ascii=False)
            print(f"🔧 {call['name']}({arguments}) → {result.content}\n", flush=True)

        messages = self.messages_for(prompt)
        result = run_tool_loop(self.model, self.tokenizer, messages, args.toolbox, open_thinking=args.open_thinking,
                               max_tool_calls=args.max_tool_calls,
                               generate_fn=lambda text: self.stream_reply(text, thinking), on_result=show_result)
        if result.finish_reason == "max_tool_calls":
            print(f"(stopped: the model kept calling tools after --max_tool_calls {args.max_tool_calls})\n", flush=True)
        if remember and args.history_cnt:
            self.history += result.messages[len(messages) - 1:]
        return result.answer


# ---------------------------------------------------------------- the three modes

def builtin_prompts(args) -> list[str]:
    if getattr(args, "toolbox", None) and chats(args.model_mode):
        return TOOL_PROMPTS
    if args.lora_name:
        for name, prompts in LORA_PROMPTS.items():
            if name in os.path.basename(os.path.normpath(args.lora_name)):
                return prompts
    if not chats(args.model_mode):
        return CONTINUATION_PROMPTS
    if model_modes()[args.model_mode].name in ("reason", "grpo"):
        return REASON_PROMPTS
    return CHAT_PROMPTS


def run_scripted(session: Session, prompts):
    for prompt in prompts:
        prompt = prompt.strip()
        if prompt:
            print(f"👶: {prompt}", flush=True)
            session.answer(prompt)


def run_automatic_test(session: Session):
    prompts = builtin_prompts(session.args)
    print(f"— automatic test: {len(prompts)} built-in prompts —\n", flush=True)
    for prompt in prompts:  # each stands alone: the test does not build a conversation
        print(f"👶: {prompt}", flush=True)
        session.answer(prompt, remember=False)


def run_chat(session: Session):
    memory = f"keeps the last {session.args.history_cnt} messages" if session.args.history_cnt else "single-turn"
    print(f"— chat ({memory}; Ctrl-D or `exit` quits, `/clear` forgets the history, Ctrl-C stops an answer) —\n", flush=True)
    while True:
        try:
            prompt = input("👶: ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if prompt in ("exit", "quit", "/exit", "/quit"):
            return
        if prompt == "/clear":
            session.history.clear()
            print("(history cleared)\n")
        elif prompt:
            session.answer(prompt)


# ---------------------------------------------------------------- main

def load(args):
    """Resolve the checkpoint and adapter, load them; ModelNotFound for anything missing."""
    model, tokenizer, path, lora = loading.load(args.model_path, args.model_mode, args.lora_name, args.out_dir, args.dim,
                                        args.use_moe, args.device, args.dtype)
    print(describe(model, path, lora), file=sys.stderr)
    if args.n_layers is not None and args.n_layers != model.config.num_hidden_layers:
        print(f"note: --n_layers {args.n_layers} given, but {path} has {model.config.num_hidden_layers} layers "
              f"(its config.json wins)", file=sys.stderr)
    return model, tokenizer


def main(argv=None) -> int:
    args = parse_args(argv)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="replace")  # never die on a terminal that cannot show a character
    quiet_libraries()
    try:
        model, tokenizer = load(args)
    except ModelNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    session = Session(model, tokenizer, args)
    try:
        if args.prompt:
            run_scripted(session, args.prompt)
        elif not sys.stdin.isatty():
            run_scripted(session, sys.stdin)
        else:
            if not args.chat:
                run_automatic_test(session)
            run_chat(session)
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
