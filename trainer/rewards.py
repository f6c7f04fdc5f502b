"""Rule-based rewards for reinforcement learning (GRPO), registered by name.

A reward is `fn(completion: str, reference: str | None) -> float`. Add one in a few lines:

    from trainer.rewards import reward

    @reward("short")
    def short_reward(completion, reference):
        return 1.0 if len(completion) < 200 else 0.0

and train with `--rewards format,short`.
"""
from inference.reasoning import final_number, format_score

REWARDS = {}


def reward(name: str):
    def register(fn):
        REWARDS[name] = fn
        return fn
    return register


@reward("format")
def format_reward(completion: str, reference=None) -> float:
    """Full credit exactly for a well-formed <think>…</think><answer>…</answer> reply (the same definition the
    evaluation counts, inference/reasoning.py), partial credit of 0.25 per tag in its place otherwise."""
    return format_score(completion)


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
