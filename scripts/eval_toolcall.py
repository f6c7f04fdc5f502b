"""Tool calling and the thinking switch, measured on a held-out file: every model on every task, side by side.

  python scripts/eval_toolcall.py out/demo/rlhf_128 out/demo/reason_128 --data out/demo/heldout/tools.jsonl
  python scripts/eval_toolcall.py out/demo/reason_128 --data out/demo/heldout/tools.jsonl \\
      --chat out/demo/heldout/sft.jsonl --baseline out/demo/full_sft_128          # plus: no forgetting?

The file (jsonl, one task per line; `python scripts/eval_report.py --write_demo_heldout DIR` writes the demo
world's as DIR/tools.jsonl):
  {"kind": "calculate", "tools": [OpenAI function schemas], "messages": [{"role": "user", "content": "..."}],
   "expected_calls": [{"name": "calculate", "arguments": {"expression": "37 * 12"}}], "answer": ["444"]}
A task without tools and expected_calls is a thinking prompt ({"messages": [...], "answer": [...]}). Tools may
also sit on a system turn, as in MiniMind-3's training files. Calls to built-in tools (inference/tools.py) run;
other functions answer "no implementation" (their calls are still scored).

Measures (greedy decoding):
  valid calls              first reply: calls present, every <tool_call> parseable JSON, known function, required arguments
  right function           the first call names the expected function
  right arguments          ... with the expected arguments (numbers by value, strings ignoring case)
  right calls (all steps)  the tool loop made exactly the expected calls in order
  answer, with tools       the final answer after the loop contains every expected string
  answer, without tools    the same question with no tools offered
  thinking on: reasons     thinking prompts with the switch on: a closed <think> block with reasoning
  thinking off: direct     thinking prompts with the switch off: no reasoning
  chat ppl (--chat)        perplexity of the assistant tokens of a plain-chat file, and its ratio to --baseline's
                           (the issue's bar for "no forgetting": within 10%)

A MODEL is a model folder or a LoRA adapter folder (merged into --base or the base its config names).
"""
import argparse
import json
import sys

from dataset import DataError
from inference.checkpoints import ModelNotFound, resolve_model_arg
from inference.cli import HelpFormatter
from inference.loading import load_model, pick_device, pick_dtype, quiet_libraries
from inference.perplexity import evaluate, model_label
from inference.toolcall_eval import ToolFileError, format_measures, measure_tool_use, read_tool_file


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL", help="model folders (e.g. out/demo/reason_128) or LoRA adapter folders")
    p.add_argument("--data", required=True, metavar="FILE", help="held-out tool tasks (jsonl, the format above)")
    p.add_argument("--max_tool_calls", type=int, default=4, help="calls the tool loop runs per task before it stops")
    p.add_argument("--max_new_tokens", type=int, default=80, help="tokens per generated reply")
    p.add_argument("--chat", default=None, metavar="FILE", help="plain-chat jsonl (conversations) for the perplexity check")
    p.add_argument("--baseline", default=None, metavar="DIR", help="the model whose chat perplexity the others are compared with (e.g. the SFT model)")
    p.add_argument("--max_seq_len", type=int, default=512, help="tokens per scored window for --chat")
    p.add_argument("--base", default=None, metavar="DIR", help="base model for adapter MODELs (default: the one in adapter_config.json)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps, or auto")
    p.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16", "float16"], help="weight precision")
    p.add_argument("--show", type=int, default=2, help="print this many transcripts per model (0: none)")
    p.add_argument("--json", action="store_true", help="print the full results (every task's replies) as JSON")
    p.add_argument("--no_progress", action="store_true", help="no progress bar (it goes to stderr)")
    return p


def chat_perplexity(models, baseline, chat, args) -> dict:
    """[{"ppl", "baseline_ppl", "ratio"}] per model, on the assistant tokens of `chat`."""
    paths = [*models, *([baseline] if baseline else [])]
    scores = evaluate(paths, chat, "sft", args.max_seq_len, 16, args.device, args.dtype, args.base,
                      progress=not args.no_progress)
    base_ppl = scores[-1]["perplexity"] if baseline else None
    return [{"ppl": s["perplexity"], "baseline_ppl": base_ppl, "ratio": s["perplexity"] / base_ppl if base_ppl else None}
            for s in scores[:len(models)]]  # in the order of `models`


def transcript_lines(task) -> list[str]:
    lines = [f"  [{task['kind']}] {task['question']}"]
    for message in task.get("transcript", []):
        if message["role"] == "tool":
            lines.append(f"    tool → {message['content']}")
        elif message.get("tool_calls"):
            lines += [f"    call {c['name']}({json.dumps(c['arguments'], ensure_ascii=False)})" for c in message["tool_calls"]]
        else:
            lines.append(f"    answer: {message['content']!r}")
    if "thinking_on_reply" in task:
        lines += [f"    thinking on:  {task['thinking_on_reply']!r}", f"    thinking off: {task['thinking_off_reply']!r}"]
    return lines


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_tool_calls < 0 or args.max_new_tokens < 1:
        print("error: --max_tool_calls must be >= 0 and --max_new_tokens >= 1", file=sys.stderr)
        return 2
    quiet_libraries()
    try:
        records = read_tool_file(args.data)
        resolved = [resolve_model_arg(m, args.base) for m in args.models]
        device = pick_device(args.device)
        results = {}
        for path, adapter in resolved:
            model, tokenizer = load_model(path, adapter, device=device, dtype=pick_dtype(args.dtype, device))
            label = model_label(path, adapter)
            label = label if label not in results else f"{path.parent.name}/{label}"  # two folders of one name
            results[label] = measure_tool_use(
                model, tokenizer, records, max_tool_calls=args.max_tool_calls, max_new_tokens=args.max_new_tokens,
                progress=not args.no_progress)
            del model
        ppl = dict(zip(results, chat_perplexity(args.models, args.baseline, args.chat, args))) if args.chat else {}
    except (ModelNotFound, FileNotFoundError, ToolFileError, ValueError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for label, p in ppl.items():
        results[label]["chat_ppl"] = p
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=1))
        return 0
    counts = next(iter(results.values()))["counts"]
    print(f"{args.data}: {counts['tool_tasks']} tool tasks, {counts['thinking_prompts']} thinking prompts; greedy\n")
    print(format_measures(results))
    for label, p in ppl.items():
        versus = f" = {p['ratio']:.3f} × baseline {p['baseline_ppl']:.3f}" if p["ratio"] is not None else ""
        print(f"chat ppl {label}: {p['ppl']:.3f}{versus}")
    for label, result in results.items():
        if args.show:
            print(f"\n{label}:")
            shown = [t for t in result["tasks"] if "transcript" in t][:args.show] + \
                    [t for t in result["tasks"] if "thinking_on_reply" in t][:1]
            for task in shown:
                print("\n".join(transcript_lines(task)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
