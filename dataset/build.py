"""build_dataset: from a jsonl file to a dataset of rows ready for a collator."""
import time
import warnings
from pathlib import Path

from . import tables
from .jsonl import check_kind, skipped_lines_message
from .rows import PackedRows, PreferencePairs
from .samples import check_tokenizer
from .stats import DataStats, DataWarning
from .streaming import StreamingRows


def build_dataset(kind: str, path, tokenizer, max_seq_len: int, packing: bool = True, cache_dir=None,
                  skip_bad_lines: bool = False, streaming: bool = False, seed: int = 0,
                  rank: int = 0, world_size: int = 1, buffer_size: int = 4096, num_proc: int = 1,
                  share_prefixes: bool = False):
    """A dataset of rows for `kind` ("pretrain", "sft" or "dpo").

    Map-style (default): the whole file is validated first (the first bad line raises DataError
    unless skip_bad_lines), then tokenized once into a `datasets` cache under cache_dir (None:
    datasets' default cache) that later builds reuse; returns PackedRows, or PreferencePairs for dpo.
    streaming=True: returns a StreamingRows iterable that validates, tokenizes and packs on the fly,
    reading only this rank's share of the records (rank, world_size); cache_dir is not used.
    num_proc > 1 validates and tokenizes in that many processes (map-style).
    share_prefixes=True (map-style, packed) packs conversations that open with the same loss-free tokens as one
    prefix and branches (dataset/sharing.py).
    Counts are in `.stats`, and for map-style the seconds each step took in `.stats.seconds`.
    """
    check_kind(kind)
    check_tokenizer(tokenizer, kind)
    if max_seq_len < 2:
        raise ValueError(f"max_seq_len must be at least 2, got {max_seq_len}")
    if share_prefixes and (streaming or kind == "dpo" or not packing):
        raise ValueError("sharing prefixes needs the map-style, packed data path of a text or conversation file "
                         "(not --streaming, --no_packing or DPO pairs)")
    if streaming:
        return StreamingRows(kind, path, tokenizer, max_seq_len, packing=packing, skip_bad_lines=skip_bad_lines,
                             seed=seed, rank=rank, world_size=world_size, buffer_size=buffer_size)
    stats = DataStats(kind, str(path), max_seq_len)
    stats.n_bytes = Path(path).stat().st_size
    start = time.perf_counter()
    records, records_fingerprint = tables.record_table(kind, path, cache_dir, num_proc)
    stats.n_bad_lines, first_error = tables.first_bad_line(records, path)
    if first_error and not skip_bad_lines:
        raise first_error
    if first_error:
        warnings.warn(skipped_lines_message(path, stats.n_bad_lines, first_error), DataWarning, stacklevel=2)
    stats.n_records = len(records) - stats.n_bad_lines
    validated = time.perf_counter()
    samples = tables.sample_table(records, records_fingerprint, kind, tokenizer, max_seq_len, path, num_proc)
    tokenized = time.perf_counter()
    dataset = PreferencePairs(samples, stats) if kind == "dpo" else PackedRows(samples, stats, packing, seed,
                                                                                    share_prefixes)
    stats.seconds = {"validate": validated - start, "tokenize": tokenized - validated,
                     "rows": time.perf_counter() - tokenized}
    stats.warn_truncation()
    return dataset
