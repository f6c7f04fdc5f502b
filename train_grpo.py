"""Reinforcement learning with verifiable rewards (GRPO) on a reasoning model. Run with --help for every flag;
`torchrun --nproc_per_node N train_grpo.py ...` trains on N processes."""
from trainer import GRPO_STAGE, run

if __name__ == "__main__":
    run(GRPO_STAGE)
