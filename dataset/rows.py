"""Map-style datasets over a tokenized samples table.

Row layouts are numpy arrays rather than Python lists: a corpus of millions of samples then costs a few bytes per
sample, and DataLoader worker processes share the arrays instead of copying them page by page as reference
counts of Python objects are touched (the "copy-on-read" growth of forked workers).
"""
import hashlib
import os
import random
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import torch

from . import packing as packing_module
from . import sharing
from .stats import DataStats


def _lengths(samples, column: str) -> np.ndarray:
    return pc.list_value_length(samples.data.column(column)).to_numpy().astype(np.int64)


def _count(samples, stats: DataStats, lengths: np.ndarray) -> np.ndarray:
    """Fill the sample counts of `stats`; returns the indices of the samples that are kept."""
    kept = np.flatnonzero(lengths)
    stats.n_samples = len(kept)
    stats.n_dropped = len(lengths) - len(kept)
    stats.n_truncated = int(pc.sum(samples.data.column("truncated").cast("int64")).as_py() or 0)
    stats.n_label_tokens = int(pc.sum(samples.data.column("n_targets").cast("int64")).as_py() or 0)
    return kept


class PackedRows(torch.utils.data.Dataset):
    """Item i is a row: a list of samples ({"input_ids", "labels"}) with at most max_seq_len positions.

    packing=True bin-packs samples into rows (best fit decreasing, row order shuffled with `seed`);
    packing=False gives one sample per row, in file order. Row i holds the samples
    row_samples[row_starts[i]:row_starts[i + 1]]. The packed layout is saved beside the samples' cache files
    and reused (packing millions of samples takes minutes in Python).

    share_prefixes=True (with packing) packs samples that open with the same loss-free tokens as one prefix and
    their branches (dataset/sharing.py): an entry is then a whole sample, a prefix ({"prefix": True}: a sample's
    first row_cuts positions) or a branch ({"prefix_length": n}: the sample from position n on).
    """

    def __init__(self, samples, stats: DataStats, packing: bool, seed: int, share_prefixes: bool = False):
        if share_prefixes and not packing:
            raise ValueError("sharing prefixes needs packing (it packs a prefix with its branches)")
        lengths = _lengths(samples, "input_ids")
        kept = _count(samples, stats, lengths)
        stats.n_positions = int(lengths.sum())
        cached = _layout_file(samples, stats.max_seq_len, seed, share_prefixes) if packing else None
        self.row_cuts = self.row_roles = None
        if cached is not None and cached.exists():
            with np.load(cached) as layout:
                self.row_samples, sizes = layout["row_samples"], layout["sizes"]
                if share_prefixes:
                    self.row_cuts, self.row_roles = layout["row_cuts"], layout["row_roles"]
        elif packing:
            if share_prefixes:
                columns = samples.select_columns(["input_ids", "labels"])[kept.tolist()]
                groups = sharing.shared_prefix_groups(columns["input_ids"], columns["labels"], stats.max_seq_len)
                items, item_sizes = sharing.group_entries(groups, lengths[kept])
                items = [[(int(kept[j]), cut, role) for j, cut, role in entries] for entries in items]
            else:
                items, item_sizes = [[(int(j), 0, 0)] for j in kept], lengths[kept].tolist()
            bins = packing_module.best_fit_decreasing(item_sizes, stats.max_seq_len)
            order = list(range(len(bins)))
            random.Random(seed).shuffle(order)
            entries = [entry for r in order for item in bins[r] for entry in items[item]]
            self.row_samples = np.array([j for j, _, _ in entries], np.int64)
            sizes = np.array([sum(len(items[item]) for item in bins[r]) for r in order], np.int64)
            if share_prefixes:
                self.row_cuts = np.array([cut for _, cut, _ in entries], np.int32)
                self.row_roles = np.array([role for _, _, role in entries], np.int8)
            del bins, items
            if cached is not None:
                tmp = cached.with_name(f"{cached.stem}.{os.getpid()}.tmp.npz")
                extra = dict(row_cuts=self.row_cuts, row_roles=self.row_roles) if share_prefixes else {}
                np.savez(tmp, row_samples=self.row_samples, sizes=sizes, **extra)
                os.replace(tmp, cached)
        else:
            self.row_samples, sizes = kept, np.ones(len(kept), np.int64)
        if self.row_roles is not None:  # a prefix saves the positions of all but one copy of it
            stats.n_shared_positions = int(self.row_cuts[self.row_roles == 2].astype(np.int64).sum()
                                           - self.row_cuts[self.row_roles == 1].astype(np.int64).sum())
            stats.n_positions -= stats.n_shared_positions
            stats.n_shared_prefixes = int((self.row_roles == 1).sum())
            stats.n_shared_branches = int((self.row_roles == 2).sum())
        self.row_starts = np.concatenate([[0], np.cumsum(sizes)])
        stats.n_rows = len(sizes)
        self.stats = stats
        self.samples = samples.select_columns(["input_ids", "labels"])

    @property
    def rows(self) -> list[np.ndarray]:
        """Every row's sample indices (for inspection; training reads rows one at a time)."""
        return [self.row_samples[a:b] for a, b in zip(self.row_starts[:-1], self.row_starts[1:])]

    def __len__(self) -> int:
        return len(self.row_starts) - 1

    def __getitem__(self, i: int) -> list[dict]:
        a, b = self.row_starts[i], self.row_starts[i + 1]
        columns = self.samples[self.row_samples[a:b].tolist()]
        rows = zip(columns["input_ids"], columns["labels"])
        if self.row_roles is None:
            return [{"input_ids": ids, "labels": labels} for ids, labels in rows]
        out = []
        for (ids, labels), cut, role in zip(rows, self.row_cuts[a:b].tolist(), self.row_roles[a:b].tolist()):
            if role == 1:
                out.append({"input_ids": ids[:cut], "labels": labels[:cut], "prefix": True})
            elif role == 2:
                out.append({"input_ids": ids[cut:], "labels": labels[cut:], "prefix_length": cut})
            else:
                out.append({"input_ids": ids, "labels": labels})
        return out


def _layout_file(samples, max_seq_len: int, seed: int, share_prefixes: bool = False) -> Path | None:
    """Where the packed layout of this samples table is cached (None for a table without cache files)."""
    if not samples.cache_files:
        return None
    folder = Path(samples.cache_files[0]["filename"]).parent
    code = hashlib.sha256(Path(packing_module.__file__).read_bytes() + Path(__file__).read_bytes()
                          + Path(sharing.__file__).read_bytes()).hexdigest()[:12]
    shared = "-shared" if share_prefixes else ""
    return folder / f"packed-{samples._fingerprint}-{max_seq_len}-{seed}{shared}-{code}.npz"


class PreferencePairs(torch.utils.data.Dataset):
    """Item i is a (chosen, rejected) pair of samples, in file order."""

    def __init__(self, samples, stats: DataStats):
        chosen, rejected = _lengths(samples, "chosen_input_ids"), _lengths(samples, "rejected_input_ids")
        self.rows = _count(samples, stats, chosen)
        stats.n_positions = int(chosen.sum() + rejected.sum())
        stats.n_rows = len(self.rows)
        self.stats = stats
        self.samples = samples.select_columns(
            ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[dict, dict]:
        row = self.samples[int(self.rows[i])]
        return tuple({"input_ids": row[f"{side}_input_ids"], "labels": row[f"{side}_labels"]}
                     for side in ("chosen", "rejected"))
