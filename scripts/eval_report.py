"""What each stage of a pipeline bought, in numbers: one table and one chart for all the models it produced.

  python scripts/eval_report.py --out_dir out/demo                  # after scripts/demo_pipeline.py
  python scripts/eval_report.py --out_dir out --dim 512 --text heldout/pretrain.jsonl --chat heldout/sft.jsonl \\
      --dpo heldout/dpo.jsonl --reason_prompts heldout/reason.jsonl

Models are found the way the training scripts name them: OUT_DIR/<stage>_<dim>[_moe] for pretrain, full_sft,
rlhf (DPO), reason, grpo and distill, and every LoRA adapter OUT_DIR/lora/<name>_<dim>[_moe], applied to
--lora_base. Each model is measured on what the stages are for:

  text ppl / bpb   held-out perplexity and bits per byte on pretraining text (all tokens)       -- pretrain
  chat ppl / bpb   the same on the assistant tokens of held-out conversations                  -- SFT
  pref. acc        share of held-out DPO pairs with log p(chosen) > log p(rejected)
  DPO reward acc   share of held-out pairs with DPO's implicit reward margin > 0, i.e.
                   (log p - log p_ref)(chosen) > (log p - log p_ref)(rejected), p_ref being the
                   model the DPO stage started from (rlhf rows only)                           -- DPO
  well-formed      share of sampled replies to held-out prompts that are exactly one
                   <think>...</think> then one <answer>...</answer> (inference/reasoning.py)   -- reasoning
  identity         share of greedy answers to held-out "who are you" prompts that contain
                   --identity_name                                                            -- identity LoRA
  identity as      the same, counting only answers every word of which occurs in the stages'
  sentence         training data (--data_path/--mix_data of OUT_DIR/runs): no garbled words
  facts            share of held-out capital/colour questions answered (greedy) with exactly
                   the fact's answer sentence ({"kind": "fact", "prompt", "answer"} records)  -- SFT
  sums             the same for {"kind": "sum"} questions
  domain ppl       a domain adapter's perplexity on its held-out conversations (--adapter_data),
                   adapter on and off                                                         -- domain LoRA

Every adapter also gets a line in "Adapters": the base's chat ppl and facts with the adapter off and on
(what it costs) next to its own target (what it adds).

(bits per byte: total NLL / (ln 2 x UTF-8 bytes of the scored text); see scripts/eval_ppl.py --help.)
The held-out files are read from --heldout_dir (pretrain.jsonl, sft.jsonl, dpo.jsonl, prompts.jsonl) unless given
one by one; a measure without data is left out. Written to --report_dir: report.md (the tables), report.png (one
bar chart per measure) and report.json (every number, the sampled replies and the settings).
"""
import argparse
import sys
from pathlib import Path

from dataset import DataError, read_prompts
from dataset.prompts import read_questions
from dataset.demo import HELDOUT_FILES, IDENTITY_NAME, write_demo_heldout
from inference.checkpoints import ModelNotFound
from inference.cli import HelpFormatter
from inference.loading import quiet_libraries
from inference.report import evaluate_pipeline, write_report
from trainer.stages import STARTS_FROM


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("models")
    g.add_argument("--out_dir", default="out", help="where the training scripts (or scripts/demo_pipeline.py) wrote the models")
    g.add_argument("--dim", type=int, default=None, help="model width in the folder names (default: the only one in OUT_DIR)")
    g.add_argument("--use_moe", action="store_true", help="measure the mixture-of-experts folders (<stage>_<dim>_moe)")
    g.add_argument("--lora_base", default="full_sft", choices=sorted(STARTS_FROM.keys() - {"lora"}),
                   help="the stage whose model the adapters in OUT_DIR/lora/ are applied to")
    g = p.add_argument_group("held-out data")
    g.add_argument("--heldout_dir", default=None,
                   help="folder with pretrain.jsonl, sft.jsonl, dpo.jsonl and prompts.jsonl (default: OUT_DIR/heldout, "
                        "which scripts/demo_pipeline.py writes); the flags below override single files")
    g.add_argument("--text", default=None, help="pretraining-format jsonl for text ppl/bpb")
    g.add_argument("--chat", default=None, help="conversations jsonl for chat ppl/bpb (assistant tokens)")
    g.add_argument("--dpo", default=None, help="DPO pairs jsonl for pref. acc and DPO reward acc")
    g.add_argument("--reason_prompts", default=None,
                   help="jsonl of {\"prompt\"} records (kind \"reason\" when kinds are given) or conversations "
                        "(default: prompts.jsonl in --heldout_dir, else the demo's built-in sums)")
    g.add_argument("--identity_prompts", default=None,
                   help="jsonl of {\"prompt\"} records (kind \"identity\" when kinds are given) or conversations "
                        "(default: prompts.jsonl in --heldout_dir, else the demo's built-in ones)")
    g.add_argument("--identity_name", default=IDENTITY_NAME, help="text an identity answer must contain")
    g.add_argument("--questions", default=None,
                   help="jsonl of {\"kind\": \"fact\" or \"sum\", \"prompt\", \"answer\"} records for the facts and sums "
                        "measures (default: prompts.jsonl in --heldout_dir when it has such records)")
    g.add_argument("--adapter_data", action="append", default=[], metavar="NAME=FILE",
                   help="held-out conversations of adapter NAME's domain (e.g. lora_medical=heldout/medical.jsonl): "
                        "its domain ppl with the adapter on and off; repeat for several adapters")
    g.add_argument("--write_demo_heldout", default=None, metavar="DIR",
                   help="only write the demo world's held-out files (pretrain, sft, dpo, prompts) to DIR and exit")
    g = p.add_argument_group("measurement")
    g.add_argument("--max_seq_len", type=int, default=None,
                   help="tokens per scored window (default: the stages' training length from OUT_DIR/runs/*/args.json, else 512)")
    g.add_argument("--batch_size", type=int, default=16, help="rows per forward pass")
    g.add_argument("--samples", type=int, default=4, help="sampled replies per reasoning prompt")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the reasoning replies")
    g.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling threshold of the reasoning replies")
    g.add_argument("--max_new_tokens", type=int, default=60, help="tokens per reasoning reply at most")
    g.add_argument("--identity_tokens", type=int, default=40, help="tokens per (greedy) identity answer at most")
    g.add_argument("--seed", type=int, default=42, help="sampling seed")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps, or auto")
    g.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weight precision (float32: the same numbers on CPU and CUDA)")
    g.add_argument("--cache_dir", default=None, help="tokenization cache folder (default: the datasets library's)")
    g = p.add_argument_group("output")
    g.add_argument("--report_dir", default=None, help="where report.md/.png/.json go (default: OUT_DIR/eval)")
    g.add_argument("--json", action="store_true", help="print report.json's content instead of the markdown")
    g.add_argument("--no_progress", action="store_true", help="no progress bar (it goes to stderr)")
    return p


def heldout_files(args) -> dict:
    folder = Path(args.heldout_dir) if args.heldout_dir else Path(args.out_dir) / "heldout"
    if args.heldout_dir and not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found — write the demo world's held-out files with: "
                                f"python scripts/eval_report.py --write_demo_heldout {folder}")
    found = {name: folder / file for name, file in HELDOUT_FILES.items() if (folder / file).is_file()}
    chosen = {"text": args.text, "chat": args.chat, "dpo": args.dpo}
    files = {k: Path(v) if v else found.get(k) for k, v in chosen.items()}
    for key in ("reason", "identity"):
        given = getattr(args, f"{key}_prompts")
        files[f"{key}_prompts"] = Path(given) if given else found.get("prompts")
    files["questions"] = Path(args.questions) if args.questions else found.get("prompts")
    if not any(files[k] for k in ("text", "chat", "dpo")):
        raise FileNotFoundError(f"no held-out data: {folder} has none of {', '.join(HELDOUT_FILES.values())} and no "
                                f"--text/--chat/--dpo was given — write the demo world's with: "
                                f"python scripts/eval_report.py --write_demo_heldout {folder}")
    for path in files.values():
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{path} not found")
    return files


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.write_demo_heldout:
        for name, path in write_demo_heldout(args.write_demo_heldout).items():
            print(f"{name:<8} {path}")
        return 0
    quiet_libraries()
    try:
        files = heldout_files(args)
        prompts = {k: read_prompts(files[f"{k}_prompts"], k) if files[f"{k}_prompts"] else None
                   for k in ("reason", "identity")}
        questions = {k: read_questions(files["questions"], k) if files["questions"] else None for k in ("fact", "sum")}
        adapter_data = {}
        for spec in args.adapter_data:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--adapter_data {spec!r}: expected NAME=FILE, e.g. lora_medical=heldout/medical.jsonl")
            adapter_data[name] = path
        report = evaluate_pipeline(
            args.out_dir, args.dim, args.use_moe, text=files["text"], chat=files["chat"], dpo=files["dpo"],
            reason_prompts=prompts["reason"], identity_prompts=prompts["identity"], identity_name=args.identity_name,
            lora_base=args.lora_base, max_seq_len=args.max_seq_len, batch_size=args.batch_size, device=args.device,
            dtype=args.dtype, samples=args.samples, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens, identity_tokens=args.identity_tokens, seed=args.seed,
            progress=not args.no_progress, cache_dir=args.cache_dir, fact_questions=questions["fact"] or None,
            sum_questions=questions["sum"] or None, adapter_data=adapter_data)
    except (ModelNotFound, FileNotFoundError, ValueError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_report(report, args.report_dir or Path(args.out_dir) / "eval")
    if args.json:
        print(paths["json"].read_text(encoding="utf-8"))
    else:
        print(paths["markdown"].read_text(encoding="utf-8"))
        print(f"written: {paths['markdown']}, {paths['chart']}, {paths['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
