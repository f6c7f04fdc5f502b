"""Feeding the loop: the dataset's rows, in a seeded per-epoch order, as collated micro-batches."""
import math

import torch

from torch.utils.data import DataLoader

from dataset import DPOCollator, PackedBatchCollator, build_dataset


def epoch_batches(n_rows: int, batch_size: int, epoch: int, seed: int, info, shuffle: bool = True):
    """This rank's micro-batches (lists of row indices) for one epoch: a seeded shuffle of all rows, padded by
    repetition to a multiple of the world size (every rank does the same number of steps), dealt round-robin."""
    if shuffle:
        order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    else:
        order = list(range(n_rows))
    if info.world_size > 1 and n_rows % info.world_size:
        order += order[: info.world_size - n_rows % info.world_size]
    mine = order[info.rank::info.world_size]
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


class TrainData:
    def __init__(self, dataset, collate, args, streaming: bool):
        self.dataset, self.collate, self.args, self.streaming = dataset, collate, args, streaming

    @classmethod
    def build(cls, kind: str, args, tokenizer, info):
        dataset = build_dataset(
            kind, args.data_path, tokenizer, args.max_seq_len, packing=not args.no_packing and kind != "dpo",
            cache_dir=args.cache_dir, skip_bad_lines=args.skip_bad_lines, streaming=args.streaming,
            seed=args.seed, rank=info.rank, world_size=info.world_size, num_proc=args.num_proc,
            share_prefixes=getattr(args, "share_prefixes", False),
        )
        if getattr(args, "mix_data", None):
            dataset = cls._mixed(dataset, kind, args, tokenizer)
        pad = tokenizer.pad_token_id
        collate = DPOCollator(pad, args.max_seq_len) if kind == "dpo" else PackedBatchCollator(pad, args.max_seq_len)
        if args.streaming and not args.max_steps:
            raise ValueError("--streaming needs --max_steps (the number of rows is unknown in advance)")
        return cls(dataset, collate, args, args.streaming)

    @staticmethod
    def _mixed(dataset, kind: str, args, tokenizer):
        """The stage's rows with --mix_ratio of general rows from --mix_data (dataset/mixing.py)."""
        from dataset.mixing import MixedRows
        from .evaluation import detect_kind

        if args.streaming:
            raise ValueError("--mix_data needs the map-style data path (it cannot be combined with --streaming)")
        if kind != "sft":
            raise ValueError(f"--mix_data mixes into conversation stages, not {kind!r}")
        mix_kind = detect_kind(args.mix_data)
        if mix_kind not in ("pretrain", "sft"):
            raise ValueError(f"{args.mix_data}: --mix_data must be conversations or plain text, not {mix_kind} pairs")
        mix = build_dataset(mix_kind, args.mix_data, tokenizer, args.max_seq_len, packing=not args.no_packing,
                            cache_dir=args.cache_dir, skip_bad_lines=args.skip_bad_lines, seed=args.seed)
        return MixedRows(dataset, mix, args.mix_ratio, args.seed)

    def report(self) -> list[str]:
        stats = getattr(self.dataset, "stats", None)
        if stats is None or self.streaming:
            return []
        timing = getattr(stats, "timing", None)  # map-style builds time their steps; GRPO's prompts do not
        lines = [str(stats), timing()] if timing and stats.seconds else [str(stats)]
        if hasattr(self.dataset, "describe"):  # mixed-in general data says how much of it there is
            lines.append(self.dataset.describe())
        return lines

    def _collate(self, rows):
        batch = self.collate(rows)
        # real (non-padding) positions, counted here on the CPU for the tokens/s figure
        batch["num_tokens"] = sum(len(sample["input_ids"]) for row in rows for sample in row)
        return batch

    def steps_per_epoch(self, batch_size: int, accumulation: int, info) -> int:
        if self.streaming:
            return self.args.max_steps
        rows_per_rank = math.ceil(len(self.dataset) / info.world_size)
        return math.ceil(math.ceil(rows_per_rank / batch_size) / accumulation)

    def micro_batches(self, epoch: int, batch_size: int, seed: int, info, skip: int):
        """Collated CPU batches for this rank, skipping the first `skip` micro-batches (a resumed epoch)."""
        if self.streaming:
            loader = DataLoader(self.dataset, batch_size=batch_size, collate_fn=self._collate,
                                num_workers=self.args.num_workers, generator=torch.Generator().manual_seed(seed + epoch))
            it = iter(loader)
            for _ in range(skip):
                next(it, None)
            return it
        if hasattr(self.dataset, "set_epoch"):  # mixed data: this epoch's general rows (the same on resume)
            self.dataset.set_epoch(epoch)
        batches = epoch_batches(len(self.dataset), batch_size, epoch, seed, info)[skip:]
        # an own generator: creating the iterator must not draw from the global RNG (dropout's), or a resumed
        # run, which creates one more iterator, would diverge
        return iter(DataLoader(self.dataset, batch_sampler=batches, collate_fn=self._collate,
                               num_workers=self.args.num_workers, pin_memory=info.device.type == "cuda",
                               generator=torch.Generator().manual_seed(seed + epoch)))
