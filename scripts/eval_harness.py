"""Benchmark a trained model with lm-evaluation-harness (`pip install -r requirements-eval.txt`).

  python scripts/eval_harness.py --model_path out/full_sft_512                         # the project's local task
  python scripts/eval_harness.py --model_mode 1 --lora_name lora_identity --tasks minimind_world
  python scripts/eval_harness.py --model_path out/full_sft_512 --tasks ceval-valid,cmmlu --num_fewshot 5 --online

The model is loaded through lm-eval's own `hf` model type (AutoModelForCausalLM); this wrapper imports the
project's `model` package first, which registers MiniMind with the Auto classes, resolves --model_mode /
--lora_name like eval_model.py, and hands a LoRA adapter to lm-eval as `peft=`. A model exported with
`scripts/convert_model.py export-llama` is a plain Llama folder that lm-eval's own command line loads directly.

Local tasks: benchmark data normally comes from the Hugging Face hub. This wrapper runs offline unless --online
(HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1): tasks then read local files or the datasets cache. The project ships
one local task, `minimind_world`: multiple-choice sentence completions about the demo world (capitals, colours,
small sums; English and Chinese), written by this script to --task_dir as a jsonl of items plus the YAML task
that points at it (dataset_path json). --include_path adds folders of your own task YAML files (e.g. a C-Eval or
CMMLU copy whose dataset_path points at a local folder).
"""
import json
import os
import sys
from pathlib import Path

if __name__ == "__main__" and "--online" not in sys.argv[1:]:
    # before any Hugging Face library is imported: they read these once
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import argparse  # noqa: E402

from inference.checkpoints import ModelNotFound, modes_table, resolve_lora_path, resolve_model_path  # noqa: E402
from inference.cli import HelpFormatter, add_model_arguments  # noqa: E402
from inference.harness import TASK_NAME, run_harness, write_task  # noqa: E402
from inference.loading import pick_device, pick_dtype, quiet_libraries  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, epilog=modes_table(), formatter_class=HelpFormatter)
    add_model_arguments(p)
    g = p.add_argument_group("tasks")
    g.add_argument("--tasks", default=TASK_NAME,
                   help="comma-separated lm-eval task or group names (e.g. minimind_world, ceval-valid, cmmlu)")
    g.add_argument("--task_dir", default="out/eval_tasks", help=f"where the local task {TASK_NAME} (yaml + jsonl) is written")
    g.add_argument("--include_path", action="append", default=[], metavar="DIR",
                   help="a folder of extra task YAML files (repeatable)")
    g.add_argument("--write_task", action="store_true", help=f"only write the local task {TASK_NAME} to --task_dir and exit")
    g.add_argument("--online", action="store_true",
                   help="allow downloads from the Hugging Face hub (default: offline, local files and cache only)")
    g = p.add_argument_group("evaluation")
    g.add_argument("--num_fewshot", type=int, default=None, help="few-shot examples per question (default: the task's)")
    g.add_argument("--batch_size", default="8", help="batch size, or 'auto'")
    g.add_argument("--limit", type=float, default=None, help="only the first N items per task (a fraction if < 1); for quick checks")
    g.add_argument("--apply_chat_template", action="store_true", help="wrap each prompt in the model's chat template")
    g.add_argument("--seed", type=int, default=0, help="seed for lm-eval's sampling of few-shot examples")
    g.add_argument("--output", default=None, metavar="FILE", help="also write the results (metrics and task configs) as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not args.online:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    task_yaml = write_task(args.task_dir)
    if args.write_task:
        print(f"wrote {task_yaml} and {task_yaml.with_suffix('.jsonl')}")
        return 0
    try:
        model_path = resolve_model_path(args.model_path, args.model_mode, args.out_dir, args.dim, args.use_moe)
        lora_path = resolve_lora_path(args.lora_name, args.out_dir, args.dim, args.use_moe)
        for folder in args.include_path:
            if not Path(folder).is_dir():
                raise ModelNotFound(f"{folder} not found (--include_path takes a folder of lm-eval task YAML files)")
        try:
            import lm_eval  # noqa: F401
        except ImportError:
            raise ModelNotFound("lm-eval is not installed — install it with: pip install -r requirements-eval.txt") from None
        device = pick_device(args.device)
        dtype = str(pick_dtype(args.dtype, device)).removeprefix("torch.")
        quiet_libraries()
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
        batch_size = args.batch_size if args.batch_size == "auto" else int(args.batch_size)
        results = run_harness(model_path, lora_path, tasks, [task_yaml.parent, *args.include_path], str(device),
                              dtype, batch_size, args.num_fewshot, limit, args.apply_chat_template, args.seed)
    except ModelNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from lm_eval.utils import make_table

    print(f"model: {model_path}" + (f" + LoRA {lora_path}" if lora_path else ""))
    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        keep = {k: results[k] for k in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot",
                                        "higher_is_better", "n-samples") if k in results}
        keep["model"] = {"path": str(model_path), "lora": str(lora_path) if lora_path else None, "device": str(device),
                         "dtype": dtype}
        out.write_text(json.dumps(keep, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
        print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
