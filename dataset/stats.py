"""Counts that describe a built dataset, and the warnings that must not go unnoticed."""
import warnings
from dataclasses import dataclass, field


class DataWarning(UserWarning):
    """Bad lines were skipped, or samples were truncated or dropped."""


@dataclass
class DataStats:
    kind: str
    path: str
    max_seq_len: int
    n_records: int = 0       # good records read
    n_bad_lines: int = 0     # lines skipped (skip_bad_lines=True)
    n_samples: int = 0       # samples kept (pairs for dpo); a long pretrain document gives several
    n_truncated: int = 0     # conversations (pairs for dpo) cut to max_seq_len
    n_dropped: int = 0       # of those, dropped for having no loss-bearing label left
    n_rows: int = 0          # dataset items
    n_positions: int = 0     # non-padding positions over all kept samples
    n_label_tokens: int = 0  # labels that carry loss
    n_bytes: int = 0         # size of the file
    n_shared_prefixes: int = 0   # share_prefixes: prefixes packed once ...
    n_shared_branches: int = 0   # ... for this many samples, which continue them
    n_shared_positions: int = 0  # positions not computed thanks to them (not in n_positions)
    seconds: dict = field(default_factory=dict)  # map-style build: validate, tokenize, rows (each from cache if cached)

    @property
    def fill(self) -> float:
        """Share of row positions holding real tokens when every row is padded to max_seq_len."""
        per_row = self.max_seq_len * (2 if self.kind == "dpo" else 1)
        return self.n_positions / (self.n_rows * per_row) if self.n_rows else 0.0

    def __str__(self) -> str:
        return (f"{self.path} ({self.kind}): {self.n_records} records, {self.n_samples} samples in "
                f"{self.n_rows} rows of <= {self.max_seq_len} positions ({self.fill:.1%} filled), "
                f"{self.n_label_tokens} label tokens, {self.n_truncated} truncated, {self.n_dropped} dropped, "
                f"{self.n_bad_lines} bad lines skipped" + (
                    f"; {self.n_shared_branches} samples continue {self.n_shared_prefixes} shared prefixes "
                    f"({self.n_shared_positions} positions not repeated)" if self.n_shared_prefixes else ""))

    def timing(self) -> str:
        """One line: how long each build step took, with the file's MB/s (a cached step is a load)."""
        if not self.seconds:
            return ""
        mb = self.n_bytes / 1e6
        parts = [f"{name} {s:.1f} s" + (f" ({mb / s:.1f} MB/s)" if name != "rows" and s > 0 else "")
                 for name, s in self.seconds.items()]
        return f"{self.path}: {mb:.1f} MB ready in {sum(self.seconds.values()):.1f} s: " + ", ".join(parts)

    def warn_truncation(self) -> None:
        if not self.n_truncated:
            return
        unit = "pairs" if self.kind == "dpo" else "conversations"
        warnings.warn(f"{self.path}: truncated {self.n_truncated} of {self.n_records} {unit} to "
                      f"{self.max_seq_len} positions; dropped {self.n_dropped} of them that had no "
                      f"loss-bearing token left", DataWarning, stacklevel=3)
