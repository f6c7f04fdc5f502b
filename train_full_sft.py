"""Supervised fine-tuning (assistant-token loss) from the pretrained model. Run with --help for every flag; `torchrun --nproc_per_node N train_full_sft.py ...` trains on N processes."""
from trainer import FULL_SFT, run

if __name__ == "__main__":
    run(FULL_SFT)
