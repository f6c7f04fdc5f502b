"""Measure how often a model's sampled replies are well-formed reasoning replies.

A reply is well formed when, after stripping surrounding whitespace, it is one `<think>…</think>` block followed
by one `<answer>…</answer>` block: both present, in that order, each closed, each with non-blank content, and
nothing before, between (other than whitespace) or after them. The definition is inference/reasoning.py's, the
same one the GRPO `format` reward gives full credit for.

  python scripts/reason_format.py --model_path out/reason_512 --prompts data/demo/heldout_prompts.jsonl \\
      --samples 8 --temperature 0.7

--prompts takes a jsonl file of {"prompt": ...} records (records with a "kind" field are filtered to
kind == "reason" when any have it, as in make_demo_data's heldout_prompts.jsonl) or of SFT conversations
({"conversations": [...]}, the first user turn is the prompt). Without --prompts, built-in held-out sums are used.
"""
import argparse
import json
import sys

from dataset import read_prompts
from dataset.demo import REASON_HELD_OUT
from inference.checkpoints import ModelNotFound
from inference.loading import load_model
from inference.reasoning import diagnose, format_share, is_well_formed

BUILTIN_PROMPTS = list(REASON_HELD_OUT)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="Hugging Face model folder (MiniMind)")
    p.add_argument("--prompts", default=None, help="jsonl of {'prompt': ...} or conversations (default: built-in held-out sums)")
    p.add_argument("--samples", type=int, default=4, help="sampled replies per prompt")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (0: greedy)")
    p.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling threshold")
    p.add_argument("--max_new_tokens", type=int, default=128, help="tokens generated per reply at most")
    p.add_argument("--batch_size", type=int, default=64, help="replies generated together")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ...")
    p.add_argument("--examples", type=int, default=3, help="example replies to print")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = p.parse_args(argv)
    if args.samples <= 0 or args.max_new_tokens <= 0:
        p.error("--samples and --max_new_tokens must be positive")
    try:
        prompts = read_prompts(args.prompts) if args.prompts else BUILTIN_PROMPTS
        model, tokenizer = load_model(args.model_path, device=args.device)
    except (ValueError, OSError, ModelNotFound) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    share, replies = format_share(model, tokenizer, prompts, args.samples, args.temperature, args.top_p,
                                  args.max_new_tokens, args.seed, args.batch_size)
    n_good = sum(map(is_well_formed, replies))
    problems = {}
    for reply in replies:
        problem = diagnose(reply)
        if problem != "ok":
            problems[problem] = problems.get(problem, 0) + 1
    problems = dict(sorted(problems.items(), key=lambda kv: -kv[1]))
    if args.json:
        print(json.dumps({"model_path": str(args.model_path), "share": share, "well_formed": n_good,
                          "total": len(replies), "problems": problems, "prompts": prompts, "samples": args.samples,
                          "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
                          "replies": replies}, ensure_ascii=False))
    else:
        print(f"well-formed replies: {n_good}/{len(replies)} = {share:.1%} "
              f"({len(prompts)} prompts x {args.samples} samples, temperature {args.temperature}, top_p {args.top_p})")
        if problems:
            print("not well formed: " + ", ".join(f"{k} ({v})" for k, v in problems.items()))
        for i in range(min(args.examples, len(prompts))):  # the first reply to each of the first prompts
            reply = replies[i * args.samples]
            mark = "ok " if is_well_formed(reply) else "bad"
            print(f"[{mark}] {prompts[i]!r} -> {reply!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
