"""Prompts for reinforcement learning: each conversation up to its last assistant reply, which becomes the
reference answer a reward can check (e.g. the final number of a GSM8K solution)."""
import warnings

import torch

from .jsonl import load_records, skipped_lines_message
from .stats import DataWarning


class PromptSet(torch.utils.data.Dataset):
    """Item i: {"input_ids": chat-template prompt ending with the assistant header, "reference": str}."""

    def __init__(self, path, tokenizer, max_prompt_len: int, skip_bad_lines: bool = False):
        records = load_records("sft", path, skip_bad_lines)
        if records.n_bad_lines:
            warnings.warn(skipped_lines_message(path, records.n_bad_lines, records.first_error), DataWarning)
        self.items, self.n_too_long = [], 0
        for record in records.records:
            turns = record["conversations"]
            last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
            ids = tokenizer.apply_chat_template(turns[:last], tokenize=True, add_generation_prompt=True,
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
