"""Perplexity and bits per byte of one or more models on a jsonl file.

  python scripts/eval_ppl.py out/pretrain_512 out/full_sft_512 --data data/heldout/pretrain.jsonl
  python scripts/eval_ppl.py out/full_sft_512 out/lora/lora_medical_512 --data data/heldout/medical.jsonl --json

The file may be in any of the project's formats (--kind auto reads it from the first record):
  {"text": ...}              pretraining text: every token is scored, plus the end-of-text token
  {"conversations": [...]}   SFT / LoRA / reasoning conversations: the assistant tokens (each reply and its
                             end-of-turn token), exactly the tokens the SFT loss trains on
  {"chosen": [...], ...}     DPO pairs: the chosen reply's tokens
Texts longer than --max_seq_len tokens are scored in consecutive windows of --max_seq_len tokens, each starting
without the previous window's context (as in training).

Numbers:
  loss        mean negative log-likelihood per scored token, in nats
  ppl         perplexity = exp(loss); a model that guesses uniformly scores its vocabulary size
  bpb         bits per byte = total NLL (nats) / (ln 2 x UTF-8 bytes of the scored text); comparable across
              tokenizers. The scored text is what the loss-bearing tokens decode to: data text (including added
              tokens such as <think>) counts its UTF-8 bytes; special control tokens (end-of-text <|endoftext|>,
              end-of-turn <|im_end|>) count 0 bytes although their NLL is in the total. For pretraining text the
              byte count is exactly the UTF-8 size of the texts.

A MODEL is a model folder written by a training script (MiniMind or Llama layout), or a LoRA adapter folder
(OUT_DIR/lora/<name>_<dim>): the adapter is merged into --base, or into the base model recorded in its
adapter_config.json. The default --dtype float32 gives the same numbers on CPU and CUDA within float tolerance.
"""
import argparse
import json
import sys

from dataset import DataError
from inference.checkpoints import ModelNotFound
from inference.cli import HelpFormatter
from inference.loading import quiet_libraries
from inference.perplexity import evaluate, format_table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model folders (e.g. out/full_sft_512) or LoRA adapter folders (e.g. out/lora/lora_medical_512)")
    p.add_argument("--data", required=True, action="append", metavar="FILE",
                   help="jsonl file to score (repeat for several files; every model is scored on every file)")
    p.add_argument("--kind", default="auto", choices=["auto", "pretrain", "sft", "dpo"],
                   help="how to read --data: auto from the first record; pretrain = all text tokens; sft = assistant "
                        "tokens of conversations; dpo = the chosen replies")
    p.add_argument("--max_seq_len", type=int, default=512,
                   help="tokens per scored window (use the length the model was trained with)")
    p.add_argument("--batch_size", type=int, default=16, help="rows of --max_seq_len tokens per forward pass")
    p.add_argument("--limit", type=int, default=None, help="score only N rows of each file: a fixed subset of the packed rows of --max_seq_len tokens (a quick look)")
    p.add_argument("--base", default=None, metavar="DIR",
                   help="base model for adapter MODELs (default: the base recorded in the adapter's adapter_config.json)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps, or auto (CUDA, then MPS, then CPU)")
    p.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weight precision; float32 gives the same numbers on CPU and CUDA (auto = bfloat16 on CUDA)")
    p.add_argument("--cache_dir", default=None, help="tokenization cache folder (default: the datasets library's cache)")
    p.add_argument("--json", action="store_true", help="print one JSON list of results (one object per model and file) instead of the table")
    p.add_argument("--no_progress", action="store_true", help="no progress bar (it goes to stderr)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_seq_len < 2 or args.batch_size < 1:
        print("error: --max_seq_len must be at least 2 and --batch_size at least 1", file=sys.stderr)
        return 2
    quiet_libraries()
    try:
        results = evaluate(args.models, args.data, args.kind, args.max_seq_len, args.batch_size, args.device,
                           args.dtype, args.base, args.limit, progress=not args.no_progress, cache_dir=args.cache_dir)
    except (ModelNotFound, FileNotFoundError, ValueError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(results, ensure_ascii=False, indent=1) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
