"""Mixing general data into a fine-tuning set, so that a narrow stage (an adapter, a reasoning format) adds to what
the model knows instead of overwriting it.

MixedRows puts `ratio` of each epoch's rows from a second dataset (the "mix"): an epoch holds all of the main
rows plus n_mix = round(n_main · ratio / (1 − ratio)) mix rows. Which mix rows an epoch gets is a pure function of
(seed, epoch): the mix rows are read as one endless stream of seeded permutations of the mix file and epoch e takes
the stream's positions [e · n_mix, (e + 1) · n_mix). So every mix row is used before any repeats, epochs see
different general rows, and a resumed run (which calls set_epoch with the epoch it resumes in) gets exactly the
rows the uninterrupted run had.
"""
import torch


class MixedRows(torch.utils.data.Dataset):
    """Items [0, n_main) are the main dataset's rows; items [n_main, n_main + n_mix) this epoch's mix rows."""

    def __init__(self, main, mix, ratio: float, seed: int):
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"mix ratio must be in (0, 1), got {ratio}")
        if len(mix) == 0:
            raise ValueError(f"{getattr(getattr(mix, 'stats', None), 'path', 'the mix data')}: no rows to mix in")
        self.main, self.mix, self.ratio, self.seed = main, mix, ratio, seed
        self.n_mix = max(1, round(len(main) * ratio / (1.0 - ratio)))
        self.stats = getattr(main, "stats", None)  # the stage's own data's counts (the summary's first line)
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Choose this epoch's mix rows (call before iterating; the trainer does it for each epoch)."""
        self.epoch = epoch
        self.mix_rows = self.stream(epoch * self.n_mix, self.n_mix)

    def stream(self, start: int, count: int) -> list[int]:
        """Positions [start, start + count) of the endless stream of seeded permutations of the mix rows."""
        n = len(self.mix)
        out, perm_index, perm = [], None, None
        for k in range(start, start + count):
            if k // n != perm_index:
                perm_index = k // n
                perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100003 + perm_index)).tolist()
            out.append(perm[k % n])
        return out

    def is_mix(self, i: int) -> bool:
        return i >= len(self.main)

    def __len__(self) -> int:
        return len(self.main) + self.n_mix

    def __getitem__(self, i: int):
        if i < len(self.main):
            return self.main[i]
        return self.mix[self.mix_rows[i - len(self.main)]]

    def describe(self) -> str:
        mix_stats = self.mix.stats
        share_tokens = self._label_token_share()
        return (f"mixed in {mix_stats.path} ({mix_stats.kind}, {len(self.mix)} rows): {self.n_mix} rows per epoch, "
                f"{self.n_mix / len(self):.1%} of the epoch's {len(self)} rows (asked {self.ratio:.0%}; "
                f"≈{share_tokens:.1%} of the label tokens), a fresh seeded choice each epoch")

    def _label_token_share(self) -> float:
        main_tokens = self.main.stats.n_label_tokens
        per_mix_row = self.mix.stats.n_label_tokens / max(1, len(self.mix))
        mix_tokens = per_mix_row * self.n_mix
        return mix_tokens / max(1.0, main_tokens + mix_tokens)
