"""Pretrain MiniMind from scratch on plain text. Run with --help for every flag; `torchrun --nproc_per_node N train_pretrain.py ...` trains on N processes."""
from trainer import PRETRAIN, run

if __name__ == "__main__":
    run(PRETRAIN)
