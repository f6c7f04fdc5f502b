"""Batching rows of samples into padded tensors."""
import torch

from .samples import IGNORE_INDEX


class PackedBatchCollator:
    """collate(rows) for rows that are lists of samples ({"input_ids": [...], "labels": [...]}).

    Returns input_ids / labels / position_ids as [B, T] tensors, right-padded (pad_id, IGNORE_INDEX, 0),
    with T the longest row (or max_seq_len when pad_to_max), plus
      attention_mask: None when every row holds one sample (causal attention is then enough,
                      padding being on the right); otherwise a bool [B, 1, T, T] block-diagonal
                      causal mask, True = may attend; padding positions attend to themselves only;
                      a branch of a shared prefix (dataset/sharing.py: a sample with "prefix_length",
                      after the one with "prefix": True) attends to that prefix and to itself, and its
                      positions continue from the prefix's length;
      num_items: int, the number of loss-bearing labels in the batch;
      loss_positions: [num_items] long, their flat (b * T + t) indices: the trainer computes logits only there
                      (found here, on the CPU, so selecting them needs no device sync in the step).
    """

    def __init__(self, pad_id: int, max_seq_len: int, pad_to_max: bool = False):
        self.pad_id, self.max_seq_len, self.pad_to_max = pad_id, max_seq_len, pad_to_max

    def __call__(self, rows: list[list[dict]]) -> dict:
        return self.collate(rows)

    def collate(self, rows: list[list[dict]]) -> dict:
        row_lengths = [sum(len(sample["input_ids"]) for sample in row) for row in rows]
        if max(row_lengths) > self.max_seq_len:
            raise ValueError(f"a row holds {max(row_lengths)} positions, more than max_seq_len={self.max_seq_len}")
        width = self.max_seq_len if self.pad_to_max else max(row_lengths)
        shape = (len(rows), width)
        input_ids = torch.full(shape, self.pad_id, dtype=torch.long)
        labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros(shape, dtype=torch.long)
        segment_ids = torch.full(shape, -1, dtype=torch.long)  # which sample of the row; -1 = padding
        prefix_ids = torch.full(shape, -2, dtype=torch.long)  # a branch's prefix segment; -2 = none
        shared = False
        for b, row in enumerate(rows):
            start, prefix = 0, None
            for k, sample in enumerate(row):
                end = start + len(sample["input_ids"])
                input_ids[b, start:end] = torch.tensor(sample["input_ids"])
                labels[b, start:end] = torch.tensor(sample["labels"])
                offset = sample.get("prefix_length", 0)
                position_ids[b, start:end] = torch.arange(offset, offset + end - start)
                segment_ids[b, start:end] = k
                if sample.get("prefix"):
                    prefix = k
                elif offset:
                    if prefix is None:
                        raise ValueError("a branch (prefix_length) without its prefix before it in the row")
                    prefix_ids[b, start:end] = prefix
                    shared = True
                start = end
        single = all(len(row) == 1 for row in rows)
        loss_positions = (labels.flatten() != IGNORE_INDEX).nonzero().squeeze(1)
        return {
            "input_ids": input_ids,
            "labels": labels,
            "position_ids": position_ids,
            "attention_mask": None if single else block_causal_mask(segment_ids, prefix_ids if shared else None),
            "num_items": len(loss_positions),
            "loss_positions": loss_positions,
        }


def block_causal_mask(segment_ids: torch.Tensor, prefix_ids: torch.Tensor | None = None) -> torch.Tensor:
    """[B, 1, T, T] bool: query q may attend key k iff k <= q and both are in the same sample, or k is in the
    prefix that q's sample continues (`prefix_ids`: that prefix's segment for each branch position, else -2)."""
    width, device = segment_ids.shape[1], segment_ids.device
    same_sample = segment_ids[:, :, None] == segment_ids[:, None, :]
    if prefix_ids is not None:
        same_sample |= prefix_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    real_query = (segment_ids >= 0)[:, :, None]
    # Padding queries see only themselves: a row with no allowed key would softmax to NaN.
    diagonal = torch.eye(width, dtype=torch.bool, device=device)
    return ((same_sample & causal & real_query) | diagonal).unsqueeze(1)


class DPOCollator:
    """collate(pairs) for (chosen, rejected) sample pairs.

    Returns the PackedBatchCollator fields for a [2B, T] batch, chosen rows first (0..B-1) then the
    rejected rows in the same order (B..2B-1); attention_mask is always None (one sample per row)
    and num_items is the number of pairs B.
    """

    def __init__(self, pad_id: int, max_seq_len: int, pad_to_max: bool = False):
        self.rows = PackedBatchCollator(pad_id, max_seq_len, pad_to_max)

    def __call__(self, pairs: list[tuple[dict, dict]]) -> dict:
        return self.collate(pairs)

    def collate(self, pairs: list[tuple[dict, dict]]) -> dict:
        batch = self.rows.collate([[chosen] for chosen, _ in pairs] + [[rejected] for _, rejected in pairs])
        batch["num_items"] = len(pairs)
        return batch
