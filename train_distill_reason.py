"""Reasoning distillation with weighted <think>/<answer> tag loss. Run with --help for every flag; `torchrun --nproc_per_node N train_distill_reason.py ...` trains on N processes."""
from trainer import REASON, run

if __name__ == "__main__":
    run(REASON)
