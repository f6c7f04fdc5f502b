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
                   <think>...</think> then one <answer>...</answer> (scripts/reason_format.py)  -- reasoning
  identity         share of greedy answers to held-out "who are you" prompts that contain
                   --identity_name                                                            -- identity LoRA

(bits per byte: total NLL / (ln 2 x UTF-8 bytes of the scored text); see scripts/eval_ppl.py --help.)
The held-out files are read from --heldout_dir (pretrain.jsonl, sft.jsonl, dpo.jsonl, prompts.jsonl) unless given
one by one; a measure without data is left out. Written to --report_dir: report.md (the tables), report.png (one
bar chart per measure) and report.json (every number, the sampled replies and the settings).
"""
import argparse
import json
import math
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset import DataError  # noqa: E402
from scripts.chat_common import (MODEL_MODES, HelpFormatter, ModelNotFound, folder_name, load_model,  # noqa: E402
                                 pick_device, pick_dtype, quiet_libraries)
from scripts.make_demo_data import (IDENTITY_HELD_OUT, IDENTITY_NAME, REASON_HELD_OUT, dpo_lines,  # noqa: E402
                                    pretrain_lines, sft_lines, write_jsonl)
from scripts.reason_format import read_prompts  # noqa: E402
from trainer.stages import ALL_STAGES  # noqa: E402

# stage -> the stage its training starts from (the training scripts' defaults)
STARTS_FROM = {stage.name: stage.default_from for stage in ALL_STAGES}
# stage -> (what it is for, the measures that show it)
PURPOSE = {
    "pretrain": ("predict text", ["text_ppl", "text_bpb"]),
    "full_sft": ("answer in chats", ["chat_ppl"]),
    "lora": ("the adapter's data (identity)", ["identity"]),
    "rlhf": ("prefer chosen replies", ["dpo_reward_acc", "pref_acc"]),
    "reason": ("<think>/<answer> replies", ["well_formed"]),
    "grpo": ("reasoning (RL reward)", ["well_formed"]),
    "distill": ("match the teacher", ["chat_ppl"]),
}
# measure -> (column label, is a share, higher is better)
MEASURES = {
    "text_ppl": ("text ppl", False, False),
    "text_bpb": ("text bpb", False, False),
    "chat_ppl": ("chat ppl", False, False),
    "chat_bpb": ("chat bpb", False, False),
    "pref_acc": ("pref. acc", True, True),
    "dpo_reward_acc": ("DPO reward acc", True, True),
    "well_formed": ("well-formed", True, True),
    "identity": ("identity", True, True),
}
HELDOUT_FILES = {"text": "pretrain.jsonl", "chat": "sft.jsonl", "dpo": "dpo.jsonl", "prompts": "prompts.jsonl"}
DEMO_HELDOUT_SEED = 12345


# ---------------------------------------------------------------- held-out data

def write_demo_heldout(folder, seed: int = DEMO_HELDOUT_SEED) -> dict:
    """Fresh samples of the demo world (scripts/make_demo_data.py) drawn with their own seeds, so no line is
    chosen the way the training files' were: pretrain.jsonl, sft.jsonl, dpo.jsonl and prompts.jsonl (the
    identity and reasoning prompts that are never in the training files). Returns {name: path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "dpo": dpo_lines(random.Random(seed), 200),
        "text": pretrain_lines(random.Random(seed + 1), 200),
        "chat": sft_lines(random.Random(seed + 2), 200),
        "prompts": [{"kind": "identity", "prompt": p} for p in IDENTITY_HELD_OUT]
                   + [{"kind": "reason", "prompt": p} for p in REASON_HELD_OUT],
    }
    paths = {}
    for name, rows in files.items():
        paths[name] = folder / HELDOUT_FILES[name]
        write_jsonl(paths[name], rows)
    return paths


# ---------------------------------------------------------------- finding the models

def find_dim(out_dir: Path, use_moe: bool) -> int:
    """The one model width used in OUT_DIR's folder names; ModelNotFound when there is none or several."""
    suffix = "_moe" if use_moe else ""
    pattern = re.compile(rf"^({'|'.join(m.stage for m in MODEL_MODES.values())})_([0-9]+){suffix}$")
    dims = {int(m.group(2)) for p in out_dir.glob("*") if (m := pattern.match(p.name)) and (p / "config.json").exists()}
    dims |= {int(m.group(1)) for p in (out_dir / "lora").glob("*")
             if (m := re.match(rf"^.+_([0-9]+){suffix}$", p.name)) and (p / "adapter_config.json").exists()}
    if not dims:
        raise ModelNotFound(f"no trained models in {out_dir} — produce them with: python scripts/demo_pipeline.py "
                            f"--out_dir {out_dir} (or the train_*.py scripts with --out_dir {out_dir})")
    if len(dims) > 1:
        raise ModelNotFound(f"{out_dir} holds models of several widths ({', '.join(map(str, sorted(dims)))}): pass --dim")
    return dims.pop()


def find_models(out_dir, dim: int, use_moe: bool = False, lora_base: str = "full_sft") -> list[dict]:
    """Rows in pipeline order: {"name", "stage", "path", "adapter", "starts_from"} for every stage folder that
    exists and every adapter in OUT_DIR/lora/ (on top of the lora_base stage's folder)."""
    out_dir = Path(out_dir)
    rows = []
    for mode in MODEL_MODES.values():
        path = out_dir / folder_name(mode.stage, dim, use_moe)
        if (path / "config.json").exists():
            rows.append({"name": mode.stage, "stage": mode.stage, "path": path, "adapter": None,
                         "starts_from": STARTS_FROM.get(mode.stage)})
    suffix = f"_{dim}{'_moe' if use_moe else ''}"
    adapters = sorted(p for p in (out_dir / "lora").glob(f"*{suffix}") if (p / "adapter_config.json").exists())
    base = out_dir / folder_name(lora_base, dim, use_moe)
    if adapters and not (base / "config.json").exists():
        mode = next(m for m in MODEL_MODES.values() if m.stage == lora_base)
        raise ModelNotFound(f"{base} (the base of the adapters in {out_dir / 'lora'}) not found — produce it with: "
                            f"{mode.command} --dim {dim} --out_dir {out_dir}")
    at = next((i + 1 for i, r in enumerate(rows) if r["stage"] == lora_base), len(rows))
    for adapter in reversed(adapters):
        name = adapter.name[:-len(suffix)]
        rows.insert(at, {"name": f"{lora_base} + {name}", "stage": "lora", "path": base, "adapter": adapter,
                         "starts_from": lora_base})
    if not rows:
        raise ModelNotFound(f"no models of width {dim} in {out_dir} — produce them with: python scripts/demo_pipeline.py "
                            f"--out_dir {out_dir} (or the train_*.py scripts with --dim {dim} --out_dir {out_dir})")
    return rows


def training_max_seq_len(out_dir: Path, dim: int, use_moe: bool, default: int = 512) -> int:
    """The --max_seq_len the stages were trained with (from OUT_DIR/runs/*/args.json), else `default`."""
    suffix = f"_{dim}{'_moe' if use_moe else ''}"
    for args_file in sorted((Path(out_dir) / "runs").glob(f"*{suffix}/args.json")):
        try:
            value = json.loads(args_file.read_text(encoding="utf-8")).get("max_seq_len")
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(value, int) and value >= 2:
            return value
    return default


# ---------------------------------------------------------------- measures

def identity_answers(model, tokenizer, prompts, name: str, max_new_tokens: int = 40) -> tuple[float, list]:
    """(share of greedy answers that contain `name`, [(prompt, answer), ...])."""
    from scripts.reason_format import sample_replies

    was_training = model.training
    model.eval()
    try:
        replies = sample_replies(model, tokenizer, prompts, samples=1, temperature=0.0, max_new_tokens=max_new_tokens)
    finally:
        model.train(was_training)
    answers = [(p, r.strip()) for p, r in zip(prompts, replies)]
    return (sum(name in a for _, a in answers) / len(answers) if answers else float("nan")), answers


def evaluate_pipeline(out_dir, dim: int | None = None, use_moe: bool = False, *, text=None, chat=None, dpo=None,
                      reason_prompts=None, identity_prompts=None, identity_name: str = IDENTITY_NAME,
                      lora_base: str = "full_sft", max_seq_len: int | None = None, batch_size: int = 16,
                      device="cpu", dtype="float32", samples: int = 4, temperature: float = 0.7, top_p: float = 0.9,
                      max_new_tokens: int = 60, identity_tokens: int = 40, seed: int = 42, progress: bool = True,
                      cache_dir=None) -> dict:
    """Measure every model of a pipeline (see the module docstring). text/chat/dpo: held-out files or None (that
    measure is skipped); reason_prompts/identity_prompts: lists of prompts (None: the demo's built-in held-out
    ones). Returns {"rows": [...], "bought": [...], "uniform": {...}, "settings": {...}, "data": {...}}."""
    from scripts.reason_format import format_share
    from trainer.evaluation import preference_accuracy, score_file

    out_dir = Path(out_dir)
    dim = dim or find_dim(out_dir, use_moe)
    rows = find_models(out_dir, dim, use_moe, lora_base)
    max_seq_len = max_seq_len or training_max_seq_len(out_dir, dim, use_moe)
    for path in (text, chat, dpo):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{path} not found (held-out data; `python scripts/eval_report.py "
                                    f"--write_demo_heldout DIR` writes the demo world's)")
    reason_prompts = list(REASON_HELD_OUT if reason_prompts is None else reason_prompts)
    identity_prompts = list(IDENTITY_HELD_OUT if identity_prompts is None else identity_prompts)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    by_stage = {r["stage"]: r for r in rows if r["adapter"] is None}

    iterator = rows
    if progress:
        from tqdm import tqdm

        iterator = tqdm(rows, desc="models", unit="model", dynamic_ncols=True)
    vocab_size = None
    for row in iterator:
        model, tokenizer = load_model(row["path"], row["adapter"], device=device, dtype=torch_dtype)
        vocab_size = vocab_size or len(tokenizer)
        metrics, details = {}, {}
        for key, path, kind in (("text", text, "pretrain"), ("chat", chat, "sft")):
            if path is not None:
                score = score_file(model, tokenizer, path, kind, max_seq_len, batch_size, cache_dir=cache_dir)
                metrics[f"{key}_ppl"], metrics[f"{key}_bpb"] = score.perplexity, score.bits_per_byte
                details[key] = score.as_dict()
        if dpo is not None:
            metrics["pref_acc"] = preference_accuracy(model, tokenizer, dpo, max_seq_len, batch_size)
            reference = STARTS_FROM["rlhf"]
            if row["stage"] == "rlhf" and reference in by_stage:
                ref_model, _ = load_model(by_stage[reference]["path"], device=device, dtype=torch_dtype)
                metrics["dpo_reward_acc"] = preference_accuracy(model, tokenizer, dpo, max_seq_len, batch_size,
                                                                reference=ref_model)
                details["dpo_reference"] = str(by_stage[reference]["path"])
                del ref_model
        if row["stage"] != "pretrain":  # a pretrained model does not chat
            if reason_prompts:
                share, replies = format_share(model, tokenizer, reason_prompts, samples=samples, temperature=temperature,
                                              top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
                metrics["well_formed"], details["reason_replies"] = share, replies
            if identity_prompts:
                share, answers = identity_answers(model, tokenizer, identity_prompts, identity_name, identity_tokens)
                metrics["identity"], details["identity_answers"] = share, answers
        row.update(metrics=metrics, details=details)
        del model

    uniform = {}
    for key in ("text", "chat"):
        counts = next((r["details"][key] for r in rows if key in r["details"]), None)
        if counts and vocab_size:
            uniform[f"{key}_ppl"] = float(vocab_size)
            uniform[f"{key}_bpb"] = counts["tokens"] * math.log2(vocab_size) / counts["bytes"] if counts["bytes"] else None
    report = {
        "out_dir": str(out_dir), "dim": dim, "use_moe": use_moe, "rows": rows, "uniform": uniform,
        "bought": what_each_stage_bought(rows, uniform),
        "data": {"text": str(text) if text else None, "chat": str(chat) if chat else None,
                 "dpo": str(dpo) if dpo else None, "reason_prompts": reason_prompts,
                 "identity_prompts": identity_prompts, "identity_name": identity_name},
        "settings": {"max_seq_len": max_seq_len, "batch_size": batch_size, "device": str(device),
                     "dtype": str(torch_dtype).removeprefix("torch."), "samples": samples, "temperature": temperature,
                     "top_p": top_p, "max_new_tokens": max_new_tokens, "identity_tokens": identity_tokens, "seed": seed,
                     "lora_base": lora_base},
    }
    return report


def what_each_stage_bought(rows, uniform) -> list[dict]:
    """One line per (stage, measure it is for): the value on the model the stage started from and on its own."""
    by_stage = {r["stage"]: r for r in rows if r["adapter"] is None}
    lines = []
    for row in rows:
        purpose, measures = PURPOSE.get(row["stage"], (None, []))
        start = row.get("starts_from")
        before_row = by_stage.get(start) if start else None
        for measure in measures:
            if measure not in row["metrics"]:
                continue
            if start is None:
                before_name, before = "uniform guess", uniform.get(measure)
            else:
                before_name = before_row["name"] if before_row else start
                before = before_row["metrics"].get(measure) if before_row else None
            lines.append({"model": row["name"], "stage": row["stage"], "for": purpose, "measure": measure,
                          "before_model": before_name, "before": before, "after": row["metrics"][measure]})
    return lines


# ---------------------------------------------------------------- writing it out

def _fmt(measure: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if MEASURES[measure][1]:
        return f"{value:.0%}"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def present_measures(report) -> list[str]:
    return [m for m in MEASURES if any(m in r["metrics"] for r in report["rows"])]


def to_markdown(report) -> str:
    measures = present_measures(report)
    s = report["settings"]
    out = [f"# Evaluation report: {report['out_dir']} (dim {report['dim']}{', MoE' if report['use_moe'] else ''})", ""]
    out.append("| model | " + " | ".join(MEASURES[m][0] for m in measures) + " |")
    out.append("|---|" + "---:|" * len(measures))
    for row in report["rows"]:
        out.append(f"| {row['name']} | " + " | ".join(_fmt(m, row["metrics"].get(m)) for m in measures) + " |")
    out += ["", "## What each stage bought", "", "| stage | for | measure | before | after |", "|---|---|---|---:|---:|"]
    for line in report["bought"]:
        out.append(f"| {line['model']} | {line['for']} | {MEASURES[line['measure']][0]} | "
                   f"{_fmt(line['measure'], line['before'])} ({line['before_model']}) | {_fmt(line['measure'], line['after'])} |")
    d = report["data"]
    out += ["", "## Data and settings", ""]
    if d["text"]:
        out.append(f"- text ppl/bpb: all tokens of `{d['text']}`")
    if d["chat"]:
        out.append(f"- chat ppl/bpb: assistant tokens of `{d['chat']}`")
    out.append(f"- windows of {s['max_seq_len']} tokens, {s['dtype']} on {s['device']}; bits per byte = total NLL / "
               f"(ln 2 × UTF-8 bytes of the scored text, control tokens 0 bytes)")
    if d["dpo"]:
        out.append(f"- pref. acc: log p(chosen) > log p(rejected) on `{d['dpo']}`; DPO reward acc: implicit reward "
                   f"margin > 0 against the model DPO started from ({STARTS_FROM['rlhf']})")
    if "well_formed" in measures:
        out.append(f"- well-formed: {len(d['reason_prompts'])} prompts × {s['samples']} samples, temperature "
                   f"{s['temperature']}, top_p {s['top_p']}, ≤{s['max_new_tokens']} tokens, seed {s['seed']}")
    if "identity" in measures:
        out.append(f"- identity: {len(d['identity_prompts'])} held-out prompts, greedy, ≤{s['identity_tokens']} tokens; "
                   f"an answer counts when it contains \"{d['identity_name']}\"")
    out.append(f"- uniform guess: a model that gives every one of the {int(report['uniform'].get('text_ppl') or report['uniform'].get('chat_ppl') or 0)} "
               f"tokens the same probability" if report["uniform"] else "")
    return "\n".join(line for line in out if line is not None).rstrip() + "\n"


def plot(report, png_path) -> Path | None:
    measures = present_measures(report)
    if not measures:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in report["rows"]]
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(names))]
    cols = min(4, len(measures))
    rows = math.ceil(len(measures) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows + 0.6), squeeze=False)
    for ax, measure in zip(axes.flat, measures):
        label, share, higher = MEASURES[measure]
        values = [r["metrics"].get(measure) for r in report["rows"]]
        xs = [i for i, v in enumerate(values) if v is not None]
        bars = ax.bar(xs, [values[i] for i in xs], color=[colours[i] for i in xs])
        for bar, i in zip(bars, xs):
            ax.annotate(_fmt(measure, values[i]), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7)
        uniform = report["uniform"].get(measure)
        if uniform is not None:
            ax.axhline(uniform, color="grey", linestyle="--", linewidth=1, label="uniform guess")
            ax.legend(fontsize=7, loc="upper right")
        if share:
            ax.set_ylim(0, 1.12)
        elif xs:
            shown = [values[i] for i in xs] + ([uniform] if uniform is not None else [])
            if max(shown) / max(min(shown), 1e-9) > 20:
                ax.set_yscale("log")
        ax.set_title(f"{label} ({'higher' if higher else 'lower'} is better)", fontsize=9)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(measures):]:
        ax.axis("off")
    fig.suptitle(f"What each stage bought: {report['out_dir']}", fontsize=10)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def write_report(report, report_dir) -> dict:
    """report.md, report.png and report.json in report_dir; returns their paths."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": report_dir / "report.md", "chart": report_dir / "report.png", "json": report_dir / "report.json"}
    paths["markdown"].write_text(to_markdown(report), encoding="utf-8")
    plot(report, paths["chart"])
    paths["json"].write_text(json.dumps(report, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    return paths


# ---------------------------------------------------------------- command line

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
        report = evaluate_pipeline(
            args.out_dir, args.dim, args.use_moe, text=files["text"], chat=files["chat"], dpo=files["dpo"],
            reason_prompts=prompts["reason"], identity_prompts=prompts["identity"], identity_name=args.identity_name,
            lora_base=args.lora_base, max_seq_len=args.max_seq_len, batch_size=args.batch_size, device=args.device,
            dtype=args.dtype, samples=args.samples, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens, identity_tokens=args.identity_tokens, seed=args.seed,
            progress=not args.no_progress, cache_dir=args.cache_dir)
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
