"""Agentic RL (train_agent.py): GRPO over multi-turn rollouts in which the model's tool calls really run.

Each task is rolled out G times (--num_generations), all B·G conversations of a batch stepping together:
  1. the conversation is rendered with the chat template (the task's tools listed in the system turn) and the
     model samples a reply (inference/engine.py, one batched generation per round);
  2. the reply is read with inference/chat_format.parse_assistant; its calls run in the task's Toolbox
     (inference/tools.py: time and size limits; a failing call gives an error result, never an exception);
  3. the results are appended as `tool` turns: the tokens the chat template writes for them, then the next
     generation prompt, and the model continues; at most --max_tool_turns rounds of calls;
  4. a trajectory ends with a reply that calls nothing (its answer), or unfinished: a reply cut at
     --max_new_tokens, the conversation grown past --max_seq_len, or still calling after --max_tool_turns rounds.

The sequence trained on is what the model saw and sampled: the prompt, each reply's sampled tokens and the
template's tokens for the tool turns in between. The loss covers only the sampled tokens (their end-of-turn
included): the prompt, the tool results and the generation prompts are context. Each trajectory gets the weighted
sum of its rewards (trainer/agent_rewards.py). The stage overrides GRPO's `rollout()` only: the trajectories go
back in GRPO's layout (prompt, then the rest with the sampled tokens as the loss mask), so the advantages over the
G trajectories of a task, the loss, the KL penalty and GRPO's options (--num_iterations, --loss_type, ...) are
GRPO's own.

Why not inference/tool_loop.run_tool_loop itself: it re-renders the conversation from the parsed replies every
round, so what it feeds back is the template's rendering of a reply rather than the tokens sampled (the policy
gradient needs the log-probabilities of exactly those), and it runs one conversation at a time. Its parts are
shared: the rendering (render_prompt), parse_assistant, the Toolbox, and the evaluation's checks
(inference/toolcall_eval.py), so training and scripts/eval_toolcall.py agree on what a right answer is.

Data: jsonl tasks in scripts/eval_toolcall.py's format (`messages` ending with the user's question, `tools`,
`expected_calls`, `answer`: strings the final answer must contain, required here); the demo writes
`agent_tasks.jsonl` (dataset/demo.py).
"""
import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dataset.jsonl import json_lines
from inference.chat_format import parse_assistant
from inference.generation import end_token_ids
from inference.tool_loop import render_prompt
from inference.toolcall_eval import ToolFileError, parse_task, task_toolbox
from .data import TrainData
from .modelio import StageError
from .stages import GRPO, refuse_share_prefixes, unwrap


# ---------------------------------------------------------------- tasks

def read_agent_tasks(path) -> list[dict]:
    """The tasks of a jsonl file (inference/toolcall_eval.py `parse_task`, each with a non-empty `answer`);
    StageError `path:line: field: problem` for a bad line."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"data file {path} not found: pass --data_path (agent tasks jsonl; "
                         f"`python scripts/make_demo_data.py` writes the demo's agent_tasks.jsonl)")
    tasks = []
    for line_no, raw in json_lines(path, StageError):
        where = f"{path}:{line_no}"
        try:
            task = parse_task(raw, where)
        except ToolFileError as e:
            raise StageError(str(e)) from None
        if not task["answer"]:
            raise StageError(f"{where}: answer: a training task needs the strings its final answer must contain")
        tasks.append(task)
    if not tasks:
        raise StageError(f"{path}: no tasks")
    return tasks


class AgentTasks(torch.utils.data.Dataset):
    """Item i: [{"task": the parsed task, "input_ids": its first prompt (chat template, tools listed, generation
    prompt)}]; prompts that leave no room to answer in --max_seq_len are skipped with a warning."""

    def __init__(self, path, tokenizer, max_seq_len: int, thinking: bool, min_room: int = 16):
        self.path, self.items, self.n_too_long = path, [], 0
        for task in read_agent_tasks(path):
            ids = encode(tokenizer, render_prompt(tokenizer, task["messages"], task["tools"], thinking))
            if len(ids) + min_room > max_seq_len:
                self.n_too_long += 1
                continue
            self.items.append({"task": task, "input_ids": ids})
        if self.n_too_long:
            warnings.warn(f"{path}: skipped {self.n_too_long} tasks whose prompt leaves under {min_room} tokens of "
                          f"--max_seq_len {max_seq_len}")
        if not self.items:
            raise StageError(f"{path}: every task's prompt is too long for --max_seq_len {max_seq_len}")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return [self.items[i]]

    @property
    def stats(self):
        tools = sum(1 for item in self.items if item["task"]["tools"])
        return (f"{self.path} (agent tasks): {len(self.items)} tasks, {tools} with tools, "
                f"{self.n_too_long} too long skipped")


class AgentCollator:
    """A micro-batch of tasks; num_items = trajectories (tasks × G)."""

    def __init__(self, group_size: int):
        self.group_size = group_size

    def __call__(self, rows):
        items = [row[0] for row in rows]
        return {"tasks": [item["task"] for item in items], "prompts": [item["input_ids"] for item in items],
                "num_items": len(items) * self.group_size}


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- rollouts

@dataclass
class Trajectory:
    """One rolled-out conversation: `ids` (prompt, replies and tool turns, in order) and `generated` (True on the
    tokens the model sampled), the replies (raw text, parsed), the calls made with their results, and its end:
    "answer" (finished), "cut" (a reply reached --max_new_tokens), "too_long" (past --max_seq_len) or
    "max_tool_turns"."""
    task: dict
    ids: list
    thinking: bool = False
    generated: list = field(default_factory=list)
    messages: list = field(default_factory=list)
    replies: list = field(default_factory=list)  # [(text, AssistantReply)]
    calls: list = field(default_factory=list)  # [(call, ToolResult)]
    end: str | None = None

    def __post_init__(self):
        self.generated = [False] * len(self.ids)
        self.messages = [dict(m) for m in self.task["messages"]]

    def append(self, tokens, generated: bool):
        self.ids += list(tokens)
        self.generated += [generated] * len(tokens)

    @property
    def finished(self) -> bool:
        return self.end == "answer"

    @property
    def answer(self) -> str:
        return self.replies[-1][1].content if self.finished else ""


def tool_turn_text(tokenizer, messages, n_before: int, tools, thinking: bool) -> str:
    """What the chat template writes after the end-of-turn token of the assistant turn messages[n_before - 1]:
    the tool turns messages[n_before:] and the next generation prompt. Taken as the difference of two renderings,
    so any template that renders a conversation's start the same whether or not more follows works."""
    kwargs = {"tools": tools} if tools else {}
    before = tokenizer.apply_chat_template(messages[:n_before], tokenize=False, open_thinking=thinking, **kwargs)
    after = render_prompt(tokenizer, messages, tools, thinking)
    end = before.rfind(tokenizer.eos_token)
    if not after.startswith(before) or end < 0:
        raise StageError("the chat template renders a conversation's earlier turns differently once tool turns "
                         "follow (or ends assistant turns without the end-of-turn token): agent rollouts need a "
                         "template whose rendering of a conversation extends the rendering of its start")
    return before[end + len(tokenizer.eos_token):] + after[len(before):]


def roll_out(tasks, prompts, generate, tokenizer, *, num_samples: int, max_tool_turns: int, max_seq_len: int,
             thinking: bool = False) -> list[Trajectory]:
    """G = num_samples trajectories per task (task-major: rows t·G … t·G + G − 1 belong to task t).

    `generate(contexts, num_samples) -> [(new token ids, ended with end-of-turn?)]` samples one reply per context
    and sample (context-major); `sampler` wraps the policy's. The first round samples G replies to each
    distinct prompt (one prefill per prompt); later rounds one reply per live trajectory."""
    eos = tokenizer.eos_token_id
    trajectories = [Trajectory(task, list(prompt), thinking) for task, prompt in zip(tasks, prompts)
                    for _ in range(num_samples)]
    live, outputs = trajectories, generate([list(p) for p in prompts], num_samples)
    for round_ in range(max_tool_turns + 1):
        if round_:
            outputs = generate([t.ids for t in live], 1)
        still = []
        for t, (tokens, ended) in zip(live, outputs):
            room = max_seq_len - len(t.ids)
            too_long = len(tokens) > room
            if too_long:
                tokens, ended = tokens[:room], False
            t.append(tokens, generated=True)
            text = tokenizer.decode([i for i in tokens if i != eos], skip_special_tokens=True)
            reply = parse_assistant(text, thinking=thinking)
            t.replies.append((text, reply))
            t.messages.append(reply.message())
            if not ended:
                t.end = "too_long" if too_long else "cut"
            elif not reply.tool_calls:
                t.end = "answer"
            elif round_ == max_tool_turns:
                t.end = "max_tool_turns"
            else:
                box = task_toolbox(t.task)
                n_before = len(t.messages)
                for call in reply.tool_calls:
                    result = box.run(call)  # never raises: a failing call is an error result
                    t.calls.append((call, result))
                    t.messages.append({"role": "tool", "content": result.content})
                context = encode(tokenizer, tool_turn_text(tokenizer, t.messages, n_before, t.task["tools"], thinking))
                if len(t.ids) + len(context) >= max_seq_len:  # no room left for the next reply
                    t.end = "too_long"
                else:
                    t.append(context, generated=False)
                    still.append(t)
        live = still
        if not live:
            break
    return trajectories


def sampler(sample, pad_id: int):
    """A `generate` for roll_out over `sample(input_ids, attention_mask, num_samples) -> Completions` (GRPO.generate:
    the batched engine, or transformers' generate()): the contexts are left-padded into one batch."""
    def generate(contexts, num_samples):
        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, context in enumerate(contexts):
            ids[row, width - len(context):] = torch.tensor(context)
            mask[row, width - len(context):] = 1
        out = sample(ids, mask, num_samples)
        tokens, lengths, finished = out.tokens.tolist(), out.lengths.tolist(), out.finished.tolist()
        return [(row[:n], done) for row, n, done in zip(tokens, lengths, finished)]

    return generate


def rollout_batch(trajectories, prompts, pad_id: int, device) -> dict:
    """GRPO's rollout layout (GRPO.rollout): each trajectory split into its prompt, left-padded to the longest
    (N, P), and what follows it, right-padded (N, C); completion_mask marks the sampled tokens (the loss), and
    completion_attention every real token after the prompt (the tool turns are read, not trained on)."""
    G = len(trajectories) // len(prompts)
    P = max(len(p) for p in prompts)
    C = max(len(t.ids) - len(prompts[i // G]) for i, t in enumerate(trajectories))
    sequences = torch.full((len(trajectories), P + C), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(trajectories), P), dtype=torch.long)
    completion_mask = torch.zeros((len(trajectories), C), dtype=torch.bool)
    completion_attention = torch.zeros((len(trajectories), C), dtype=torch.bool)
    for row, t in enumerate(trajectories):
        n = len(prompts[row // G])
        rest = len(t.ids) - n
        sequences[row, P - n:P + rest] = torch.tensor(t.ids)
        prompt_mask[row, P - n:] = 1
        completion_mask[row, :rest] = torch.tensor(t.generated[n:])
        completion_attention[row, :rest] = True
    return {"sequences": sequences.to(device), "prompt_mask": prompt_mask.to(device),
            "completion_mask": completion_mask.to(device), "completion_attention": completion_attention.to(device)}


# ---------------------------------------------------------------- the stage

class Agent(GRPO):
    name, script, model_mode = "agent", "train_agent.py", 6
    label = "agentic-RL (tool use) chat model"
    purpose = ("solve tool tasks (RL reward; the demo's tool measures show it)", [])
    description = ("Agentic RL: GRPO over multi-turn rollouts in which the model's tool calls run (the safe "
                   "built-in tools, with time and size limits) and their results come back as tool turns, up to "
                   "--max_tool_turns rounds; rewards per trajectory (trainer/agent_rewards.py); the loss covers "
                   "only the tokens the model wrote. Tasks: jsonl in scripts/eval_toolcall.py's format "
                   "(messages, tools, expected_calls, answer).")
    data_kind = "agent_tasks"
    default_data = "data/agent_tasks.jsonl"
    default_from = "reason"
    epochs, batch_size, accumulation_steps, learning_rate, max_seq_len = 1, 4, 1, 1e-6, 1024

    def add_arguments(self, p):
        super().add_arguments(p)
        g = p.add_argument_group("agent")
        g.add_argument("--max_tool_turns", type=int, default=3,
                       help="rounds of tool calls a trajectory may make; a reply that still calls tools after them "
                            "ends it unfinished")
        g.add_argument("--open_thinking", action="store_true",
                       help="prompt with the thinking switch on (replies reason in a <think> block first); off, as "
                            "the tool evaluation prompts, by default")
        p.set_defaults(rewards="answer,calls,format,unfinished", format_weight_start=1.0, max_new_tokens=64)
        for action in p._actions:
            if action.dest == "rewards":
                action.help = "comma-separated trajectory reward names (trainer/agent_rewards.py), summed"
            elif action.dest == "max_new_tokens":
                action.help = "length limit of each reply (a trajectory holds one reply per round)"

    def build_data(self, args, tokenizer, info):
        refuse_share_prefixes(args, False)
        dataset = AgentTasks(args.data_path, tokenizer, args.max_seq_len, args.open_thinking)
        return TrainData(dataset, AgentCollator(args.num_generations), args, streaming=False)

    def setup(self, args, model, tokenizer, info):
        from .agent_rewards import get_agent_rewards

        if args.num_generations < 2:
            raise StageError("--num_generations must be at least 2 (advantages compare the trajectories of a task)")
        if args.num_iterations < 1:
            raise StageError("--num_iterations must be at least 1")
        if args.max_tool_turns < 0:
            raise StageError(f"--max_tool_turns must be 0 or more, got {args.max_tool_turns}")
        if getattr(args, "fsdp", False):  # sharded, every rank must run the same forwards; rollouts differ per rank
            raise StageError("train_agent.py does not run with --fsdp: each rank's rollouts take a different number "
                             "of rounds and tokens (DDP, the default with torchrun, works)")
        try:
            self.rewards = get_agent_rewards(args.rewards)
        except ValueError as e:
            raise StageError(str(e)) from None
        self.tokenizer = tokenizer
        self.eos_ids = end_token_ids(unwrap(model), tokenizer)  # where generation and serving stop too
        self.thinking = args.open_thinking
        self.reference = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.progress = 0.0

    def completion_limit(self, args) -> int:
        """The longest the part after the prompt can be: every round's reply (dr_grpo divides by it; the tool
        turns in between are not scored)."""
        return args.max_new_tokens * (args.max_tool_turns + 1)

    def reply_sampler(self, model, args, generator):
        """The `generate` of the rollouts (roll_out): GRPO's sampling (the batched engine, or --sampler generate)."""
        device = next(unwrap(model).parameters()).device
        return sampler(lambda ids, mask, n: self.generate(model, ids.to(device), mask.to(device), n, args, generator),
                       self.tokenizer.pad_token_id)

    @torch.no_grad()
    def rollout(self, model, batch, args, generator) -> dict:
        """GRPO.rollout for multi-turn tool use: the batch's trajectories (G per task) in GRPO's layout, their reward
        scores, and per trajectory the calls made, the failed ones, and whether it finished with an answer."""
        trajectories = roll_out(batch["tasks"], batch["prompts"], self.reply_sampler(model, args, generator),
                                self.tokenizer, num_samples=args.num_generations, max_tool_turns=args.max_tool_turns,
                                max_seq_len=args.max_seq_len, thinking=self.thinking)
        device = next(unwrap(model).parameters()).device
        out = rollout_batch(trajectories, batch["prompts"], self.tokenizer.pad_token_id, device)
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float, device=device)
        out.update(scores=as_tensor([[fn(t) for fn in self.rewards.values()] for t in trajectories]),
                   finished=torch.tensor([t.finished for t in trajectories], device=device),
                   tool_calls=as_tensor([len(t.calls) for t in trajectories]),
                   tool_errors=as_tensor([sum(not r.ok for _, r in t.calls) for t in trajectories]),
                   trajectory_tokens=as_tensor([len(t.ids) for t in trajectories]))
        return out

    def loss(self, model, batch, args):
        loss, sums = super().loss(model, batch, args)
        sums.update(tool_calls=batch["tool_calls"].sum(), tool_errors=batch["tool_errors"].sum(),
                    finished=batch["finished"].float().sum(), trajectory_tokens=batch["trajectory_tokens"].sum())
        return loss, sums
