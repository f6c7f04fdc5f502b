"""What each stage of a pipeline bought, in numbers: one table and one chart for all the models it produced
(`python scripts/eval_report.py --help` describes each measure), and the demo's before/after figures taken from it.
"""
import json
import math
from pathlib import Path

import torch

from dataset.demo import IDENTITY_HELD_OUT, IDENTITY_NAME, REASON_HELD_OUT, words
from trainer.stages import PURPOSE, STARTS_FROM

from .checkpoints import find_dim, find_models
from .generation import build_prompt, generate, sample_replies
from .loading import load_model, pick_device, pick_dtype
from .reasoning import format_share

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
    "identity_clean": ("identity as sentence", True, True),
    "fact_acc": ("facts", True, True),
    "sum_acc": ("sums", True, True),
    "domain_ppl": ("domain ppl", False, False),
}

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
    was_training = model.training
    model.eval()
    try:
        replies = sample_replies(model, tokenizer, prompts, samples=1, temperature=0.0, max_new_tokens=max_new_tokens)
    finally:
        model.train(was_training)
    answers = [(p, r.strip()) for p, r in zip(prompts, replies)]
    return (sum(name in a for _, a in answers) / len(answers) if answers else float("nan")), answers


def training_vocabulary(out_dir, dim: int, use_moe: bool = False) -> set[str]:
    """Every word (dataset.demo.words) of the data the stages in OUT_DIR were trained on: the --data_path and
    --mix_data files named in OUT_DIR/runs/**/args.json. A reply that uses a word outside it is garbled."""
    suffix = f"_{dim}{'_moe' if use_moe else ''}"
    files = set()
    for args_file in sorted((Path(out_dir) / "runs").glob(f"**/*{suffix}/args.json")):
        try:
            args = json.loads(args_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        files |= {args[k] for k in ("data_path", "mix_data") if isinstance(args.get(k), str)}
    vocabulary = set()
    for path in sorted(files):
        if Path(path).is_file():
            vocabulary.update(words(Path(path).read_text(encoding="utf-8")))
    return vocabulary


def reads_as_sentence(reply: str, vocabulary, name: str = "") -> bool:
    """A non-empty reply every word of which is in the vocabulary (no invented or broken words) and that keeps to
    one script (Latin words or CJK characters, `name` aside): "I是MiniMind，一个" is garbled although each word exists."""
    found = words(reply)
    rest = [w for w in found if w != name.lower()]
    one_script = all(w.isascii() for w in rest) or not any(w.isascii() for w in rest)
    return bool(found) and one_script and all(w in vocabulary for w in found)


def exact_answers(model, tokenizer, questions, max_new_tokens: int = 32) -> tuple[float, list]:
    """(share of greedy replies equal to the expected answer, [(prompt, reply, answer), ...]) for
    [(prompt, answer), ...] questions."""
    if not questions:
        return float("nan"), []
    was_training = model.training
    model.eval()
    try:
        replies = sample_replies(model, tokenizer, [q for q, _ in questions], samples=1, temperature=0.0,
                                 max_new_tokens=max_new_tokens)
    finally:
        model.train(was_training)
    rows = [(q, r.strip(), a) for (q, a), r in zip(questions, replies)]
    return sum(r == a for _, r, a in rows) / len(rows), rows


def adapter_lines(report) -> list[dict]:
    """For every adapter: the base's held-out chat perplexity with the adapter off and on, the base's fact accuracy
    off and on, and the adapter's own target (identity share, or perplexity on its domain's held-out data)."""
    by_stage = {r["stage"]: r for r in report["rows"] if r["adapter"] is None}
    lines = []
    for row in report["rows"]:
        if row["adapter"] is None:
            continue
        base = by_stage.get(report["settings"]["lora_base"], {"metrics": {}, "name": report["settings"]["lora_base"]})
        on, off = row["metrics"], base["metrics"]
        line = {"adapter": row["name"], "base": base["name"], "chat_ppl_off": off.get("chat_ppl"),
                "chat_ppl_on": on.get("chat_ppl"), "fact_acc_off": off.get("fact_acc"), "fact_acc_on": on.get("fact_acc")}
        if "domain_ppl" in on:
            line.update(target="domain_ppl", target_off=on.get("domain_ppl_off"), target_on=on["domain_ppl"])
        elif "identity" in on:
            line.update(target="identity", target_off=off.get("identity"), target_on=on["identity"],
                        sentence_on=on.get("identity_clean"))
        if line["chat_ppl_off"] and line["chat_ppl_on"]:
            line["chat_ppl_ratio"] = line["chat_ppl_on"] / line["chat_ppl_off"]
        lines.append(line)
    return lines


def evaluate_pipeline(out_dir, dim: int | None = None, use_moe: bool = False, *, text=None, chat=None, dpo=None,
                      reason_prompts=None, identity_prompts=None, identity_name: str = IDENTITY_NAME,
                      lora_base: str = "full_sft", max_seq_len: int | None = None, batch_size: int = 16,
                      device="cpu", dtype="float32", samples: int = 4, temperature: float = 0.7, top_p: float = 0.9,
                      max_new_tokens: int = 60, identity_tokens: int = 40, seed: int = 42, progress: bool = True,
                      cache_dir=None, fact_questions=None, sum_questions=None, adapter_data=None,
                      vocabulary=None) -> dict:
    """Measure every model of a pipeline (see the module docstring). text/chat/dpo: held-out files or None (that
    measure is skipped); reason_prompts/identity_prompts: lists of prompts (None: the demo's built-in held-out
    ones). fact_questions/sum_questions: [(prompt, exact answer), ...] asked greedily (None: skipped);
    adapter_data: {adapter name: held-out conversations of its domain}, scored with the adapter on and off;
    vocabulary: the words an identity answer may use (None: the words of the stages' training data).
    Returns {"rows": [...], "bought": [...], "adapters": [...], "uniform": {...}, "settings": {...}, "data": {...}}."""
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
    adapter_data = {name: Path(path) for name, path in (adapter_data or {}).items()}
    for name, path in adapter_data.items():
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (held-out data of adapter {name})")
    if vocabulary is None and identity_prompts:
        vocabulary = training_vocabulary(out_dir, dim, use_moe)

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
                if vocabulary:
                    clean = [identity_name in a and reads_as_sentence(a, vocabulary, identity_name) for _, a in answers]
                    metrics["identity_clean"] = sum(clean) / len(clean)
            for key, questions in (("fact", fact_questions), ("sum", sum_questions)):
                if questions:
                    metrics[f"{key}_acc"], details[f"{key}_answers"] = exact_answers(model, tokenizer, questions)
        domain = adapter_data.get(row["name"].split(" + ", 1)[1]) if row["adapter"] is not None else None
        if domain is not None:  # the adapter's own target, with the adapter on (merged) and off (the plain base)
            score = score_file(model, tokenizer, domain, "sft", max_seq_len, batch_size, cache_dir=cache_dir)
            base_model, _ = load_model(row["path"], device=device, dtype=torch_dtype)
            score_off = score_file(base_model, tokenizer, domain, "sft", max_seq_len, batch_size, cache_dir=cache_dir)
            del base_model
            metrics["domain_ppl"], metrics["domain_ppl_off"] = score.perplexity, score_off.perplexity
            details["domain"] = {"file": str(domain), "on": score.as_dict(), "off": score_off.as_dict()}
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
        "vocabulary_size": len(vocabulary) if vocabulary else None,
        "data": {"text": str(text) if text else None, "chat": str(chat) if chat else None,
                 "dpo": str(dpo) if dpo else None, "reason_prompts": reason_prompts,
                 "identity_prompts": identity_prompts, "identity_name": identity_name,
                 "fact_questions": len(fact_questions or []), "sum_questions": len(sum_questions or []),
                 "adapter_data": {k: str(v) for k, v in adapter_data.items()}},
        "settings": {"max_seq_len": max_seq_len, "batch_size": batch_size, "device": str(device),
                     "dtype": str(torch_dtype).removeprefix("torch."), "samples": samples, "temperature": temperature,
                     "top_p": top_p, "max_new_tokens": max_new_tokens, "identity_tokens": identity_tokens, "seed": seed,
                     "lora_base": lora_base},
    }
    report["adapters"] = adapter_lines(report)
    return report


def what_each_stage_bought(rows, uniform) -> list[dict]:
    """One line per (stage, measure it is for): the value on the model the stage started from and on its own."""
    by_stage = {r["stage"]: r for r in rows if r["adapter"] is None}
    lines = []
    for row in rows:
        purpose, measures = PURPOSE.get(row["stage"], (None, []))
        start = row.get("starts_from")
        before_row = by_stage.get(start) if start else None
        if "domain_ppl" in row["metrics"]:  # a domain adapter: its target is the domain, not an identity
            measures = [m for m in measures if m not in ("identity", "identity_clean")]
        for measure in measures:
            if measure not in row["metrics"]:
                continue
            if measure == "domain_ppl":  # the same base with the adapter off
                before_name, before = (before_row["name"] if before_row else start), row["metrics"].get("domain_ppl_off")
            elif start is None:
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
    out += adapters_markdown(report)
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
    if "identity_clean" in measures:
        out.append(f"- identity as sentence: the answer contains \"{d['identity_name']}\", every word of it is in the "
                   f"stages' training data ({report.get('vocabulary_size')} words) and it keeps to one script")
    if "fact_acc" in measures:
        out.append(f"- facts: {d.get('fact_questions')} held-out capital and colour questions, greedy; a reply counts "
                   f"when it is exactly the fact's answer sentence")
    if "sum_acc" in measures:
        out.append(f"- sums: {d.get('sum_questions')} sum questions, greedy, exact answer sentence")
    for name, path in (d.get("adapter_data") or {}).items():
        out.append(f"- domain ppl of {name}: assistant tokens of `{path}`, adapter on and off")
    out.append(f"- uniform guess: a model that gives every one of the {int(report['uniform'].get('text_ppl') or report['uniform'].get('chat_ppl') or 0)} "
               f"tokens the same probability" if report["uniform"] else "")
    return "\n".join(line for line in out if line is not None).rstrip() + "\n"


def adapters_markdown(report) -> list[str]:
    """The adapters' table: what each adds (its target) and what it costs the base (chat ppl, facts)."""
    lines = report.get("adapters") or []
    if not lines:
        return []
    out = ["", "## Adapters: what each adds, what it costs the base", "",
           "| adapter | chat ppl off → on (×) | facts off → on | target | off → on |", "|---|---:|---:|---|---:|"]
    for line in lines:
        ratio = f" ({line['chat_ppl_ratio']:.2f}×)" if line.get("chat_ppl_ratio") else ""
        target = line.get("target")
        target_cell = (f"{_fmt(target, line.get('target_off'))} → {_fmt(target, line.get('target_on'))}"
                       if target else "—")
        if target == "identity" and line.get("sentence_on") is not None:
            target_cell += f" (as sentence {_fmt('identity_clean', line['sentence_on'])})"
        out.append(f"| {line['adapter']} | {_fmt('chat_ppl', line['chat_ppl_off'])} → "
                   f"{_fmt('chat_ppl', line['chat_ppl_on'])}{ratio} | {_fmt('fact_acc', line['fact_acc_off'])} → "
                   f"{_fmt('fact_acc', line['fact_acc_on'])} | {MEASURES[target][0] if target else '—'} | {target_cell} |")
    return out


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


# ---------------------------------------------------------------- the demo's figures

# sample chats the demo prints for each stage
DEMO_CHAT_PROMPTS = ["What is the capital of France?", "What is 3 plus 4?", "天空是什么颜色的？"]


def measure_demo(out, dim: int, heldout: dict, lora_name: str, max_seq_len: int, seed: int = 42,
                 agent: bool = True) -> tuple[dict, dict]:
    """(the demo's report: sample chats and the before/after figures it prints, the full evaluation report of
    scripts/eval_report.py, whose numbers the demo's figures are taken from). agent: also measure OUT/agent_<dim>
    when it exists (False when this run skipped the agent stage, so an earlier run's model is not reported)."""
    out = Path(out)
    torch.manual_seed(seed)
    folders = {s: out / f"{s}_{dim}" for s in ("pretrain", "full_sft", "rlhf", "reason")}
    report = {"chats": {}}

    def answer(model, tokenizer, prompt, chat=True, max_new_tokens=40):
        return generate(model, tokenizer, build_prompt(tokenizer, [{"role": "user", "content": prompt}], chat=chat),
                        max_new_tokens=max_new_tokens, temperature=0.0, top_p=1.0).strip()

    for stage, folder in folders.items():
        model, tokenizer = load_model(folder)
        chat = stage != "pretrain"
        prompts = DEMO_CHAT_PROMPTS[:2] if chat else ["The capital of France", "Two plus three"]
        report["chats"][stage] = [(p, answer(model, tokenizer, p, chat)) for p in prompts]

    # identity: greedy answers to held-out phrasings; reasoning: 4 sampled replies per held-out prompt
    from dataset.prompts import read_questions

    questions = {k: read_questions(heldout["prompts"], k) for k in ("fact", "sum")} if "prompts" in heldout else {}
    evaluation = evaluate_pipeline(out, dim, text=heldout["text"], chat=heldout["chat"], dpo=heldout["dpo"],
                                   reason_prompts=REASON_HELD_OUT, identity_prompts=IDENTITY_HELD_OUT,
                                   identity_name=IDENTITY_NAME, max_seq_len=max_seq_len, device="cpu", samples=4,
                                   temperature=0.7, top_p=0.9, max_new_tokens=60, identity_tokens=40, seed=seed,
                                   fact_questions=questions.get("fact"), sum_questions=questions.get("sum"))
    rows = {row["name"]: row for row in evaluation["rows"]}
    sft, with_lora = rows["full_sft"], rows[f"full_sft + {lora_name}"]
    dpo_model, reason_model = rows["rlhf"], rows["reason"]
    report["identity"] = {
        "name": IDENTITY_NAME,
        "base": sft["details"]["identity_answers"],
        "lora": with_lora["details"]["identity_answers"],
        "base_share": sft["metrics"]["identity"],
        "lora_share": with_lora["metrics"]["identity"],
    }
    report["adapter"] = demo_adapter_figures(sft, with_lora)
    report["dpo"] = {
        "pairs": str(heldout["dpo"]),
        "before": sft["metrics"]["pref_acc"],
        "after": dpo_model["metrics"]["pref_acc"],
        "reward_accuracy": dpo_model["metrics"].get("dpo_reward_acc"),
    }
    report["reason"] = {}
    for key, row in (("before", dpo_model), ("after", reason_model)):
        replies = row["details"].get("reason_replies", [])
        report["reason"][key] = row["metrics"]["well_formed"]
        report["reason"][f"{key}_example"] = replies[0] if replies else ""
    if heldout.get("tools"):
        report["tools"] = measure_demo_tools(folders, heldout["tools"], rows)
        if agent and (out / f"agent_{dim}" / "config.json").exists():
            report["agent"] = measure_demo_agent(out / f"agent_{dim}", heldout["tools"], report["tools"])
    return report, evaluation


def demo_summary(report, times, out, dim: int) -> str:
    """The text scripts/demo_pipeline.py prints at the end: sample chats and the before/after figures."""
    lines = []
    lines.append("\n" + "=" * 72 + "\nWhat each stage learned\n" + "=" * 72)
    for stage, chats in report["chats"].items():
        lines.append(f"\n[{stage}]")
        for prompt, reply in chats:
            lines.append(f"  > {prompt}\n    {reply!r}")
    ident = report["identity"]
    lines.append(f"\nLoRA identity on held-out phrasings (answers naming {ident['name']!r}): "
                 f"base {ident['base_share']:.0%} → with adapter {ident['lora_share']:.0%}")
    for prompt, reply in ident["lora"]:
        lines.append(f"  > {prompt}\n    {reply!r}")
    lines += demo_adapter_lines(report.get("adapter"))
    dpo = report["dpo"]
    lines.append(f"\nDPO preference accuracy on held-out pairs (log π(chosen) > log π(rejected)): "
                 f"SFT {dpo['before']:.0%} → DPO {dpo['after']:.0%}")
    if dpo.get("reward_accuracy") is not None:
        lines.append(f"DPO implicit-reward accuracy ((log π − log π_SFT)(chosen) > (…)(rejected)): {dpo['reward_accuracy']:.0%}")
    reason = report["reason"]
    lines.append(f"\nWell-formed <think>…</think><answer>…</answer> replies (held-out prompts, sampled): "
                 f"before {reason['before']:.0%} → after reasoning distillation {reason['after']:.0%}")
    lines.append(f"  example: {reason['after_example']!r}")
    if report.get("tools"):
        lines += tools_summary(report["tools"])
    if report.get("agent"):
        lines += agent_summary(report["agent"], times.get("agent"))
    lines.append("\nTime per stage (s): " + ", ".join(f"{k} {v}" for k, v in times.items()))
    lines.append(f"Loss curves: {out}/runs/<stage>_{dim}/loss.png; models in {out}/; chat with e.g.\n"
                 f"  python eval_model.py --out_dir {out} --dim {dim} --model_mode 1 --lora_name "
                 f"{report.get('lora_name', 'lora_identity')}")
    return "\n".join(lines)


# ---------------------------------------------------------------- tool use and the thinking switch

def measure_demo_tools(folders: dict, tools_file, rows: dict, before: str = "rlhf", after: str = "reason") -> dict:
    """Tool calls, answers with and without tools, and the thinking switch on the held-out tool file, on the model
    before the stage that trains them (the demo puts them in the reasoning stage's file) and after it; plus the
    plain-chat perplexity of the trained model against the SFT model's (no forgetting: within 10%)."""
    from .toolcall_eval import measure_tool_use, read_tool_file

    records = read_tool_file(tools_file)
    result = {"file": str(tools_file), "before_model": before, "after_model": after}
    for key, stage in (("before", before), ("after", after)):
        model, tokenizer = load_model(folders[stage])
        result[key] = measure_tool_use(model, tokenizer, records)
        del model
    sft_ppl = rows.get("full_sft", {}).get("metrics", {}).get("chat_ppl")
    after_ppl = rows.get(after, {}).get("metrics", {}).get("chat_ppl")
    result["chat_ppl"] = {"full_sft": sft_ppl, after: after_ppl,
                          "ratio": after_ppl / sft_ppl if sft_ppl and after_ppl else None}
    return result


def tools_summary(tools: dict) -> list[str]:
    """The demo's lines for tool use and the thinking switch: each measure before → after, an example transcript."""
    from .toolcall_eval import MEASURE_LABELS

    before, after = tools["before"], tools["after"]
    counts = after["counts"]
    lines = [f"\nTool use and the thinking switch ({counts['tool_tasks']} held-out tool tasks, "
             f"{counts['thinking_prompts']} thinking prompts, greedy): {tools['before_model']} → {tools['after_model']}"]
    for name, label in MEASURE_LABELS.items():
        a, b = before["measures"].get(name), after["measures"].get(name)
        if a is not None or b is not None:
            lines.append(f"  {label:<24} {_share_text(a):>5} → {_share_text(b)}")
    ppl = tools.get("chat_ppl") or {}
    if ppl.get("ratio") is not None:
        lines.append(f"  plain-chat ppl: SFT {ppl['full_sft']:.3f}, {tools['after_model']} {ppl[tools['after_model']]:.3f} "
                     f"({ppl['ratio'] - 1:+.1%}; the bar is within ±10%)")
    example = next((t for t in after["tasks"] if t.get("transcript") and len(t["transcript"]) > 2), None)
    if example:
        lines.append(f"  example: {example['question']}")
        for message in example["transcript"]:
            if message["role"] == "tool":
                lines.append(f"    tool → {message['content']}")
            elif message.get("tool_calls"):
                lines += [f"    call {c['name']}({json.dumps(c['arguments'], ensure_ascii=False)})"
                          for c in message["tool_calls"]]
            else:
                lines.append(f"    answer: {message['content']!r}")
    return lines


# the held-out measures the agent stage is judged on, first the one it is for
AGENT_MEASURES = ("answer_with_tools", "right_calls", "right_arguments", "valid_calls")


def measure_demo_agent(folder, tools_file, tools: dict) -> dict:
    """The agent stage's held-out tool-task measures (the tool tasks of the held-out file, greedy) against those of
    the model it started from, the reasoning stage's, already measured in `tools` (measure_demo_tools)."""
    from .toolcall_eval import measure_tool_use, read_tool_file

    records = [r for r in read_tool_file(tools_file) if r["tools"]]  # the thinking prompts are not its target
    model, tokenizer = load_model(folder)
    after = measure_tool_use(model, tokenizer, records, without_tools=False)
    before = tools["after"]
    return {"before_model": tools["after_model"], "after_model": "agent", "tasks": len(records),
            "before": {m: before["measures"].get(m) for m in AGENT_MEASURES},
            "after": {m: after["measures"].get(m) for m in AGENT_MEASURES},
            "by_kind_after": {k: v.get("answer_with_tools") for k, v in after["by_kind"].items()},
            "by_kind_before": {k: v.get("answer_with_tools") for k, v in before["by_kind"].items() if k != "thinking"}}


def agent_summary(agent: dict, seconds=None) -> list[str]:
    """The demo's lines for the agent stage: held-out tool-task success before → after."""
    from .toolcall_eval import MEASURE_LABELS

    took = f", {seconds} s" if seconds is not None else ""
    lines = [f"\nAgent stage (train_agent.py: RL with the tool calls run in the rollouts{took}) on the "
             f"{agent['tasks']} held-out tool tasks (greedy): {agent['before_model']} → {agent['after_model']}"]
    for name in AGENT_MEASURES:
        lines.append(f"  {MEASURE_LABELS[name]:<24} {_share_text(agent['before'][name]):>5} → "
                     f"{_share_text(agent['after'][name])}")
    return lines


def _share_text(value) -> str:
    return "—" if value is None else f"{value:.0%}"


def demo_adapter_figures(sft: dict, with_lora: dict) -> dict:
    """What the identity adapter adds and costs, and what SFT taught, from the evaluation rows of the SFT model
    and of the SFT model with the adapter on."""
    off, on = sft["metrics"], with_lora["metrics"]
    ppl_off, ppl_on = off.get("chat_ppl"), on.get("chat_ppl")
    return {"identity_sentence": on.get("identity_clean"), "chat_ppl_off": ppl_off, "chat_ppl_on": ppl_on,
            "chat_ppl_ratio": ppl_on / ppl_off if ppl_off and ppl_on else None,
            "fact_acc_off": off.get("fact_acc"), "fact_acc_on": on.get("fact_acc"),
            "sum_acc_off": off.get("sum_acc"), "sum_acc_on": on.get("sum_acc"),
            "fact_examples": (sft["details"].get("fact_answers") or [])[:3]}


def demo_adapter_lines(figures) -> list[str]:
    if not figures:
        return []
    pct = lambda v: "—" if v is None else f"{v:.0%}"
    lines = []
    if figures.get("identity_sentence") is not None:
        lines.append(f"Identity answers that name it and read as sentences (every word in the training data): "
                     f"{pct(figures['identity_sentence'])}")
    if figures.get("chat_ppl_ratio"):
        lines.append(f"Held-out chat perplexity, adapter off → on: {figures['chat_ppl_off']:.3f} → "
                     f"{figures['chat_ppl_on']:.3f} ({figures['chat_ppl_ratio']:.2f}×)")
    if figures.get("fact_acc_off") is not None:
        lines.append(f"Held-out fact questions answered exactly (capitals, colours; new phrasings), adapter off → on: "
                     f"{pct(figures['fact_acc_off'])} → {pct(figures['fact_acc_on'])}; sums "
                     f"{pct(figures.get('sum_acc_off'))} → {pct(figures.get('sum_acc_on'))}")
        for prompt, reply, answer in figures.get("fact_examples", []):
            lines.append(f"  > {prompt}\n    {reply!r}" + ("" if reply == answer else f" (expected {answer!r})"))
    return lines
