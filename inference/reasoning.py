"""The reasoning reply format, defined once: `<think>…</think>` then `<answer>…</answer>`.

`diagnose` / `is_well_formed` are the definition; the GRPO `format` reward (`format_score`, full credit exactly when
the reply is well formed) and the evaluation's well-formed share (`format_share`) both use it, so training rewards
what the evaluation counts. `turn_is_well_formed` is the same for a turn in MiniMind-3's tool-calling format (an
optional think block, then content and calls): the tool evaluation and the agent stage's `format` reward use it.

A reply is judged as its assistant turn reads. The chat template's thinking switch writes the opening `<think>` into
the prompt, so a completion of such a prompt starts inside the reasoning: `reply_in_turn` puts the tag back, and
GRPO and the evaluation both judge that (both prompt with the switch on where the template has it).
"""
import re

from .chat_format import THINKING_ON_PROMPT, parse_assistant

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
_SHAPE = re.compile(r"<think>(.*)</think>\s*<answer>(.*)</answer>", re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def diagnose(text: str) -> str:
    """'ok' for a well-formed reply, else the first problem found (e.g. 'no </answer>', 'empty <answer>').

    Well formed: after stripping surrounding whitespace, one <think> block then one <answer> block, each closed and
    with non-blank content, nothing before, between (other than whitespace) or after them, no other tag anywhere."""
    if not isinstance(text, str):
        return "not text"
    text = text.strip()
    for tag in TAGS:
        n = text.count(tag)
        if n != 1:
            return f"no {tag}" if n == 0 else f"{n} x {tag}"
    match = _SHAPE.fullmatch(text)
    if not match:
        return "tags out of order or text outside the blocks"
    for name, group in zip((THINK_OPEN, ANSWER_OPEN), match.groups()):
        if not group.strip():
            return f"empty {name}"
    return "ok"


def reply_in_turn(completion: str, thinking: bool) -> str:
    """The reply as the assistant turn reads: `thinking` (the prompt opened the <think> block) puts the prompt's
    opening back in front of the completion."""
    return THINKING_ON_PROMPT + completion if thinking else completion


def turn_is_well_formed(text: str, thinking: bool) -> bool:
    """A generated assistant turn in MiniMind-3's chat format (the tool-calling template) is well formed when
    parse_assistant reads it without problems (every <tool_call> block closed and readable JSON, no unclosed
    <think>) and it obeys the thinking switch: `thinking` (the prompt opened the <think> block) → it reasons, in a
    non-empty closed block; off → no think tag at all. The evaluation's thinking-on/off measures
    (inference/toolcall_eval.py) and the agent stage's `format` reward both use this definition."""
    reply = parse_assistant(text, thinking=thinking)
    if reply.problems:
        return False
    if thinking:
        return bool(reply.reasoning_content)
    return THINK_OPEN not in text and THINK_CLOSE not in text


def is_well_formed(text: str) -> bool:
    return diagnose(text) == "ok"


def format_score(text: str) -> float:
    """1 for a well-formed reply; otherwise partial credit, 0.25 for each tag in its place (starts with <think>, one
    </think>, one <answer> after it, ends with </answer>), at most 0.75 — so the score is 1 exactly when
    `is_well_formed` says so."""
    if is_well_formed(text):
        return 1.0
    text = text.strip() if isinstance(text, str) else ""
    think_end = text.find(THINK_CLOSE)
    answer_start = text.find(ANSWER_OPEN, think_end + 1 if think_end >= 0 else 0)
    score = 0.25 * text.startswith(THINK_OPEN)
    score += 0.25 * (think_end > 0 and text.count(THINK_CLOSE) == 1)
    score += 0.25 * (answer_start > think_end >= 0 and text.count(ANSWER_OPEN) == 1)
    score += 0.25 * (text.endswith(ANSWER_CLOSE) and text.count(ANSWER_CLOSE) == 1 and answer_start >= 0)
    return min(score, 0.75)


def split_reply(text: str) -> tuple[str | None, str]:
    """(the think part or None, the answer): the <answer> block's content when there is one, else the text after
    </think> (or the whole text)."""
    think = re.search(r"<think>(.*?)(?:</think>|$)", text, re.S)
    answer = re.search(r"<answer>(.*?)(?:</answer>|$)", text, re.S)
    if answer:
        rest = answer.group(1)
    elif THINK_CLOSE in text:
        rest = text.split(THINK_CLOSE, 1)[1]
    else:
        rest = text if not think else ""
    return (think.group(1).strip() if think else None), rest.strip()


def final_number(text: str) -> float | None:
    """The last number in the <answer> block (or in the whole text when there is no block)."""
    match = re.search(r"<answer>(.*?)(?:</answer>|$)", text, re.S)
    numbers = _NUMBER.findall(match.group(1) if match else text)
    if not numbers:
        return None
    try:
        return float(numbers[-1].replace(",", ""))
    except ValueError:
        return None


def format_share(model, tokenizer, prompts, samples: int = 1, temperature: float = 0.7, top_p: float = 0.9,
                 max_new_tokens: int = 128, seed: int = 0, batch_size: int = 64) -> tuple[float, list[str]]:
    """(share of well-formed replies, the replies as their turns read) over `samples` sampled replies to each prompt,
    prompted with the thinking switch on where the tokenizer's template has one."""
    from . import generation  # here, so the format itself imports without torch (the tokenizer uses the tags)

    thinking = generation.template_opens_thinking(tokenizer)
    was_training = model.training
    model.eval()
    try:
        replies = generation.sample_replies(model, tokenizer, prompts, samples, temperature, top_p, max_new_tokens,
                                            seed, batch_size, open_thinking=thinking)
    finally:
        model.train(was_training)
    replies = [reply_in_turn(reply, thinking) for reply in replies]
    share = sum(map(is_well_formed, replies)) / len(replies) if replies else 0.0
    return share, replies
