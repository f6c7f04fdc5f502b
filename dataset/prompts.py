"""Prompts, in one place: for reinforcement learning (`PromptSet`: each conversation up to its last assistant reply,
which becomes the reference answer a reward can check, e.g. the final number of a GSM8K solution) and for
evaluation (`read_prompts`: a prompt file or the first user turns of conversations)."""
import warnings
from pathlib import Path

import torch

from .jsonl import json_lines, load_records, skipped_lines_message, template_messages
from .stats import DataWarning


class PromptSet(torch.utils.data.Dataset):
    """Item i: {"input_ids": chat-template prompt ending with the generation prompt, "reference": str}.

    open_thinking: the generation prompt opens a <think> block (the thinking switch) instead of closing an empty one;
    a completion then starts inside the reasoning (inference/reasoning.py `reply_in_turn` puts the tag back)."""

    def __init__(self, path, tokenizer, max_prompt_len: int, skip_bad_lines: bool = False, open_thinking: bool = False):
        records = load_records("sft", path, skip_bad_lines)
        if records.n_bad_lines:
            warnings.warn(skipped_lines_message(path, records.n_bad_lines, records.first_error), DataWarning)
        self.items, self.n_too_long = [], 0
        for record in records.records:
            turns = record["conversations"]
            last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
            ids = tokenizer.apply_chat_template(template_messages(turns[:last]), tokenize=True,
                                                add_generation_prompt=True, open_thinking=open_thinking,
                                                return_dict=True)["input_ids"]
            if len(ids) > max_prompt_len:
                self.n_too_long += 1
                continue
            self.items.append({"input_ids": list(ids), "reference": turns[last]["content"]})
        if self.n_too_long:
            warnings.warn(f"{path}: skipped {self.n_too_long} prompts longer than {max_prompt_len} tokens", DataWarning)
        self.path = path

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return [self.items[i]]  # a row of one sample, like the other datasets

    @property
    def stats(self):
        return f"{self.path} (prompts): {len(self.items)} prompts, {self.n_too_long} too long skipped"


class PromptCollator:
    """Left-padded prompts (generation appends on the right) and their references; num_items = completions."""

    def __init__(self, pad_id: int, group_size: int):
        self.pad_id, self.group_size = pad_id, group_size

    def __call__(self, rows):
        prompts = [row[0] for row in rows]
        width = max(len(p["input_ids"]) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, p in enumerate(prompts):
            n = len(p["input_ids"])
            input_ids[b, width - n:] = torch.tensor(p["input_ids"])
            attention_mask[b, width - n:] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "references": [p["reference"] for p in prompts], "num_items": len(prompts) * self.group_size}


def read_prompts(path, kind: str = "reason") -> list[str]:
    """Prompts from jsonl: {"prompt": ...} records (only those of `kind` when records carry a "kind") or
    conversations (their first user turn). Raises ValueError naming file:line on a record it cannot use."""
    path = Path(path)
    prompts = []
    for line_no, record in json_lines(path):
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{line_no}: expected a JSON object")
        if "kind" in record and record["kind"] != kind:
            continue
        prompt = record.get("prompt")
        if prompt is None and isinstance(record.get("conversations"), list):
            prompt = next((t.get("content") for t in record["conversations"]
                           if isinstance(t, dict) and t.get("role") == "user"), None)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path}:{line_no}: expected {{\"prompt\": str}} or {{\"conversations\": [...]}} with a user turn")
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path}: no {kind} prompts")
    return prompts


def read_questions(path, kind: str) -> list[tuple[str, str]]:
    """(prompt, exact answer) pairs from {"kind", "prompt", "answer"} jsonl records of `kind` (e.g. the demo's
    held-out "fact" and "sum" questions); [] when the file has none. ValueError naming file:line on a bad record."""
    path = Path(path)
    pairs = []
    for line_no, record in json_lines(path):
        if not isinstance(record, dict) or record.get("kind") != kind:
            continue
        prompt, answer = record.get("prompt"), record.get("answer")
        if not isinstance(prompt, str) or not isinstance(answer, str) or not prompt.strip() or not answer.strip():
            raise ValueError(f"{path}:{line_no}: a {kind} question needs non-empty \"prompt\" and \"answer\" strings")
        pairs.append((prompt, answer))
    return pairs
