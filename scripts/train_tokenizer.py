#!/usr/bin/env python
"""Train MiniMind's byte-level BPE tokenizer and write it in Hugging Face format.

The result is a folder (default: ``model/``) holding ``tokenizer.json`` and
``tokenizer_config.json`` that ``transformers.AutoTokenizer.from_pretrained`` loads
offline.

Fixed token ids:

    0  <|endoftext|>   pad and unk          (special)
    1  <|im_start|>    bos                  (special)
    2  <|im_end|>      eos                  (special)
    3  <think>         reasoning tags: always one id, but kept by
    4  </think>        decode(..., skip_special_tokens=True)
    5  <answer>        (added tokens with special=False)
    6  </answer>
    7  <tool_call>     tool-call tags, kept the same way
    8  </tool_call>
    9  <tool_response>
   10  </tool_response>

Everything else is learned by BPE over the 256 byte symbols, so any UTF-8 text
encodes and decodes back exactly.

Example (the command that produced the committed tokenizer)::

    .venv/bin/python scripts/train_tokenizer.py --data ../shared/data/pretrain.jsonl ../shared/data/sft.jsonl --vocab_size 6400 --out_dir model

Only report the compression of an existing tokenizer::

    .venv/bin/python scripts/train_tokenizer.py --report_only --out_dir model
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dataset.tokenizer_training import compression_stats, print_report, save, train_tokenizer, verify

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- cli


def _repo_path(p: str) -> Path:
    """Relative paths are taken relative to the repository root (the script's parent dir)."""
    path = Path(p)
    return path if path.is_absolute() else (REPO_ROOT / path).resolve()


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=(
            "Train MiniMind's byte-level BPE tokenizer (ids 0-2: <|endoftext|> <|im_start|> <|im_end|>; "
            "ids 3-6: <think> </think> <answer> </answer>; ids 7-10: <tool_call> </tool_call> <tool_response> "
            "</tool_response>) and write tokenizer.json + tokenizer_config.json (ChatML chat template with "
            "MiniMind-3's reasoning and tool blocks) loadable by transformers.AutoTokenizer. "
            "Relative paths are resolved against the repository root."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument(
        "--data",
        nargs="+",
        default=["../shared/data/pretrain.jsonl", "../shared/data/sft.jsonl"],
        help="jsonl training files in MiniMind formats: pretrain {'text'}, sft/reason/lora {'conversations': "
        "[{'role','content'}...]} (every content is used), dpo {'chosen','rejected'}.",
    )
    ap.add_argument("--out_dir", default="model", help="folder to write tokenizer.json and tokenizer_config.json into")
    ap.add_argument(
        "--vocab_size", type=int, default=6400, help="total vocabulary size, including the 11 fixed tokens and 256 bytes"
    )
    ap.add_argument(
        "--min_frequency", type=int, default=0, help="minimum count of a pair for the BPE trainer to merge it"
    )
    ap.add_argument(
        "--report_data",
        default="../shared/data/pretrain.jsonl",
        help="pretrain jsonl whose Chinese and English lines are used for the chars/token report "
        "(a line counts as Chinese when most of its letters are CJK)",
    )
    ap.add_argument("--no_report", action="store_true", help="skip the chars/token compression report")
    ap.add_argument(
        "--report_only", action="store_true", help="do not train; only print the report for the tokenizer in --out_dir"
    )
    ap.add_argument(
        "--no_verify", action="store_true", help="skip loading the result back with AutoTokenizer and checking it"
    )
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = _repo_path(args.out_dir)

    if not args.report_only:
        paths = [_repo_path(p) for p in args.data]
        for p in paths:
            if not p.is_file():
                raise SystemExit(f"no such data file: {p}")
        tok = train_tokenizer(paths, args.vocab_size, args.min_frequency, show_progress=not args.quiet)
        if tok.get_vocab_size() != args.vocab_size:
            print(
                f"warning: vocabulary has {tok.get_vocab_size()} entries, fewer than --vocab_size "
                f"{args.vocab_size} (not enough distinct pairs in the data)",
                file=sys.stderr,
            )
        save(tok, out_dir)
        print(f"wrote {out_dir / 'tokenizer.json'} and {out_dir / 'tokenizer_config.json'} "
              f"(vocab {tok.get_vocab_size()})")
        if not args.no_verify:
            verify(out_dir, tok.get_vocab_size())
            print("verified: AutoTokenizer loads it; fixed ids, tags, round trip and chat template OK")

    if args.report_only or not args.no_report:
        report_path = _repo_path(args.report_data)
        if report_path.is_file():
            print_report(compression_stats(out_dir, report_path), report_path)
        else:
            print(f"report skipped: no such file {report_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
