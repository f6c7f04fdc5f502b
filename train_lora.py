"""Train a LoRA adapter with peft on a frozen base model. Run with --help for every flag; `torchrun --nproc_per_node N train_lora.py ...` trains on N processes."""
from trainer import LORA, run

if __name__ == "__main__":
    run(LORA)
