"""Trajectory rewards for agentic RL (train_agent.py), registered by name like trainer/rewards.py's.

A reward is `fn(trajectory) -> float`, where the trajectory (trainer/agent.py `Trajectory`) holds the task (its
`tools`, `expected_calls` and `answer`, inference/toolcall_eval.py's format), every reply the model wrote (raw text
and parsed), every call made with its result, and how it ended. Add one in a few lines:

    from trainer.agent_rewards import agent_reward

    @agent_reward("few_calls")
    def few_calls(trajectory):
        return 1.0 if len(trajectory.calls) <= 1 else 0.0

and train with `--rewards answer,few_calls`. The checks are the evaluation's own (inference/toolcall_eval.py,
inference/reasoning.py), so the stage rewards exactly what scripts/eval_toolcall.py and the demo report count.
"""
from inference.reasoning import turn_is_well_formed
from inference.toolcall_eval import answer_correct, calls_match, valid_calls

AGENT_REWARDS = {}


def agent_reward(name: str):
    def register(fn):
        AGENT_REWARDS[name] = fn
        return fn
    return register


@agent_reward("answer")
def answer_reward(trajectory) -> float:
    """1 when the trajectory ends with an answer that contains every expected string (the evaluation's
    `answer, with tools`), else 0."""
    return float(trajectory.finished and answer_correct(trajectory.answer, trajectory.task["answer"]))


@agent_reward("calls")
def calls_reward(trajectory) -> float:
    """The share of the replies that try to call tools whose calls are all valid (readable JSON, an offered
    function, its required arguments: the evaluation's `valid calls`). A trajectory that calls nothing gets 0 on a
    task that expects calls and 1 on one that does not."""
    tools = trajectory.task["tools"]
    calling = [reply for _, reply in trajectory.replies if reply.tool_calls or reply.problems]
    if not calling:
        return 0.0 if trajectory.task["expected_calls"] else 1.0
    return sum(valid_calls(reply, tools) for reply in calling) / len(calling)


@agent_reward("right_calls")
def right_calls_reward(trajectory) -> float:
    """1 when the calls made are exactly the expected ones, in order, arguments included (the evaluation's
    `right calls`), else 0."""
    made, expected = [call for call, _ in trajectory.calls], trajectory.task["expected_calls"]
    return float(len(made) == len(expected) and all(calls_match(g, e) for g, e in zip(made, expected)))


@agent_reward("format")
def format_reward(trajectory) -> float:
    """The share of the replies that are well-formed turns (inference/reasoning.py `turn_is_well_formed`: readable
    call blocks, no unclosed tag, the thinking switch obeyed)."""
    if not trajectory.replies:
        return 0.0
    return sum(turn_is_well_formed(text, trajectory.thinking) for text, _ in trajectory.replies) / len(trajectory.replies)


@agent_reward("unfinished")
def unfinished_penalty(trajectory) -> float:
    """-1 for a trajectory that never gave an answer: a reply cut at --max_new_tokens, the conversation grown past
    --max_seq_len, or still calling tools after --max_tool_turns rounds; 0 otherwise."""
    return 0.0 if trajectory.finished else -1.0


def get_agent_rewards(names: str) -> dict:
    chosen = {}
    for name in (n.strip() for n in names.split(",") if n.strip()):
        if name not in AGENT_REWARDS:
            raise ValueError(f"unknown agent reward {name!r}; known: {', '.join(sorted(AGENT_REWARDS))}")
        chosen[name] = AGENT_REWARDS[name]
    if not chosen:
        raise ValueError("--rewards names no reward")
    return chosen
