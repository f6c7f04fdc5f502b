"""Time to quality: validation bits per byte against optimizer steps and training wall-clock, for MiniMind's way of
pretraining (one padded document per row, AdamW, fp32 on a CPU and bf16 autocast on CUDA as its scripts do), ours
(packing, bf16 autocast where the hardware has it, AdamW or Muon) and the `--recipe fast` flags, each for the same wall-clock budget or the same number of steps.

    python scripts/time_to_loss.py                                   # small preset on ../shared/data/pretrain.jsonl
    python scripts/time_to_loss.py --steps 150                       # every recipe the same 150 optimizer steps
    python scripts/time_to_loss.py --steps 150 --recipes minimind,fast --ablations   # and fast without each lever
    python scripts/time_to_loss.py --minutes 20 --device cuda        # a longer budget on a GPU

Every run is a real `train_pretrain.py` process. With --minutes, a short probe run measures each recipe's step time
first, so each run's step budget (and so its whole learning-rate schedule) fits the wall-clock budget. Validation is a
held-out split of the data file (every --val_every-th document) scored with `--eval_data`; its time is not counted as
training time. An ablation row `fast-no_<lever>` runs the fast recipe without one of its levers (the lever's flags go
back to their defaults; levers are the top-level keys of configs/recipes/fast.yaml). The columns that compare with
MiniMind need the `minimind` row in the same run.
Writes OUT_DIR/time_to_loss.md (table), time_to_loss.png (curves) and time_to_loss.json.
"""
import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml

from configs import load_recipe
from trainer.metrics import bpb_at, read_metrics, step_seconds, time_to_reach

ROOT = Path(__file__).resolve().parents[1]

RECIPES = {  # name -> (description, extra train_pretrain.py flags)
    # MiniMind's scripts autocast to bf16 on CUDA and run plain fp32 on a CPU; the minimind row does the same
    "minimind": ("MiniMind's way: padded rows, AdamW, fp32 (bf16 autocast on CUDA)", ["--no_packing", "--optimizer", "adamw"]),
    "packed_adamw": ("packing, auto precision, AdamW", ["--dtype", "auto", "--optimizer", "adamw"]),
    "packed_muon": ("packing, auto precision, Muon + AdamW", ["--dtype", "auto", "--optimizer", "muon"]),
    "fast": ("--recipe fast (packing, auto precision, configs/recipes/fast.yaml)", ["--recipe", "fast"]),
}


def ablations(out_dir: Path) -> dict:
    """fast-no_<lever> rows: the fast recipe written out without one lever, as a recipe file of its own."""
    levers = load_recipe("fast")
    rows = {}
    for lever in levers:
        path = out_dir / "recipes" / f"fast-no_{lever}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({k: v for k, v in levers.items() if k != lever}), encoding="utf-8")
        rows[f"fast-no_{lever}"] = (f"fast without {lever} ({', '.join(f'--{f}' for f in levers[lever])} at defaults)",
                                    ["--recipe", str(path)])
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "pretrain.jsonl",
                   help="pretraining jsonl ({\"text\": ...}); a validation split is taken from it (default: the data kit's)")
    p.add_argument("--config", default="small", help="model preset (configs/NAME.yaml)")
    p.add_argument("--minutes", type=float, default=6.0, help="training wall-clock budget per recipe")
    p.add_argument("--steps", type=int, default=0,
                   help="run every recipe this many optimizer steps (equal steps; no probe) instead of --minutes each")
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated subset of {', '.join(RECIPES)}")
    p.add_argument("--ablations", action="store_true",
                   help="also run the fast recipe with each of its levers removed, one at a time (fast-no_<lever> rows)")
    p.add_argument("--max_seq_len", type=int, default=512, help="positions per row")
    p.add_argument("--batch_size", type=int, default=8, help="rows per optimizer step (the same for every recipe)")
    p.add_argument("--learning_rate", type=float, default=5e-4, help="AdamW peak learning rate (MiniMind's pretrain default) of the rows without a recipe")
    p.add_argument("--muon_lr", type=float, default=0.02, help="Muon peak learning rate for the packed_muon row")
    p.add_argument("--val_every", type=int, default=50, help="every N-th document goes to the validation split")
    p.add_argument("--eval_rows", type=int, default=32, help="validation rows (packed, max_seq_len each) per evaluation")
    p.add_argument("--evals", type=int, default=8, help="validations per run, evenly spaced in steps")
    p.add_argument("--probe_steps", type=int, default=12, help="steps of the probe run that measures step time")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs (default: torch's choice)")
    p.add_argument("--out_dir", type=Path, default=ROOT / "out" / "time_to_loss", help="runs, table and plot go here")
    args = p.parse_args(argv)
    args.recipes = [r for r in args.recipes.split(",") if r]
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.steps != 0 and args.steps < 5:
        p.error(f"--steps must be 0 (use --minutes) or at least 5, got {args.steps}")
    args.runs = dict(RECIPES)
    if args.ablations or any(r.startswith("fast-no_") for r in args.recipes):
        try:
            args.runs.update(ablations(args.out_dir))
        except ValueError as e:
            p.error(str(e))
    if args.ablations:
        args.recipes += [r for r in args.runs if r.startswith("fast-no_") and r not in args.recipes]
    unknown = sorted(set(args.recipes) - set(args.runs))
    if unknown:
        p.error(f"--recipes: unknown {unknown}; choose from {', '.join(args.runs)}")
    if not args.data.exists():
        p.error(f"--data {args.data} not found (the data kit lives in ../shared/data; any pretrain jsonl works)")
    return args


def split(data: Path, out: Path, every: int) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    train, val = out / "train.jsonl", out / "val.jsonl"
    lines = [l for l in data.read_text(encoding="utf-8").splitlines() if l.strip()]
    val.write_text("\n".join(lines[::every]) + "\n", encoding="utf-8")
    train.write_text("\n".join(l for i, l in enumerate(lines) if i % every) + "\n", encoding="utf-8")
    return train, val


def train(args, recipe, train_path, val_path, out, max_steps, eval_interval) -> list[dict]:
    flags = args.runs[recipe][1]
    # a recipe file brings its own learning rates; the other rows share these
    rates = [] if "--recipe" in flags else ["--learning_rate", str(args.learning_rate), "--muon_lr", str(args.muon_lr)]
    cmd = [sys.executable, str(ROOT / "train_pretrain.py"), "--config", args.config, "--data_path", str(train_path),
           "--max_seq_len", str(args.max_seq_len), "--batch_size", str(args.batch_size), "--accumulation_steps", "1",
           *rates, "--max_steps", str(max_steps),
           "--epochs", "100", "--device", args.device, "--out_dir", str(out), "--save_name", recipe,
           "--save_interval", "0", "--log_interval", "1", "--quiet", "--cache_dir", str(args.out_dir / "cache"),
           *flags]
    if recipe == "minimind":
        cmd += ["--dtype", "bfloat16" if args.device.startswith("cuda") else "float32"]
    if eval_interval:
        cmd += ["--eval_data", str(val_path), "--eval_interval", str(eval_interval), "--eval_rows", str(args.eval_rows)]
    env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"time_to_loss: {recipe} failed:\n{res.stderr[-3000:]}")
    return read_metrics(out / "runs" / recipe / "metrics.jsonl")


def plot(results: dict, png: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        curve = r["curve"]
        by_step.plot([p["step"] for p in curve], [p["val_bpb"] for p in curve], marker="o", label=name)
        by_time.plot([p["train_s"] / 60 for p in curve], [p["val_bpb"] for p in curve], marker="o", label=name)
    by_step.set_xlabel("optimizer step")
    by_time.set_xlabel("training wall-clock (min)")
    for ax in (by_step, by_time):
        ax.set_ylabel("validation bits per byte")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    train_path, val_path = split(args.data, args.out_dir / "data", args.val_every)
    budget = args.minutes * 60
    results = {}
    for recipe in args.recipes:
        if args.steps:
            max_steps = args.steps
        else:
            probe = train(args, recipe, train_path, val_path, args.out_dir / "probe", args.probe_steps, 0)
            try:
                per_step = step_seconds(probe)
            except ValueError as e:
                sys.exit(f"time_to_loss: {e}")
            max_steps = max(2, int(budget / per_step))
            print(f"{recipe}: probe {per_step:.2f} s/step -> {max_steps} steps in {args.minutes:g} min", file=sys.stderr)
        interval = max(1, math.ceil(max_steps / args.evals))
        print(f"{recipe}: {max_steps} steps, validating every {interval}", file=sys.stderr, flush=True)
        rows = train(args, recipe, train_path, val_path, args.out_dir / "runs", max_steps, interval)
        curve = [{"step": r["step"], "train_s": r["train_s"], "val_bpb": r["val_bpb"]} for r in rows if "val_bpb" in r]
        tok_s = [r["tok/s"] for r in rows if "tok/s" in r]
        results[recipe] = {"description": args.runs[recipe][0], "steps": max_steps, "s_per_step": step_seconds(rows),
                           "tokens_per_s": sorted(tok_s)[len(tok_s) // 2] if tok_s else None, "curve": curve}

    baseline = results.get("minimind")
    target = baseline["curve"][-1]["val_bpb"] if baseline else None
    base_time = baseline["curve"][-1]["train_s"] if baseline else None
    base_steps = baseline["steps"] if baseline else None
    budget_txt = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    lines = [f"# Time to quality: {args.config} preset, {args.data.name}, {budget_txt} per recipe, "
             f"seq {args.max_seq_len} x batch {args.batch_size}", "",
             "| recipe | steps | s/step | real tokens/s | final val bpb | time to MiniMind's final bpb "
             "| bpb at MiniMind's wall-clock | bpb at MiniMind's steps (ratio) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        final = r["curve"][-1]["val_bpb"]
        reach = time_to_reach(r["curve"], target) if target else None
        reach_txt = "-" if target is None else "not reached" if reach is None else f"{reach / 60:.2f} min ({reach / base_time:.1%})"
        same = bpb_at(r["curve"], base_time) if base_time else None
        at_steps = bpb_at(r["curve"], base_steps, key="step") if base_steps else None
        r.update(final_bpb=final, time_to_target_s=reach, bpb_at_baseline_time=same, bpb_at_baseline_steps=at_steps)
        steps_txt = "-" if at_steps is None else f"{at_steps:.4f} ({at_steps / target:.2f}×)"
        lines.append(f"| {name}: {r['description']} | {r['steps']} | {r['s_per_step']:.2f} | {r['tokens_per_s'] or 0:,.0f} "
                     f"| {final:.4f} | {reach_txt} | {'-' if same is None else f'{same:.4f}'} | {steps_txt} |")
    table = "\n".join(lines) + "\n"
    (args.out_dir / "time_to_loss.md").write_text(table, encoding="utf-8")
    (args.out_dir / "time_to_loss.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                                 "target_bpb": target, "results": results}, indent=1))
    plot(results, args.out_dir / "time_to_loss.png")
    print(table)
    print(f"wrote {args.out_dir / 'time_to_loss.md'}, time_to_loss.png, time_to_loss.json")


if __name__ == "__main__":
    main()
