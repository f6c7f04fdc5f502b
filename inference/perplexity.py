"""Perplexity and bits per byte of models (or LoRA adapters) on jsonl files, every model on every file
(`python scripts/eval_ppl.py --help`). The scoring itself is trainer/evaluation.py's, which training validation uses
too, so the numbers agree."""
from pathlib import Path

from trainer.evaluation import detect_kind, score_file

from .checkpoints import resolve_model_arg
from .loading import load_model, pick_device, pick_dtype

DATA_HINT = "a jsonl file in MiniMind's formats; `python scripts/make_demo_data.py --out_dir data/demo` writes a demo set"


def model_label(path: Path, adapter: Path | None) -> str:
    return f"{path.name}+{adapter.name}" if adapter else path.name


def check_data(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found ({DATA_HINT})")
    return path


def evaluate(models, data, kind="auto", max_seq_len=512, batch_size=16, device="cpu", dtype="float32",
             base=None, limit=None, progress=True, cache_dir=None) -> list[dict]:
    """One result dict per (model, data file): model, data, kind, tokens, bytes, samples, nll, loss, perplexity,
    bits_per_byte. Every model is checked before any is loaded, so a typo fails fast."""
    resolved = [resolve_model_arg(m, base) for m in models]
    files = [check_data(d) for d in ([data] if isinstance(data, (str, Path)) else data)]
    kinds = {f: detect_kind(f) if kind == "auto" else kind for f in files}
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    results = []
    for path, adapter in resolved:
        model, tokenizer = load_model(path, adapter, device=device, dtype=torch_dtype)
        label = model_label(path, adapter)
        for f in files:
            score = score_file(model, tokenizer, f, kinds[f], max_seq_len, batch_size, limit=limit, progress=progress,
                               desc=f"{label} on {f.name}", cache_dir=cache_dir)
            results.append({"model": label, "model_path": str(path), "adapter": str(adapter) if adapter else None,
                            "data": str(f), "kind": kinds[f], **score.as_dict()})
        del model
    return results


def format_table(results) -> str:
    header = ["model", "data", "kind", "tokens", "bytes", "loss", "ppl", "bpb"]
    rows = [[r["model"], Path(r["data"]).name, r["kind"], str(r["tokens"]), str(r["bytes"]), f"{r['loss']:.4f}",
             f"{r['perplexity']:.3f}", f"{r['bits_per_byte']:.4f}"] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    right = {3, 4, 5, 6, 7}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])
