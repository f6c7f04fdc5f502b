"""Run logging: a tqdm bar, a metrics.jsonl file for plotting, optional wandb, and a loss-curve PNG."""
import json
import os
import time
import warnings
from pathlib import Path

from tqdm import tqdm


class RunLogger:
    """Rank 0 logs; other ranks get a logger whose methods do nothing."""

    def __init__(self, run_dir: Path, args, total_steps: int, first_step: int, enabled: bool):
        self.enabled = enabled
        self.run_dir = run_dir
        self.wandb = None
        self.bar = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "args.json").write_text(json.dumps(vars(args), indent=1, default=str), encoding="utf-8")
        path = run_dir / "metrics.jsonl"
        if args.resume:  # rows logged after the checkpoint will be logged again by this run: drop them
            kept = "".join(json.dumps(r) + "\n" for r in read_metrics(path) if r.get("step", 0) <= first_step)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(kept, encoding="utf-8")
            os.replace(tmp, path)
        self.file = open(path, "a" if args.resume else "w", encoding="utf-8")
        self.bar = tqdm(total=total_steps, initial=first_step, desc=run_dir.name, disable=args.quiet,
                        dynamic_ncols=True, unit="step")
        if args.use_wandb:
            import wandb

            self.wandb = wandb.init(project=args.wandb_project, name=run_dir.name, config=vars(args),
                                    dir=str(run_dir), resume="allow")
        self.start = time.time()

    def step(self, n: int = 1):
        if self.bar is not None:
            self.bar.update(n)

    def log(self, step: int, values: dict):
        if not self.enabled:
            return
        values = {"step": step, **{k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}}
        values["elapsed_s"] = round(time.time() - self.start, 2)
        self.file.write(json.dumps(values) + "\n")
        self.file.flush()
        if self.bar is not None:
            shown = {k: values[k] for k in ("loss", "lr", "tok/s") if k in values}
            self.bar.set_postfix({k: f"{v:.3g}" if isinstance(v, float) else v for k, v in shown.items()})
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def message(self, text: str):
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(text)

    def close(self):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
        plot_loss_curve(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")


def read_metrics(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl. A last line cut short (the run was killed mid-write) is left out; any other
    line that is not JSON is left out with a warning naming it."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                warnings.warn(f"{path}:{number}: not a JSON line, skipped", stacklevel=2)
    return rows


def plot_loss_curve(metrics_path: Path, png_path: Path, title: str | None = None):
    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker="." if len(rows) < 50 else None, label="training")
    val = [r for r in read_metrics(metrics_path) if "val_loss" in r]
    if val:
        ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], marker="o", label="validation")
        ax.legend()
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title or metrics_path.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


# ---------------------------------------------------------------- reading curves (time to quality)

def step_seconds(rows: list[dict], skip: int = 3) -> float:
    """Median seconds per step of a probe run, leaving out the first `skip` steps (warm-up)."""
    clock = [r["train_s"] for r in rows if "loss" in r]
    gaps = sorted(b - a for a, b in zip(clock[skip:], clock[skip + 1:]))
    if not gaps:
        raise ValueError(f"the probe run logged {len(clock)} steps; raise --probe_steps")
    return gaps[len(gaps) // 2]


def time_to_reach(curve: list[dict], target: float) -> float | None:
    """Training seconds at which the validation bpb first reaches `target` (linear between evaluations)."""
    prev = None
    for point in curve:
        if point["val_bpb"] <= target:
            if prev is None:
                return point["train_s"]
            frac = (prev["val_bpb"] - target) / (prev["val_bpb"] - point["val_bpb"])
            return prev["train_s"] + frac * (point["train_s"] - prev["train_s"])
        prev = point
    return None


def bpb_at(curve: list[dict], x: float, key: str = "train_s") -> float | None:
    """Validation bpb at `x` seconds of training (or optimizer steps, key="step"): linear between evaluations, None
    outside the curve."""
    if curve and curve[-1][key] == x:
        return curve[-1]["val_bpb"]
    for a, b in zip(curve, curve[1:]):
        if a[key] <= x <= b[key]:
            frac = (x - a[key]) / max(1e-9, b[key] - a[key])
            return a["val_bpb"] + frac * (b["val_bpb"] - a["val_bpb"])
    return None
