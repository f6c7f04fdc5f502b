"""Iterable datasets for corpora larger than memory: validate, tokenize and pack on the fly."""
import random
import warnings

import datasets
import torch

from . import tables
from .jsonl import DataError, skipped_lines_message
from .packing import best_fit_decreasing
from .samples import tokenize_batch
from .stats import DataStats, DataWarning


class StreamingRows(torch.utils.data.IterableDataset):
    """Yields rows (lists of samples; (chosen, rejected) pairs for dpo) like the map-style datasets.

    Records are dealt round-robin by line to rank x DataLoader-worker shards, so every shard sees
    disjoint records and rows; shards may yield different numbers of rows. Samples are packed in
    buffers of `buffer_size` samples (best fit decreasing within a buffer, rows shuffled with
    seed and epoch). A bad line raises DataError when it is reached, unless skip_bad_lines.
    `stats` counts what this process has read so far.
    """

    def __init__(self, kind: str, path, tokenizer, max_seq_len: int, packing: bool = True,
                 skip_bad_lines: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 buffer_size: int = 4096, batch_size: int = 256):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in range for world_size {world_size}")
        self.kind, self.path, self.tokenizer, self.max_seq_len = kind, path, tokenizer, max_seq_len
        self.packing, self.skip_bad_lines, self.seed = packing, skip_bad_lines, seed
        self.rank, self.world_size = rank, world_size
        self.buffer_size, self.batch_size = buffer_size, batch_size
        self.epoch = 0
        self.stats = DataStats(kind, str(path), max_seq_len)
        self._first_error = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self) -> tuple[int, int]:
        worker = torch.utils.data.get_worker_info()
        n_workers, worker_id = (worker.num_workers, worker.id) if worker else (1, 0)
        return self.rank * n_workers + worker_id, self.world_size * n_workers

    def __iter__(self):
        shard_index, num_shards = self._shard()
        records = datasets.IterableDataset.from_generator(
            tables.record_rows, features=tables.record_features(self.kind),
            gen_kwargs={"path": str(self.path), "kind": self.kind,
                        "shard_index": shard_index, "num_shards": num_shards})
        rng = random.Random(f"{self.seed}/{self.epoch}/{shard_index}")
        buffer = []
        for batch in records.iter(batch_size=self.batch_size):
            self._check_bad_lines(batch)
            buffer.extend(self._samples(batch))
            if len(buffer) >= self.buffer_size:
                yield from self._rows(buffer, rng)
                buffer = []
        yield from self._rows(buffer, rng)
        self._report()

    def _check_bad_lines(self, batch: dict) -> None:
        for line, problem in zip(batch["line"], batch["error"]):
            if problem is None:
                continue
            error = DataError.at(self.path, line, problem)
            if not self.skip_bad_lines:
                raise error
            self.stats.n_bad_lines += 1
            self._first_error = self._first_error or error

    def _samples(self, batch: dict) -> list:
        columns = tokenize_batch(batch, kind=self.kind, tokenizer=self.tokenizer, max_seq_len=self.max_seq_len)
        stats = self.stats
        stats.n_records += sum(problem is None for problem in batch["error"])
        stats.n_truncated += sum(columns["truncated"])
        stats.n_label_tokens += sum(columns["n_targets"])
        if self.kind == "dpo":
            found = [tuple({"input_ids": columns[f"{side}_input_ids"][i], "labels": columns[f"{side}_labels"][i]}
                           for side in ("chosen", "rejected"))
                     for i in range(len(columns["n_targets"]))]
            kept = [pair for pair in found if pair[0]["input_ids"]]
            stats.n_positions += sum(len(c["input_ids"]) + len(r["input_ids"]) for c, r in kept)
        else:
            found = [{"input_ids": ids, "labels": labels}
                     for ids, labels in zip(columns["input_ids"], columns["labels"])]
            kept = [sample for sample in found if sample["input_ids"]]
            stats.n_positions += sum(len(sample["input_ids"]) for sample in kept)
        stats.n_samples += len(kept)
        stats.n_dropped += len(found) - len(kept)
        return kept

    def _rows(self, buffer: list, rng: random.Random) -> list:
        if self.kind == "dpo" or not self.packing:
            rows = buffer if self.kind == "dpo" else [[sample] for sample in buffer]
        else:
            bins = best_fit_decreasing([len(sample["input_ids"]) for sample in buffer], self.max_seq_len)
            rows = [[buffer[i] for i in row] for row in bins]
            rng.shuffle(rows)
        self.stats.n_rows += len(rows)
        return rows

    def _report(self) -> None:
        if self._first_error:
            warnings.warn(skipped_lines_message(self.path, self.stats.n_bad_lines, self._first_error),
                          DataWarning, stacklevel=2)
        self.stats.warn_truncation()
