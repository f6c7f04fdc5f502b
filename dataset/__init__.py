"""MiniMind data: validated jsonl files -> cached tokenized samples -> (packed) rows -> batches.

    from dataset import DataError, load_records, build_dataset, PackedBatchCollator

See build_dataset for the datasets and PackedBatchCollator / DPOCollator for the batches.
"""
from .build import build_dataset
from .collate import DPOCollator, PackedBatchCollator, block_causal_mask
from .jsonl import DataError, Records, load_records
from .packing import best_fit_decreasing
from .prompts import PromptCollator, PromptSet, read_prompts
from .rows import PackedRows, PreferencePairs
from .samples import IGNORE_INDEX
from .stats import DataStats, DataWarning
from .streaming import StreamingRows

__all__ = ["DataError", "load_records", "build_dataset", "PackedBatchCollator", "DPOCollator",
           "block_causal_mask", "best_fit_decreasing", "Records", "PackedRows", "PreferencePairs",
           "StreamingRows", "DataStats", "DataWarning", "IGNORE_INDEX", "PromptSet", "PromptCollator", "read_prompts"]
