"""The cached Arrow tables behind a dataset: validated records, then tokenized samples.

Both steps are cached by `datasets` under fingerprints computed here rather than by hashing
Python objects: the records table is keyed by the file's path, size and mtime (so editing the
file invalidates it), the samples table by the records key, the tokenizer's contents,
max_seq_len and the source of the tokenization code.
"""
import hashlib
import json
from functools import partial
from pathlib import Path

import datasets
from datasets import Features, List, Value

from . import jsonl, samples

# Every turn has all of jsonl.TURN_FIELDS (null where absent); tools / tool_calls are JSON text, so any schema shape
# caches losslessly (a struct column would add missing keys and reorder them).
_TURNS = List({name: Value("string") for name in jsonl.TURN_FIELDS})
_RECORD_COLUMNS = {"pretrain": {"text": Value("string")},
                   "sft": {"conversations": _TURNS},
                   "dpo": {"chosen": _TURNS, "rejected": _TURNS}}


def record_features(kind: str) -> Features:
    # A bad line is kept as a row with `error` set so that the cached table remembers it.
    return Features({"line": Value("int64"), "error": Value("string"), **_RECORD_COLUMNS[kind]})


def record_rows(path: str, kind: str, shard_index: int = 0, num_shards: int = 1, ranges=None):
    """Generator for datasets: one row per non-blank line (of this shard), or of the given byte ranges
    [(start, end, first line number)] (datasets hands each worker process its part of the list)."""
    empty = dict.fromkeys(_RECORD_COLUMNS[kind])
    for start, end, first_line in ranges or [(0, None, 1)]:
        for line_no, record, problem in jsonl.iter_lines(path, kind, start, end, first_line, shard_index, num_shards):
            yield {"line": line_no, "error": problem, **(record or empty)}


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _source(filename: str) -> str:
    return hashlib.sha256(Path(filename).read_bytes()).hexdigest()


def record_table(kind: str, path, cache_dir=None, num_proc: int = 1) -> tuple[datasets.Dataset, str]:
    """The records table of a file and its fingerprint; num_proc > 1 validates byte ranges of the file in
    parallel (the table, its row order and its cache are the same for any num_proc)."""
    signature = jsonl.file_signature(path)
    fingerprint = _digest("records", kind, signature, _source(jsonl.__file__), _source(__file__))
    gen_kwargs = {"path": signature["path"], "kind": kind}
    if num_proc > 1 and _cached_table(cache_dir, fingerprint) is None:
        gen_kwargs["ranges"] = jsonl.line_ranges(signature["path"], num_proc)
        num_proc = len(gen_kwargs["ranges"])
    records = datasets.Dataset.from_generator(
        record_rows, features=record_features(kind), cache_dir=cache_dir, fingerprint=fingerprint,
        gen_kwargs=gen_kwargs, num_proc=num_proc if num_proc > 1 else None)
    return records, fingerprint


def _cached_table(cache_dir, fingerprint):
    """Whether datasets already holds the records table (then there is nothing to split)."""
    root = Path(cache_dir) if cache_dir else Path(datasets.config.HF_DATASETS_CACHE)
    found = list((root / "generator").glob(f"default-fingerprint={fingerprint}*"))
    return found[0] if found else None


def first_bad_line(records: datasets.Dataset, path) -> tuple[int, jsonl.DataError | None]:
    """(number of bad lines, DataError for the first one) from a records table."""
    errors = records.data.column("error")
    n_bad = len(errors) - errors.null_count
    if not n_bad:
        return 0, None
    lines, problems = records.data.column("line").to_pylist(), errors.to_pylist()
    first = next(i for i, problem in enumerate(problems) if problem is not None)
    return n_bad, jsonl.DataError.at(path, lines[first], problems[first])


def sample_table(records: datasets.Dataset, records_fingerprint: str, kind: str, tokenizer, max_seq_len: int,
                 path, num_proc: int = 1) -> datasets.Dataset:
    fingerprint = _digest("samples", records_fingerprint, samples.tokenizer_signature(tokenizer),
                          max_seq_len, _source(samples.__file__))
    tokenize = partial(samples.tokenize_batch, kind=kind, tokenizer=tokenizer, max_seq_len=max_seq_len)
    return records.map(tokenize, batched=True, remove_columns=records.column_names,
                       features=samples.sample_features(kind), new_fingerprint=fingerprint,
                       desc=f"tokenizing {path}", num_proc=num_proc if num_proc > 1 else None)
