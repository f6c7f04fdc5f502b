"""CI: are the demo's headline figures (README, "What the demo does") still what the README says?

  python .ci/check_demo.py out/ci_demo/report.json

Reads the report.json that scripts/demo_pipeline.py writes beside its models, prints each figure against its band,
and exits 1 if any is outside. The bands are here and only here: when the demo changes on purpose, re-measure,
update the README's figures and these bands together.
"""
import json
import sys
from pathlib import Path

# figure: (path in report.json, lowest allowed, highest allowed, what the README says)
# Wide enough for run-to-run and machine-to-machine noise (a different CPU's float reductions change the sampled
# replies), tight enough that a stage that stops teaching what it should falls out.
BANDS = {
    "identity before LoRA": (("report", "identity", "base_share"), 0.0, 0.25, "0 of 10 held-out phrasings"),
    "identity with LoRA": (("report", "identity", "lora_share"), 0.8, 1.0, "9 of 10"),
    "identity with LoRA, as sentences": (("report", "adapter", "identity_sentence"), 0.7, 1.0, "9 of 10"),
    "SFT fact answers": (("report", "adapter", "fact_acc_off"), 0.8, 1.0, "95%"),
    "fact answers, adapter on": (("report", "adapter", "fact_acc_on"), 0.8, 1.0, "92.5%"),
    "chat ppl with adapter / without": (("report", "adapter", "chat_ppl_ratio"), 0.0, 1.3, "1.00x"),
    "DPO pref. accuracy, SFT": (("report", "dpo", "before"), 0.5, 0.85, "73%"),
    "DPO pref. accuracy, DPO": (("report", "dpo", "after"), 0.75, 1.0, "82%"),
    "well-formed reasoning, before": (("report", "reason", "before"), 0.0, 0.2, "0%"),
    "well-formed reasoning, after": (("report", "reason", "after"), 0.8, 1.0, "100%"),
    "valid tool calls, after": (("report", "tools", "after", "measures", "valid_calls"), 0.6, 1.0, "100%"),
    "thinking-on replies reason": (("report", "tools", "after", "measures", "thinking_on"), 0.6, 1.0, "100%"),
    "thinking-off replies answer directly": (("report", "tools", "after", "measures", "thinking_off"), 0.8, 1.0, "100%"),
    "chat ppl after the tool mix / SFT": (("report", "tools", "chat_ppl", "ratio"), 0.0, 1.1, "1.05x"),
    "seconds, whole demo": (("seconds", "total"), 0, 900, "about 4 minutes on 2 cores"),  # 189-311 s; a busy CI machine takes longer
}
# and what each stage bought must be a clear gain, not noise
GAINS = {
    "DPO gain": (("report", "dpo", "after"), ("report", "dpo", "before"), 0.04),
    "LoRA identity gain": (("report", "identity", "lora_share"), ("report", "identity", "base_share"), 0.5),
    "reasoning format gain": (("report", "reason", "after"), ("report", "reason", "before"), 0.6),
}


def lookup(report: dict, path: tuple):
    value = report
    for key in path:
        value = value[key]
    return value


def check(report: dict) -> list[str]:
    """One line per figure; lines of figures out of their band start with 'FAIL'."""
    lines = []
    for name, (path, low, high, readme) in BANDS.items():
        value = lookup(report, path)
        ok = low <= value <= high
        lines.append(f"{'ok  ' if ok else 'FAIL'} {name}: {value:.3g} (band {low}..{high}; README: {readme})")
    for name, (after, before, least) in GAINS.items():
        gain = lookup(report, after) - lookup(report, before)
        lines.append(f"{'ok  ' if gain >= least else 'FAIL'} {name}: {gain:+.3g} (at least {least:+})")
    return lines


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        lines = check(report)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: {path}: not a demo report ({type(e).__name__}: {e})", file=sys.stderr)
        return 2
    print("\n".join(lines))
    failed = [line for line in lines if line.startswith("FAIL")]
    print(f"demo figures: {len(lines) - len(failed)} of {len(lines)} within their bands")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
