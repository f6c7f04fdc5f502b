"""Direct Preference Optimization against a frozen reference model. Run with --help for every flag; `torchrun --nproc_per_node N train_dpo.py ...` trains on N processes."""
from trainer import DPO_STAGE, run

if __name__ == "__main__":
    run(DPO_STAGE)
