"""Training MiniMind's byte-level BPE tokenizer (`python scripts/train_tokenizer.py --help`): the fixed tokens and
chat template, reading texts from MiniMind's jsonl formats, training, saving, verifying, compression figures."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator

from inference.chat_format import (THINKING_OFF_PROMPT, THINKING_ON_PROMPT, TOOL_CALL_CLOSE, TOOL_CALL_OPEN,
                                   TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN)
from inference.reasoning import TAGS as REASONING_TAGS

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]
# Single tokens, so each tag costs one token and a loss weight keyed on its id hits only the tag. The reasoning tags
# keep ids 3-6 (older checkpoints and MiniMind2 data rely on them); the tool tags come after them.
TAG_TOKENS = list(REASONING_TAGS) + [TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE]
ALL_FIXED_TOKENS = SPECIAL_TOKENS + TAG_TOKENS  # ids 0..10 in this order

MODEL_MAX_LENGTH = 32768

# The system turn's tools block. These strings are part of MiniMind-3's chat format (its models are trained on them),
# so they are reproduced exactly for conversations to render the same way.
_TOOLS_HEAD = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
               "You are provided with function signatures within <tools></tools> XML tags:\n<tools>")
_TOOLS_TAIL = ("\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
               "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
               "<args-json-object>}\n</tool_call><|im_end|>\n")


def _jinja(text: str) -> str:
    """A Python string as a single-quoted Jinja string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# ChatML with MiniMind-3's reasoning and tool blocks. For conversations in MiniMind-3's format it renders exactly what
# MiniMind-3's own template renders (tests/test_chat_template.py checks this against the reference file):
#   - tools (the `tools=` argument, or else the `tools` list on a first system turn) are listed in the system turn;
#   - every assistant turn starts with a <think> block: its reasoning_content, or the <think>…</think> at the start of
#     its content (MiniMind2's inline style), or empty; its tool_calls follow the content as <tool_call> blocks;
#   - tool results go into one user turn per run of tool messages, each as a <tool_response> block;
#   - the generation prompt opens a <think> block when open_thinking (or vLLM's enable_thinking) is true, else it
#     writes an empty closed one.
# {% generation %} marks what the assistant writes given the prompt that would produce its turn, so that
# return_assistant_tokens_mask (the training loss mask) covers exactly that: the reasoning after "<think>\n", the
# closing tag, the content, the tool calls and <|im_end|>. Not marked: the header, the "<think>\n" that the thinking-on
# prompt writes, an empty think block (what the thinking-off prompt writes, so empty blocks are trained as context,
# never as output), and everything in system, user and tool turns.
CHAT_TEMPLATE = (
    "{%- if not tools and messages and messages[0].role == 'system' and messages[0].tools"
    " and messages[0].tools is not string -%}"
    "{%- set tools = messages[0].tools -%}"
    "{%- endif -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0].role == 'system' -%}{{- messages[0].content + '\\n\\n' -}}{%- endif -%}"
    "{{- " + _jinja(_TOOLS_HEAD) + " -}}"
    "{%- for tool in tools -%}{{- '\\n' -}}{{- tool | tojson -}}{%- endfor -%}"
    "{{- " + _jinja(_TOOLS_TAIL) + " -}}"
    "{%- elif messages and messages[0].role == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set content = message.content if message.content is string else '' -%}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) -%}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' -}}"
    "{%- elif message.role == 'assistant' -%}"
    "{%- set reasoning = '' -%}"
    "{%- if message.reasoning_content is string -%}"
    "{%- set reasoning = message.reasoning_content -%}"
    "{%- elif '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{%- set reasoning = reasoning.strip('\\n') -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if reasoning -%}{{- " + _jinja(THINKING_ON_PROMPT) + " -}}"
    "{%- else -%}{{- " + _jinja(THINKING_OFF_PROMPT) + " -}}{%- endif -%}"
    "{%- generation -%}"
    "{%- if reasoning -%}{{- reasoning + '\\n</think>\\n\\n' -}}{%- endif -%}"
    "{{- content.lstrip('\\n') -}}"
    "{%- for call in message.tool_calls or [] -%}"
    "{%- if content or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{%- set function = call.function or call -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + function.name + '\", \"arguments\": ' -}}"
    "{%- if function.arguments is string -%}{{- function.arguments -}}"
    "{%- else -%}{{- function.arguments | tojson -}}{%- endif -%}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>' -}}"
    "{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- elif message.role == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if (open_thinking is defined and open_thinking is true)"
    " or (enable_thinking is defined and enable_thinking is true) -%}"
    "{{- " + _jinja(THINKING_ON_PROMPT) + " -}}"
    "{%- else -%}{{- " + _jinja(THINKING_OFF_PROMPT) + " -}}{%- endif -%}"
    "{%- endif -%}"
)


# --------------------------------------------------------------------------- data


def _record_texts(record: dict) -> list[str]:
    """The training strings of one MiniMind jsonl record."""
    if "text" in record:
        return [record["text"]]
    if "conversations" in record:
        return [text for m in record["conversations"] for text in (m.get("reasoning_content"), m.get("content"))
                if isinstance(text, str) and text]
    if "chosen" in record or "rejected" in record:
        # dpo: the prompt is the same in both lists, so take it once.
        chosen = [m["content"] for m in record.get("chosen", []) if m.get("content")]
        seen = set(chosen)
        rejected = [m["content"] for m in record.get("rejected", []) if m.get("content") and m["content"] not in seen]
        return chosen + rejected
    raise ValueError(f"unknown record keys {sorted(record)}")


def iter_texts(paths: Iterable[str | Path], on_line: Callable[[], None] | None = None) -> Iterator[str]:
    """Stream the training strings of MiniMind jsonl files, line by line, in file order.

    pretrain lines give their ``text``; sft/reason/lora lines give every ``content`` of
    ``conversations``; dpo lines give the ``chosen`` contents and the differing
    ``rejected`` ones. ``on_line`` (if given) is called once per input line read.
    """
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if on_line is not None:
                    on_line()
                if not line.strip():
                    continue
                try:
                    texts = _record_texts(json.loads(line))
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}:{lineno}: not a MiniMind record ({e})") from e
                yield from texts


def count_lines(paths: Iterable[str | Path]) -> int:
    n = 0
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                n += chunk.count(b"\n")
    return n


def _iter_with_progress(paths: list[Path], show: bool) -> Iterator[str]:
    """iter_texts with a tqdm bar counting input lines."""
    if not show:
        yield from iter_texts(paths)
        return
    from tqdm import tqdm

    with tqdm(total=count_lines(paths), unit="line", desc="reading", file=sys.stderr) as bar:
        yield from iter_texts(paths, on_line=lambda: bar.update(1))


# --------------------------------------------------------------------------- training


def train_tokenizer(paths: list[Path], vocab_size: int, min_frequency: int = 0, show_progress: bool = True):
    """Train the byte-level BPE and return a ``tokenizers.Tokenizer`` with ids 0..10 fixed (ALL_FIXED_TOKENS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < len(ALL_FIXED_TOKENS) + 256:
        raise ValueError(f"vocab_size must be at least {len(ALL_FIXED_TOKENS) + 256} "
                         f"({len(ALL_FIXED_TOKENS)} fixed tokens + 256 bytes)")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=ALL_FIXED_TOKENS,  # gives them ids 0..10, in order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(_iter_with_progress(paths, show_progress), trainer=trainer)

    # The trainer registers all its special tokens as *special* added tokens. The tag
    # tokens must stay whole in encoding but survive skip_special_tokens, so turn them
    # into plain (special=False) added tokens matched on the raw text.
    spec = json.loads(tok.to_str())
    for entry in spec["added_tokens"]:
        if entry["content"] in TAG_TOKENS:
            entry["special"] = False
        entry["normalized"] = False
    spec["post_processor"] = None  # no BOS/EOS added at encode time
    tok = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))

    for i, t in enumerate(ALL_FIXED_TOKENS):
        got = tok.token_to_id(t)
        if got != i:
            raise RuntimeError(f"{t!r} got id {got}, expected {i}")
    return tok


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": PAD_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "padding_side": "right",
        "truncation_side": "right",
        "model_max_length": MODEL_MAX_LENGTH,
        "chat_template": CHAT_TEMPLATE,
    }


def save(tok, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"), pretty=True)
    with open(out_dir / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(), f, ensure_ascii=False, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------- checks and report


def _cjk(c: str) -> bool:
    o = ord(c)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x2EBEF
        or 0x30000 <= o <= 0x3134F
    )


def text_language(text: str) -> str | None:
    """'zh' if most letters of ``text`` are CJK ideographs, 'en' otherwise, None if it has no letters."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return None
    return "zh" if 2 * sum(map(_cjk, letters)) > len(letters) else "en"


def _backend(tokenizer):
    """A ``tokenizers.Tokenizer`` from a transformers tokenizer, a Tokenizer, or a folder path."""
    if isinstance(tokenizer, (str, Path)):
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(Path(tokenizer) / "tokenizer.json"))
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


def compression_stats(tokenizer, path: str | Path, batch_size: int = 256) -> dict:
    """Characters per token on the Chinese and on the English ``text`` lines of a pretrain jsonl.

    ``tokenizer``: a transformers fast tokenizer, a ``tokenizers.Tokenizer`` or a folder
    with tokenizer.json. Returns ``{"zh": {"lines", "chars", "tokens", "chars_per_token"}, "en": {...}}``.
    """
    tok = _backend(tokenizer)
    stats = {lang: {"lines": 0, "chars": 0, "tokens": 0} for lang in ("zh", "en")}
    batch: dict[str, list[str]] = {"zh": [], "en": []}

    def flush(lang):
        if batch[lang]:
            encs = tok.encode_batch(batch[lang], add_special_tokens=False)
            stats[lang]["tokens"] += sum(len(e.ids) for e in encs)
            batch[lang].clear()

    for text in iter_texts([path]):
        lang = text_language(text)
        if lang is None:
            continue
        stats[lang]["lines"] += 1
        stats[lang]["chars"] += len(text)
        batch[lang].append(text)
        if len(batch[lang]) >= batch_size:
            flush(lang)
    for lang in stats:
        flush(lang)
        s = stats[lang]
        s["chars_per_token"] = s["chars"] / s["tokens"] if s["tokens"] else float("nan")
    return stats


SAMPLE_TEXTS = [
    "Hello, world! MiniMind 是一个从零训练的小模型。",
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\n想一想\n</think>\n<answer>\n42\n</answer><|im_end|>\n",
    "  leading spaces,\ttabs\r\nand CRLF \n\n\n trailing  ",
    "繁體中文：臺灣的資訊工程。 emoji 🤖🚀👍🏽 and symbols ∑∫√ ½ — “quotes” 'single'",
    "Ünïcödé façade naïve — 日本語のテキスト, 한국어 텍스트, кириллица.",
    "def f(x):\n    return x ** 2  # code\n",
]


def verify(out_dir: Path, vocab_size: int) -> None:
    """Load ``out_dir`` with AutoTokenizer and check ids, tags, round trip and the chat template."""
    from transformers import AutoTokenizer

    tk = AutoTokenizer.from_pretrained(str(out_dir))
    assert len(tk) == vocab_size, (len(tk), vocab_size)
    assert (tk.pad_token_id, tk.unk_token_id, tk.bos_token_id, tk.eos_token_id) == (0, 0, 1, 2)
    for i, tag in enumerate(TAG_TOKENS, start=len(SPECIAL_TOKENS)):
        ids = tk.encode(f"a{tag}\nb", add_special_tokens=False)
        assert ids.count(i) == 1 and tk.convert_ids_to_tokens(i) == tag, (tag, ids)
        assert tag in tk.decode(ids, skip_special_tokens=True)
    for text in SAMPLE_TEXTS:
        ids = tk.encode(text, add_special_tokens=False)
        assert tk.decode(ids) == text, text
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    rendered = tk.apply_chat_template(msgs, tokenize=False)
    expected = f"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n{THINKING_OFF_PROMPT}ok<|im_end|>\n"
    assert rendered == expected, rendered
    out = tk.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tk.decode(masked) == "ok<|im_end|>", tk.decode(masked)
    # A generation prompt must tokenize to a prefix of the turn it asks for, with either switch (a merge across the
    # prompt's end, e.g. of "\n\n", would train the model on token sequences it is never asked to continue).
    for reasoning, switch in (("", False), ("why", True)):
        for content in ("ok", " ok", "\n\nok", "<tool_call>"):
            turn = {"role": "assistant", "reasoning_content": reasoning, "content": content}
            prompt = tk.apply_chat_template(msgs[:1], add_generation_prompt=True, open_thinking=switch,
                                            return_dict=True)["input_ids"]
            full = tk.apply_chat_template(msgs[:1] + [turn], return_dict=True)["input_ids"]
            assert full[:len(prompt)] == prompt, (reasoning, content, tk.convert_ids_to_tokens(full))


def print_report(stats: dict, path: Path) -> None:
    print(f"compression on {path}:")
    for lang, s in stats.items():
        print(
            f"  {lang}: {s['lines']} lines, {s['chars']} chars, {s['tokens']} tokens, "
            f"{s['chars_per_token']:.3f} chars/token"
        )
