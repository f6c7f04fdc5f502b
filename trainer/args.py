"""Command-line flags shared by every stage (MiniMind's names), plus `--config FILE.yaml` whose values become
defaults that explicit flags override."""
import argparse
import sys

from configs import load_config, load_recipe, recipe_flags


def str2bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if value.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def base_parser(stage) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=stage.description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("data")
    g.add_argument("--data_path", default=stage.default_data, help="training data (jsonl in MiniMind's format)")
    g.add_argument("--max_seq_len", type=int, default=stage.max_seq_len, help="positions per row; longer samples are split (pretrain) or truncated with a warning (conversations)")
    g.add_argument("--no_packing", action="store_true", help="one sample per padded row (MiniMind's layout) instead of packing several samples per row")
    g.add_argument("--share_prefixes", action="store_true", help="pack conversations that open with the same loss-free tokens (e.g. one system prompt and tools block) as that prefix once plus each one's remainder, which attends to the prefix and itself only: the same loss, fewer positions (dataset/sharing.py)")
    g.add_argument("--streaming", action="store_true", help="read and tokenize the data on the fly (corpora larger than memory; no shuffling)")
    g.add_argument("--skip_bad_lines", action="store_true", help="skip malformed jsonl lines and report their count instead of stopping")
    g.add_argument("--cache_dir", default=None, help="where tokenized data is cached (default: the datasets library's cache)")
    g.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes")
    g.add_argument("--num_proc", type=int, default=1, help="processes that validate and tokenize a jsonl file into the cache (map-style; a cache built with another --num_proc is rebuilt)")
    g.add_argument("--tokenizer_path", default=None, help="tokenizer folder (default: the project's tokenizer in model/)")

    g = p.add_argument_group("model")
    g.add_argument("--config", default=None, help="yaml preset (configs/small.yaml, or a name: tiny/small/base/moe/minimind3/minimind3_moe); flags given on the command line override it")
    g.add_argument("--dim", type=int, default=512, help="model width (hidden size); also names the output folder")
    g.add_argument("--n_layers", type=int, default=8, help="number of transformer blocks")
    g.add_argument("--n_heads", type=int, default=8, help="query heads")
    g.add_argument("--n_kv_heads", type=int, default=2, help="key/value heads (grouped-query attention)")
    g.add_argument("--intermediate_size", type=int, default=None, help="SwiGLU hidden size (default: 8/3·dim rounded up to a multiple of 64)")
    g.add_argument("--qk_norm", type=str2bool, nargs="?", const=True, default=False, help="RMSNorm on each head's query and key before RoPE (Qwen3 / MiniMind-3; exports as Qwen3)")
    g.add_argument("--rope_theta", type=float, default=1e6, help="RoPE base frequency")
    g.add_argument("--rms_norm_eps", type=float, default=1e-5, help="epsilon of every RMSNorm (MiniMind-3 uses 1e-6)")
    g.add_argument("--use_moe", type=str2bool, nargs="?", const=True, default=False, help="mixture-of-experts feed-forward (output folders get a _moe suffix)")
    g.add_argument("--n_routed_experts", type=int, default=4, help="MoE: routed experts per layer")
    g.add_argument("--num_experts_per_tok", type=int, default=2, help="MoE: experts each token is sent to (top-k)")
    g.add_argument("--n_shared_experts", type=int, default=1, help="MoE: always-on shared experts (MiniMind2: 1, MiniMind-3: 0)")
    g.add_argument("--aux_loss_alpha", type=float, default=0.1, help="MoE: weight of the expert-balance loss (MiniMind-3: 5e-4)")
    g.add_argument("--seq_aux", type=str2bool, nargs="?", const=True, default=True, help="MoE: balance experts within each sequence (MiniMind2) rather than over the batch (false, MiniMind-3)")
    g.add_argument("--dropout", type=float, default=0.0, help="dropout for a model built from scratch")
    g.add_argument("--from_weight", default=stage.default_from or "none",
                   help="starting weights: a stage name (pretrain, full_sft, rlhf, reason, ...) resolved to OUT_DIR/<name>_<dim>[_moe], a model folder, or 'none' for a fresh model")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=stage.epochs, help="passes over the data")
    g.add_argument("--max_steps", type=int, default=0, help="stop after this many optimizer steps (0: run all epochs)")
    g.add_argument("--batch_size", type=int, default=stage.batch_size, help="rows per micro-batch per process")
    g.add_argument("--accumulation_steps", type=int, default=stage.accumulation_steps, help="micro-batches per optimizer step")
    g.add_argument("--learning_rate", type=float, default=stage.learning_rate, help="peak learning rate (of AdamW; see --lr_schedule for its course)")
    g.add_argument("--warmup_iters", type=int, default=0, help="linear warm-up steps before the schedule")
    g.add_argument("--lr_schedule", default="cosine", choices=["cosine", "wsd"],
                   help="cosine: MiniMind's cosine decay to --min_lr_ratio of the peak; wsd: warm-up, stable at the peak, linear decay over the last --decay_frac of the steps")
    g.add_argument("--decay_frac", type=float, default=0.3, help="wsd: share of the steps in the final decay")
    g.add_argument("--min_lr_ratio", type=float, default=0.1,
                   help="the schedule's floor as a fraction of each peak: wsd ends there; MiniMind's cosine adds it to the cosine (starts at 1.1x the peak with 0.1, ends at 0.1x)")
    g.add_argument("--embed_lr", type=float, default=None,
                   help="peak AdamW learning rate of the token embedding (tied to the LM head); unset: --learning_rate")
    g.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"],
                   help="adamw: AdamW for all parameters; muon: Muon for the 2-D weight matrices inside the blocks, AdamW (at --learning_rate) for embeddings, norms and the MoE router")
    g.add_argument("--muon_lr", type=float, default=stage.muon_lr,
                   help="peak learning rate of the Muon group (--optimizer muon), same schedule; unset: --learning_rate with Muon's update RMS matched to AdamW's (for fine-tuning a trained model)")
    g.add_argument("--muon_momentum", type=float, default=0.95, help="Muon's Nesterov momentum")
    g.add_argument("--muon_ns_steps", type=int, default=5,
                   help="Newton-Schulz iterations that orthogonalise each Muon update (each costs three matrix products per weight matrix)")
    g.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    g.add_argument("--grad_clip", type=float, default=1.0, help="clip the gradient norm to this (0: no clipping)")
    g.add_argument("--seed", type=int, default=42, help="seed for initialisation, data order and dropout")
    g.add_argument("--skip_nonfinite", action="store_true", help="skip an optimizer step whose loss or gradient is NaN/inf instead of stopping the run")

    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (CUDA when available); torchrun picks the GPU per rank")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast precision (weights stay fp32): auto = bfloat16 where the device has it natively (CUDA; CPUs with avx512_bf16/AMX), else float32; float16 adds a GradScaler")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model for the training steps (first steps are slow while it compiles; on CPU it needs a C++ compiler)")
    g.add_argument("--gradient_checkpointing", action="store_true",
                   help="activation checkpointing (Hugging Face's activation_checkpointing_enable): keep only each block's input in the forward pass and recompute the block in the backward pass; less activation memory for about one more forward pass of compute")
    g.add_argument("--fsdp", action="store_true",
                   help="under torchrun, shard weights, gradients and optimizer state across the processes (PyTorch FSDP2) instead of DDP's full copy in each; checkpoints become sharded (torch.distributed.checkpoint), the final model a normal folder; AdamW only")

    g = p.add_argument_group("output and logging")
    g.add_argument("--out_dir", default="out", help="where final model folders, run logs and checkpoints go")
    g.add_argument("--save_name", default=None, help="final folder name (default: <stage>_<dim>[_moe], as MiniMind names its files)")
    g.add_argument("--save_interval", type=int, default=100, help="write a resumable checkpoint every N optimizer steps (0: only at the end)")
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint of this run (same flags)")
    g.add_argument("--log_interval", type=int, default=10, help="log metrics every N optimizer steps")
    g.add_argument("--eval_data", default=None, help="held-out jsonl scored during training (validation loss and bits per byte in metrics.jsonl)")
    g.add_argument("--eval_interval", type=int, default=0, help="validate every N optimizer steps (0: only at the end); needs --eval_data")
    g.add_argument("--eval_rows", type=int, default=64, help="rows of --eval_data (packed, --max_seq_len each) to score per validation")
    g.add_argument("--use_wandb", action="store_true", help="log to Weights & Biases (set WANDB_MODE=offline to log without an account)")
    g.add_argument("--wandb_project", default="MiniMind", help="wandb project name")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    stage.add_arguments(p)
    return p


def parse_args(stage, argv=None) -> argparse.Namespace:
    parser = base_parser(stage)
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    pre, _ = parser.parse_known_args(argv)
    known = {a.dest for a in parser._actions}
    if getattr(pre, "recipe", None):  # only pretraining has --recipe
        try:
            values = recipe_flags(load_recipe(pre.recipe))
        except ValueError as e:
            parser.error(str(e))
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"recipe {pre.recipe}: unknown flags {unknown}")
        parser.set_defaults(**values)
    if pre.config:
        try:
            values = load_config(pre.config)
        except ValueError as e:
            parser.error(str(e))
        if "recipe" in values:
            parser.error(f"{pre.config}: give --recipe on the command line, not in a --config file")
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"{pre.config}: unknown keys {unknown} (keys are flag names, e.g. dim, n_layers, batch_size)")
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    for name in ("batch_size", "accumulation_steps", "max_seq_len", "epochs"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    if not 0.0 < args.decay_frac <= 1.0:
        parser.error(f"--decay_frac must be in (0, 1], got {args.decay_frac}")
    if not 0.0 <= args.min_lr_ratio <= 1.0:
        parser.error(f"--min_lr_ratio must be in [0, 1], got {args.min_lr_ratio}")
    return args
