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
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset import DataError  # noqa: E402
from scripts.chat_common import HelpFormatter  # noqa: E402
from scripts.chat_common import (MODEL_MODES, ModelNotFound, load_model, pick_device,  # noqa: E402
                                 pick_dtype, quiet_libraries)


DATA_HINT = "a jsonl file in MiniMind's formats; `python scripts/make_demo_data.py --out_dir data/demo` writes a demo set"


def producing_command(path) -> str:
    """The command that writes a model folder with this name (a best guess from the name)."""
    path = Path(path)
    if path.parent.name == "lora":
        return f"python train_lora.py --lora_name {re.sub(r'_[0-9]+(_moe)?$', '', path.name)}"
    for mode in sorted(MODEL_MODES.values(), key=lambda m: -len(m.stage)):
        if path.name.startswith(mode.stage + "_"):
            return mode.command
    return "one of the train_*.py scripts (or scripts/demo_pipeline.py)"


def resolve_model_arg(spec, base=None) -> tuple[Path, Path | None]:
    """(model folder, adapter folder or None) for a MODEL argument; ModelNotFound with a one-line message."""
    path = Path(spec)
    if not path.is_dir():
        raise ModelNotFound(f"{path} not found — produce it with: {producing_command(path)}")
    if (path / "adapter_config.json").exists():
        if base is None:
            recorded = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
            if not recorded:
                raise ModelNotFound(f"{path} is a LoRA adapter with no recorded base model: pass --base DIR")
            base = recorded
        base = Path(base)
        if not (base / "config.json").exists():
            raise ModelNotFound(f"{base} (base model of the adapter {path}) not found — produce it with: "
                                f"{producing_command(base)}, or pass --base DIR")
        return base, path
    if not (path / "config.json").exists():
        raise ModelNotFound(f"{path} is not a model folder (no config.json) — produce it with: {producing_command(path)}")
    return path, None


def model_label(path: Path, adapter: Path | None) -> str:
    return f"{path.name}+{adapter.name}" if adapter else path.name


def check_data(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({DATA_HINT})")
    return path


def evaluate(models, data, kind="auto", max_seq_len=512, batch_size=16, device="cpu", dtype="float32",
             base=None, limit=None, progress=True, cache_dir=None) -> list[dict]:
    """One result dict per (model, data file): model, data, kind, tokens, bytes, samples, nll, loss, perplexity,
    bits_per_byte. Every model is checked before any is loaded, so a typo fails fast."""
    from trainer.evaluation import detect_kind, score_file

    resolved = [resolve_model_arg(m, base) for m in models]
    files = [check_data(d) for d in ([data] if isinstance(data, (str, Path)) else data)]
    kinds = {f: detect_kind(f) if kind == "auto" else kind for f in files}
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    results = []
    for path, adapter in resolved:
        model, tokenizer = load_model(path, adapter, device=device, dtype=torch_dtype)
        label = model_label(path, adapter)
        for f in files:
            score = score_file(model, tokenizer, f, kinds[f], max_seq_len, batch_size, limit=limit, progress=progress,
                               desc=f"{label} on {f.name}", cache_dir=cache_dir)
            results.append({"model": label, "model_path": str(path), "adapter": str(adapter) if adapter else None,
                            "data": str(f), "kind": kinds[f], **score.as_dict()})
        del model
    return results


def format_table(results) -> str:
    header = ["model", "data", "kind", "tokens", "bytes", "loss", "ppl", "bpb"]
    rows = [[r["model"], Path(r["data"]).name, r["kind"], str(r["tokens"]), str(r["bytes"]), f"{r['loss']:.4f}",
             f"{r['perplexity']:.3f}", f"{r['bits_per_byte']:.4f}"] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    right = {3, 4, 5, 6, 7}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


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
