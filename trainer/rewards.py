"""Rule-based rewards for reinforcement learning (GRPO), registered by name.

A reward is `fn(completion: str, reference: str | None) -> float`. Add one in a few lines:

    from trainer.rewards import reward

    @reward("short")
    def short_reward(completion, reference):
        return 1.0 if len(completion) < 200 else 0.0

and train with `--rewards format,short`.
"""
import re

REWARDS = {}


def reward(name: str):
    def register(fn):
        REWARDS[name] = fn
        return fn
    return register


@reward("format")
def format_reward(completion: str, reference=None) -> float:
    """Partial credit, 0.25 per tag in its place: starts with <think>, </think> then <answer>, ends with </answer>;
    full credit only when both blocks are non-empty."""
    text = completion.strip()
    score = 0.0
    score += 0.25 * text.startswith("<think>")
    think_end = text.find("</think>")
    answer_start = text.find("<answer>", think_end + 1 if think_end >= 0 else 0)
    score += 0.25 * (think_end > 0 and text.count("</think>") == 1)
    score += 0.25 * (answer_start > think_end >= 0 and text.count("<answer>") == 1)
    score += 0.25 * (text.endswith("</answer>") and text.count("</answer>") == 1 and answer_start >= 0)
    if score == 1.0:
        think = text[len("<think>"):think_end].strip()
        answer = text[answer_start + len("<answer>"):-len("</answer>")].strip()
        if not think or not answer:
            score = 0.75
    return score


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> float | None:
    """The last number in the <answer> block (or in the whole text when there is no block)."""
    match = re.search(r"<answer>(.*?)(?:</answer>|$)", text, re.S)
    numbers = NUMBER.findall(match.group(1) if match else text)
    if not numbers:
        return None
    try:
        return float(numbers[-1].replace(",", ""))
    except ValueError:
        return None


@reward("accuracy")
def accuracy_reward(completion: str, reference=None) -> float:
    """1 when the completion's final number equals the reference's (GSM8K-style problems), else 0."""
    if not reference:
        return 0.0
    expected, got = final_number(reference), final_number(completion)
    return float(expected is not None and got is not None and abs(expected - got) < 1e-6)


def get_rewards(names: str) -> dict:
    chosen = {}
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in REWARDS:
            raise ValueError(f"unknown reward {name!r}; known: {', '.join(sorted(REWARDS))}")
        chosen[name] = REWARDS[name]
    if not chosen:
        raise ValueError("--rewards names no reward")
    return chosen
