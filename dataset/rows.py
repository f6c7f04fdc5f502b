"""Map-style datasets over a tokenized samples table."""
import random

import pyarrow.compute as pc
import torch

from .packing import best_fit_decreasing
from .stats import DataStats


def _lengths(samples, column: str) -> list[int]:
    return pc.list_value_length(samples.data.column(column)).to_pylist()


def _count(samples, stats: DataStats, lengths: list[int]) -> list[int]:
    """Fill the sample counts of `stats`; returns the indices of the samples that are kept."""
    kept = [i for i, n in enumerate(lengths) if n]
    stats.n_samples = len(kept)
    stats.n_dropped = len(lengths) - len(kept)
    stats.n_truncated = sum(samples["truncated"])
    stats.n_label_tokens = sum(samples["n_targets"])
    return kept


class PackedRows(torch.utils.data.Dataset):
    """Item i is a row: a list of samples ({"input_ids", "labels"}) with at most max_seq_len positions.

    packing=True bin-packs samples into rows (best fit decreasing, row order shuffled with `seed`);
    packing=False gives one sample per row, in file order.
    """

    def __init__(self, samples, stats: DataStats, packing: bool, seed: int):
        lengths = _lengths(samples, "input_ids")
        kept = _count(samples, stats, lengths)
        stats.n_positions = sum(lengths)
        if packing:
            bins = best_fit_decreasing([lengths[i] for i in kept], stats.max_seq_len)
            self.rows = [[kept[j] for j in row] for row in bins]
            random.Random(seed).shuffle(self.rows)
        else:
            self.rows = [[i] for i in kept]
        stats.n_rows = len(self.rows)
        self.stats = stats
        self.samples = samples.select_columns(["input_ids", "labels"])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> list[dict]:
        columns = self.samples[self.rows[i]]
        return [{"input_ids": ids, "labels": labels} for ids, labels in zip(columns["input_ids"], columns["labels"])]


class PreferencePairs(torch.utils.data.Dataset):
    """Item i is a (chosen, rejected) pair of samples, in file order."""

    def __init__(self, samples, stats: DataStats):
        chosen, rejected = _lengths(samples, "chosen_input_ids"), _lengths(samples, "rejected_input_ids")
        self.rows = _count(samples, stats, chosen)
        stats.n_positions = sum(chosen) + sum(rejected)
        stats.n_rows = len(self.rows)
        self.stats = stats
        self.samples = samples.select_columns(
            ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[dict, dict]:
        row = self.samples[self.rows[i]]
        return tuple({"input_ids": row[f"{side}_input_ids"], "labels": row[f"{side}_labels"]}
                     for side in ("chosen", "rejected"))
