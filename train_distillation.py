"""White-box knowledge distillation from a teacher's logits. Run with --help for every flag; `torchrun --nproc_per_node N train_distillation.py ...` trains on N processes."""
from trainer import DISTILL, run

if __name__ == "__main__":
    run(DISTILL)
