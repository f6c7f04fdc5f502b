"""Measure how often a model's sampled replies are well-formed reasoning replies.

A reply is well formed when, after stripping surrounding whitespace, it is one `<think>…</think>` block followed
by one `<answer>…</answer>` block: both present, in that order, each closed, each with non-blank content, and
nothing before, between (other than whitespace) or after them.

  python scripts/reason_format.py --model_path out/reason_512 --prompts data/demo/heldout_prompts.jsonl \\
      --samples 8 --temperature 0.7

--prompts takes a jsonl file of {"prompt": ...} records (records with a "kind" field are filtered to
kind == "reason" when any have it, as in make_demo_data's heldout_prompts.jsonl) or of SFT conversations
({"conversations": [...]}, the first user turn is the prompt). Without --prompts, built-in held-out sums are used.
"""
import argparse
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.chat_common import ModelNotFound, load_model, sampling_kwargs  # noqa: E402
from scripts.make_demo_data import REASON_HELD_OUT  # noqa: E402

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
_SHAPE = re.compile(r"<think>(.*)</think>\s*<answer>(.*)</answer>", re.DOTALL)
BUILTIN_PROMPTS = list(REASON_HELD_OUT)


def diagnose(text: str) -> str:
    """'ok' for a well-formed reply, else the first problem found (e.g. 'no </answer>', 'empty <answer>')."""
    if not isinstance(text, str):
        return "not text"
    text = text.strip()
    for tag in TAGS:
        n = text.count(tag)
        if n != 1:
            return f"no {tag}" if n == 0 else f"{n} x {tag}"
    match = _SHAPE.fullmatch(text)
    if not match:
        return "tags out of order or text outside the blocks"
    for name, group in zip(("<think>", "<answer>"), match.groups()):
        if not group.strip():
            return f"empty {name}"
    return "ok"


def is_well_formed(text: str) -> bool:
    """True for exactly `<think>X</think> <answer>Y</answer>` (whitespace around and between allowed) with X
    and Y not blank and no other tag anywhere."""
    return diagnose(text) == "ok"


def read_prompts(path, kind: str = "reason") -> list[str]:
    """Prompts from jsonl: {"prompt": ...} records (only those of `kind` when records carry a "kind") or
    conversations (their first user turn). Raises ValueError naming file:line on a record it cannot use."""
    path = Path(path)
    prompts = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{line_no}: invalid JSON: {e.msg}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{line_no}: expected a JSON object")
        if "kind" in record and record["kind"] != kind:
            continue
        prompt = record.get("prompt")
        if prompt is None and isinstance(record.get("conversations"), list):
            prompt = next((t.get("content") for t in record["conversations"]
                           if isinstance(t, dict) and t.get("role") == "user"), None)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{path}:{line_no}: expected {{\"prompt\": str}} or {{\"conversations\": [...]}} with a user turn")
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path}: no {kind} prompts")
    return prompts


@torch.inference_mode()
def sample_replies(model, tokenizer, prompts, samples: int = 1, temperature: float = 0.7, top_p: float = 0.9,
                   max_new_tokens: int = 128, seed: int = 0, batch_size: int = 64) -> list[str]:
    """`samples` replies per prompt (prompt-major order), generated in left-padded batches with the chat template."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts for _ in range(samples)]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    replies = []
    torch.manual_seed(seed)
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            out = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                                 **sampling_kwargs(temperature, top_p))
            new = out[:, enc["input_ids"].shape[1]:]
            replies += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = old_side
    return replies


def format_share(model, tokenizer, prompts, samples: int = 1, temperature: float = 0.7, top_p: float = 0.9,
                 max_new_tokens: int = 128, seed: int = 0, batch_size: int = 64) -> tuple[float, list[str]]:
    """(share of well-formed replies, the replies) over `samples` sampled replies to each prompt."""
    was_training = model.training
    model.eval()
    try:
        replies = sample_replies(model, tokenizer, prompts, samples, temperature, top_p, max_new_tokens, seed, batch_size)
    finally:
        model.train(was_training)
    share = sum(map(is_well_formed, replies)) / len(replies) if replies else 0.0
    return share, replies


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
