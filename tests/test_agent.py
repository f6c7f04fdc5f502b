"""Agentic RL (train_agent.py, trainer/agent.py): multi-turn rollouts whose tool calls run, the loss mask over
what the model wrote, the trajectory rewards, the task file's checks, and the program on the demo's agent tasks."""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, save_tiny
from inference.chat_format import parse_assistant
from inference.tools import BUILTIN_SCHEMAS, ToolResult
from trainer.agent import Trajectory, read_agent_tasks, roll_out, rollout_batch
from trainer.agent_rewards import AGENT_REWARDS, agent_reward, get_agent_rewards
from trainer.modelio import StageError

TOOLS = [BUILTIN_SCHEMAS["get_capital"], BUILTIN_SCHEMAS["calculate"]]
TASK = {"kind": "capital", "tools": TOOLS, "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "expected_calls": [{"name": "get_capital", "arguments": {"country": "France"}}], "answer": ["Paris"]}


def call_text(name, arguments) -> str:
    """A call as the chat template writes it (so the rollout's tokens can be compared with a rendering)."""
    return f'<tool_call>\n{{"name": "{name}", "arguments": {json.dumps(arguments)}}}\n</tool_call>'


class Scripted:
    """A `generate` for roll_out that writes the next scripted reply of each context (the context's number of
    generation prompts says which) and records the contexts it was given."""

    def __init__(self, tokenizer, replies, cut=()):
        self.tokenizer, self.replies, self.cut, self.contexts = tokenizer, replies, set(cut), []

    def __call__(self, contexts, num_samples):
        out = []
        for context in contexts:
            self.contexts.append(context)
            step = self.tokenizer.decode(context).count("<|im_start|>assistant") - 1  # replies so far
            for _ in range(num_samples):
                ids = self.tokenizer.encode(self.replies[min(step, len(self.replies) - 1)], add_special_tokens=False)
                ended = step not in self.cut
                out.append((ids + [self.tokenizer.eos_token_id] if ended else ids, ended))
        return out


def rollout(tok, replies, task=TASK, max_tool_turns=3, max_seq_len=2048, samples=1, cut=()):
    prompt = tok(tok.apply_chat_template(task["messages"], tools=task["tools"], tokenize=False,
                                         add_generation_prompt=True, open_thinking=False),
                 add_special_tokens=False)["input_ids"]
    generate = Scripted(tok, replies, cut)
    return roll_out([task], [prompt], generate, tok, num_samples=samples, max_tool_turns=max_tool_turns,
                    max_seq_len=max_seq_len), generate


def test_loss_mask_is_what_the_model_wrote_checked_against_the_template(tok):
    first = call_text("get_capital", {"country": "France"})
    answer = "The capital of France is Paris."
    (t,), _ = rollout(tok, [first, answer])
    assert t.end == "answer" and t.finished and t.answer == answer
    assert [c for c, _ in t.calls] == TASK["expected_calls"] and t.calls[0][1].content == '{"result": "Paris"}'

    # the whole conversation rendered by the template, with its own mask of the assistant's generated parts
    messages = TASK["messages"] + [
        {"role": "assistant", "content": "", "tool_calls": [{"name": "get_capital", "arguments": {"country": "France"}}]},
        {"role": "tool", "content": '{"result": "Paris"}'}, {"role": "assistant", "content": answer}]
    rendered = tok.apply_chat_template(messages, tools=TOOLS, open_thinking=False, tokenize=True, return_dict=True,
                                       return_assistant_tokens_mask=True)
    n = len(t.ids)
    assert t.ids == rendered["input_ids"][:n]
    assert tok.decode(rendered["input_ids"][n:]) == "\n"  # the template's newline after the last end of turn
    assert t.generated == [bool(m) for m in rendered["assistant_masks"][:n]]

    # and by hand: the generated tokens are the two replies with their end-of-turn tokens, nothing else
    eos = tok.eos_token
    assert tok.decode([i for i, g in zip(t.ids, t.generated) if g]) == first + eos + answer + eos
    context = tok.decode([i for i, g in zip(t.ids, t.generated) if not g])
    assert "<tool_response>\n{\"result\": \"Paris\"}\n</tool_response>" in context and "# Tools" in context
    assert context.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")

    # the training rows, in GRPO's layout: the prompt, then the rest with the sampled tokens as the loss mask
    rows = rollout_batch([t, t], [rendered["input_ids"][:t.generated.index(True)]], tok.pad_token_id, "cpu")
    P = rows["prompt_mask"].shape[1]
    assert rows["sequences"][1].tolist() == t.ids and rows["prompt_mask"].all()
    assert rows["completion_mask"][0].tolist() == t.generated[P:] and rows["completion_attention"].all()


def test_failing_tools_give_error_results_and_the_rollout_goes_on(tok, monkeypatch):
    import inference.tools as tools

    def broken(country):
        raise RuntimeError("the lookup service is down")

    monkeypatch.setitem(tools.BUILTIN_TOOLS, "get_capital", broken)
    replies = [call_text("calculate", {"expression": "1 / 0"}) + "\n" + call_text("get_weather", {"city": "Paris"}),
               call_text("calculate", {"expr": "2 + 2"}) + "\n" + call_text("get_capital", {"country": "France"}),
               "<tool_call>\n{not json\n</tool_call>", "I could not find it."]
    (t,), _ = rollout(tok, replies)
    results = [r for _, r in t.calls]
    assert all(isinstance(r, ToolResult) and not r.ok for r in results) and len(results) == 4
    errors = [json.loads(r.content)["error"] for r in results]
    assert "division by zero" in errors[0] and "get_weather" in errors[1]
    assert "missing argument: expression" in errors[2] and "the lookup service is down" in errors[3]
    # the unreadable block is not a call: the reply counts as an answer and ends the trajectory
    assert t.end == "answer" and len(t.replies) == 3 and t.replies[-1][1].problems
    assert t.ids.count(tok.convert_tokens_to_ids("<tool_response>")) == 4


def test_trajectory_ends(tok):
    call = call_text("get_capital", {"country": "France"})
    (t,), _ = rollout(tok, [call], max_tool_turns=2)
    assert t.end == "max_tool_turns" and len(t.calls) == 2 and len(t.replies) == 3 and not t.finished
    (t,), _ = rollout(tok, [call, "Paris is"], cut={1})
    assert t.end == "cut" and t.generated[-1] and t.ids[-1] != tok.eos_token_id
    replies = [call, "The capital of France is Paris."]
    (whole,), _ = rollout(tok, replies)
    limit = len(whole.ids) - 2  # the answer would end two tokens past --max_seq_len
    trajectories, generate = rollout(tok, replies, max_seq_len=limit, samples=3)
    assert len(generate.contexts) == 1 + 3  # one first-round context for the task's 3 samples, then one each
    for t in trajectories:
        assert t.ids == whole.ids[:limit] and t.end == "too_long" and not t.finished


def test_rewards_by_name_against_hand_computation(tok):
    task = {"kind": "product_plus", "tools": TOOLS, "messages": [{"role": "user", "content": "What is 12 * 3, plus 4?"}],
            "expected_calls": [{"name": "calculate", "arguments": {"expression": "12 * 3"}},
                               {"name": "calculate", "arguments": {"expression": "36 + 4"}}], "answer": ["40"]}
    texts = [call_text("calculate", {"expression": "12 * 3"}),  # valid, and the expected first call
             "<tool_call>\n{\"name\": \"calculate\", \"arguments\": {\"expression\": \"36 + 4\"}\n</tool_call>",  # bad JSON
             call_text("get_capital", {}),  # a known function without its required argument
             "<think>\n\n</think>\n\nThe answer is 40."]  # an answer, but a think tag with the switch off
    t = Trajectory(task, [1, 2, 3])
    t.replies = [(text, parse_assistant(text)) for text in texts]
    t.calls = [(t.replies[0][1].tool_calls[0], ToolResult.success("calculate", 36)),
               (t.replies[2][1].tool_calls[0], ToolResult.error("get_capital", "missing argument: country"))]
    t.end = "answer"
    scores = {name: fn(t) for name, fn in get_agent_rewards("answer,calls,right_calls,format,unfinished").items()}
    # calling replies: 1st (valid), 2nd (unreadable block), 3rd (missing argument): 1 of 3 valid; well-formed turns:
    # the 1st and 3rd (a missing argument is the tool's error, not a malformed turn); not the 2nd or the 4th
    assert scores == {"answer": 1.0, "calls": pytest.approx(1 / 3), "right_calls": 0.0, "format": 0.5,
                      "unfinished": 0.0}

    right = Trajectory(task, [1])
    right.replies = [(texts[0], parse_assistant(texts[0]))]
    right.calls = [(c, ToolResult.success("calculate", 0)) for c in task["expected_calls"]]
    right.end = "cut"  # the calls were right but no answer came: only the answer and the finish are lost
    assert {n: f(right) for n, f in AGENT_REWARDS.items() if n in scores} == {
        "answer": 0.0, "calls": 1.0, "right_calls": 1.0, "format": 1.0, "unfinished": -1.0}

    silent = Trajectory(dict(task, expected_calls=[]), [1])
    silent.replies, silent.end = [("40", parse_assistant("40"))], "answer"
    assert AGENT_REWARDS["calls"](silent) == 1.0 and AGENT_REWARDS["calls"](Trajectory(task, [1])) == 0.0

    @agent_reward("test_short")
    def short(trajectory):
        return float(len(trajectory.ids) < 2)

    try:
        assert get_agent_rewards("answer,test_short")["test_short"](silent) == 1.0
        with pytest.raises(ValueError, match="unknown agent reward 'nope'"):
            get_agent_rewards("nope")
    finally:
        AGENT_REWARDS.pop("test_short")


@pytest.mark.parametrize("line, problem", [
    ('{"messages": [{"role": "user", "content": "x"}]', "2: invalid JSON"),
    ('{"messages": [{"role": "user", "content": "x"}]}', "2: answer: a training task needs"),
    ('{"tools": [{"name": "f"}], "messages": [{"role": "user", "content": "x"}], "expected_calls": [{"name": "g"}], '
     '"answer": "y"}', "2: expected_calls[0]: unknown function 'g'"),
    ('{"messages": "hello", "answer": "y"}', "2: messages: expected a non-empty list"),
])
def test_bad_task_lines_name_file_line_and_field(tmp_path, line, problem):
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(TASK) + "\n" + line + "\n")
    with pytest.raises(StageError) as e:
        read_agent_tasks(path)
    assert str(e.value).startswith(f"{path}:{problem}")


def test_train_agent_program_on_the_demo_tasks(tmp_path, demo, tok, capsys):
    from trainer import AGENT_STAGE, run

    base = save_tiny(tmp_path / "base", tok)
    common = ["train_agent.py", "--config", "tiny", "--device", "cpu", "--dtype", "float32", "--quiet",
              "--from_weight", base, "--out_dir", tmp_path / "out", "--max_seq_len", "640", "--batch_size", "2",
              "--num_generations", "2", "--max_new_tokens", "6", "--max_tool_turns", "1", "--max_steps", "2",
              "--log_interval", "1", "--save_interval", "0"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(TASK) + "\n" + json.dumps({**TASK, "answer": []}) + "\n")
    with pytest.raises(SystemExit) as e:  # in this process: the same one-line error the program prints
        run(AGENT_STAGE, [*common[1:], "--data_path", bad])
    assert e.value.code == 2 and f"error: {bad}:2: answer:" in capsys.readouterr().err

    result = subprocess.run([sys.executable, *map(str, common), "--data_path", demo["agent"]], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "agent_64" / "model.safetensors").exists()
    rows = [json.loads(l) for l in (tmp_path / "out" / "runs" / "agent_64" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert {"reward_answer", "reward_calls", "reward_format", "reward_unfinished", "tool_calls", "finished"} <= rows[0].keys()
    # the penalty is -1 per unfinished trajectory: its mean is the finished share minus 1
    assert all(r["reward_unfinished"] == pytest.approx(r["finished"] - 1) for r in rows)


def test_stage_loss_is_the_policy_gradient_of_the_sampled_tokens_only(tok):
    """The stage's loss (GRPO's, on the rollouts in its layout) has the gradient of -Σ advantage × mean log-prob of
    each trajectory's sampled tokens, computed one trajectory at a time without padding."""
    from types import SimpleNamespace

    from conftest import tiny_config
    from model import MiniMindForCausalLM
    from trainer.agent import Agent, AgentCollator
    from trainer.distributed import DistInfo
    from trainer.losses import group_advantages

    class ByCountry:  # samples alternate between two countries; the answer repeats the tool's result
        def __call__(self, contexts, num_samples):
            out = []
            for context in contexts:
                text = tok.decode(context)
                for g in range(num_samples):
                    if "<tool_response>" in text:
                        reply = f"The capital is {'Paris' if 'Paris' in text.rsplit('<tool_response>', 1)[1] else 'Rome'}."
                    else:
                        reply = call_text("get_capital", {"country": "France" if g % 2 == 0 else "Italy"})
                    out.append((tok.encode(reply, add_special_tokens=False) + [tok.eos_token_id], True))
            return out

    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny_config(vocab_size=len(tok)))
    settings = SimpleNamespace(num_generations=4, max_tool_turns=2, max_new_tokens=64, max_seq_len=2048,
                               temperature=1.0, top_p=1.0, clip_eps=0.2, beta=0.0, rewards="answer",
                               format_weight_start=1.0, open_thinking=False, num_iterations=1, loss_type="grpo",
                               scale_rewards="group", mask_truncated_completions=False, dtype="float32")
    stage = Agent()
    stage.setup(settings, model, tok, None)
    stage.reply_sampler = lambda model, args, generator: ByCountry()
    prompt = tok(tok.apply_chat_template(TASK["messages"], tools=TASK["tools"], tokenize=False, add_generation_prompt=True,
                                         open_thinking=False), add_special_tokens=False)["input_ids"]
    batch = AgentCollator(4)([[{"task": TASK, "input_ids": prompt}]] * 2)
    (rollout,) = stage.rollouts(model, [batch], settings, DistInfo(), seed=0)
    scores = rollout["scores"]
    assert scores[:, 0].tolist() == [1.0, 0.0] * 4  # France → Paris is right; Italy → Rome is not
    trajectories = roll_out(batch["tasks"], batch["prompts"], ByCountry(), tok, num_samples=4, max_tool_turns=2,
                            max_seq_len=2048)

    loss, sums = stage.loss(model, rollout, settings)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    advantages = group_advantages(scores[:, 0], 4)
    naive = 0
    for t, advantage in zip(trajectories, advantages):
        ids = torch.tensor([t.ids])
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1).gather(-1, ids[0, 1:, None])[:, 0]
        sampled = torch.tensor(t.generated[1:])
        naive = naive - advantage * logprobs[sampled].mean()
    naive.backward()
    for g, p in zip(got, model.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-6, rtol=1e-4)
    assert sums["tool_calls"].item() == 8 and sums["finished"].item() == 8


def test_demo_report_lines_for_the_agent_stage(tmp_path, tok):
    """The demo's before → after: the agent model's held-out tool measures (measured here) against the starting
    model's (given), printed one measure a line."""
    import random

    from dataset.demo import tool_heldout_lines
    from inference.report import AGENT_MEASURES, agent_summary, measure_demo_agent
    from inference.toolcall_eval import MEASURE_LABELS

    folder = save_tiny(tmp_path / "agent_64", tok)
    tools_file = tmp_path / "tools.jsonl"
    tools_file.write_text("\n".join(json.dumps(r) for r in tool_heldout_lines(random.Random(0), 3, 1)) + "\n")
    before = {m: 0.5 for m in AGENT_MEASURES}
    agent = measure_demo_agent(folder, tools_file, {"after_model": "reason", "after": {
        "measures": before, "by_kind": {"capital": {"answer_with_tools": 1.0}, "thinking": {}}}})
    assert agent["tasks"] == 3 and agent["before"] == before and agent["by_kind_before"] == {"capital": 1.0}
    assert all(0.0 <= agent["after"][m] <= 1.0 for m in AGENT_MEASURES)
    lines = agent_summary(agent, 12.5)
    assert "12.5 s" in lines[0] and "3 held-out tool tasks" in lines[0] and "reason → agent" in lines[0]
    for line, m in zip(lines[1:], AGENT_MEASURES):
        assert line.split()[-3:] == ["50%", "→", f"{agent['after'][m]:.0%}"] and MEASURE_LABELS[m] in line
