"""Data at scale: build GB-size pretraining and SFT jsonl files from the data kit and measure the data path.

For each kind (pretrain, sft) and each size in --pretrain_mb / --sft_mb:
  make        the file, in --out: the kit's records repeated, each copy varied (its copy number is appended to the
              text / first user turn), so no two lines are the same
  first run   `train_pretrain.py` / `train_full_sft.py --max_steps 1` on an empty cache: validation and tokenization
              MB/s (from the run's data report), time to the first step (command start to exit: start-up, data,
              model, one step, final save), peak RSS and peak anonymous memory of the process tree (RSS also
              counts the memory-mapped Arrow cache, which the kernel can drop; anonymous memory is what must fit)
  second run  the same command again: the cache is reused (bytes written to the cache, seconds, memory)
And --stream_mb A,B: iterate the streaming dataset over a whole pretraining file of each size and record its peak
RSS (flat: it does not grow with the file).

Examples:
    python scripts/bench_data.py                                  # 1 GB pretrain + 1 GB SFT, 1 process
    python scripts/bench_data.py --pretrain_mb 200,1000 --sft_mb 0 --num_proc 2
    python scripts/bench_data.py --quick                          # 2 MB files, a smoke run
Files and caches go to a temporary folder (removed at the end unless --keep); never into the repository.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_KIT = ROOT.parent / "shared" / "data"
STAGES = {"pretrain": ["train_pretrain.py"], "sft": ["train_full_sft.py", "--from_weight", "none"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("--pretrain_mb", default=None, help="comma-separated sizes of the pretraining files, MB (default 1000; 0: none)")
    p.add_argument("--sft_mb", default=None, help="comma-separated sizes of the SFT files, MB (default 1000; 0: none)")
    p.add_argument("--stream_mb", default=None, help="two or more pretraining file sizes, MB, for the streaming RSS check (default 50,200; 0: skip)")
    p.add_argument("--num_proc", type=int, default=1, help="processes that validate and tokenize (the training flag)")
    p.add_argument("--config", default=None, help="model preset of the one-step training runs (default small)")
    p.add_argument("--max_seq_len", type=int, default=None, help="default 512")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--kit", default=str(DEFAULT_KIT), help="the data kit (pretrain.jsonl, sft.jsonl)")
    p.add_argument("--out", default=None, help="folder for the files and caches (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep --out afterwards")
    p.add_argument("--quick", action="store_true", help="smoke run defaults: 2 MB files, tiny model, seq 128, streaming at 1 and 2 MB")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (progress goes to stderr)")
    p.add_argument("--_stream", nargs=3, metavar=("KIND", "PATH", "LEN"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = dict(pretrain_mb="2", sft_mb="2", stream_mb="1,2", config="tiny", max_seq_len=128) if args.quick else \
        dict(pretrain_mb="1000", sft_mb="1000", stream_mb="50,200", config="small", max_seq_len=512)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    sizes = lambda s: [float(x) for x in s.split(",") if x.strip() and float(x) > 0]  # noqa: E731
    args.pretrain_mb, args.sft_mb, args.stream_mb = sizes(args.pretrain_mb), sizes(args.sft_mb), sizes(args.stream_mb)
    return args


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# files


def kit_records(kit: Path, kind: str) -> list[dict]:
    path = kit / ("pretrain.jsonl" if kind == "pretrain" else "sft.jsonl")
    if not path.exists():
        raise SystemExit(f"error: {path} not found: pass --kit (the data kit's folder)")
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def varied(record: dict, kind: str, copy: int) -> dict:
    if copy == 0:
        return record
    if kind == "pretrain":
        return {"text": f"{record['text']} ({copy})"}
    turns = [dict(t) for t in record["conversations"]]
    first_user = next(i for i, t in enumerate(turns) if t["role"] == "user")
    turns[first_user]["content"] = f"{turns[first_user]['content']} ({copy})"
    return {"conversations": turns}


def make_file(records: list[dict], kind: str, path: Path, mb: float) -> dict:
    """Write copies of `records` until the file holds `mb` MB; returns its size and line count."""
    target, size, lines, copy = int(mb * 1e6), 0, 0, 0
    start = time.perf_counter()
    with open(path, "w", encoding="utf-8") as f:
        while size < target:
            for record in records:
                line = json.dumps(varied(record, kind, copy), ensure_ascii=False) + "\n"
                f.write(line)
                size += len(line.encode("utf-8"))
                lines += 1
                if size >= target:
                    break
            copy += 1
    return {"path": str(path), "mb": round(size / 1e6, 1), "lines": lines, "copies": copy,
            "seconds": round(time.perf_counter() - start, 1)}


# ----------------------------------------------------------------------------------------------------------------
# measuring a command


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def _memory(pid: int) -> tuple[int, int]:
    """(RSS, anonymous RSS) in bytes of the process tree under pid."""
    rss = anon = 0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("RssAnon:"):
                        anon += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, anon


def measure(cmd: list[str], env=None) -> dict:
    """Run cmd; wall seconds, peak RSS and peak anonymous memory of its process tree (sampled every 0.1 s), output."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    peak = {"rss": 0, "anon": 0}

    def poll():
        while proc.poll() is None:
            rss, anon = _memory(proc.pid)
            peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out, err = proc.communicate()
    poller.join()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(peak["rss"] / 1e9, 2),
            "peak_anon_gb": round(peak["anon"] / 1e9, 2), "stdout": out, "stderr": err}


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


REPORT = re.compile(r"ready in ([\d.]+) s: validate ([\d.]+) s(?: \(([\d.]+) MB/s\))?.*?tokenize ([\d.]+) s"
                    r"(?: \(([\d.]+) MB/s\))?.*?rows ([\d.]+) s")


def train_once(args, kind: str, path: Path, cache: Path, out: Path) -> dict:
    cmd = [sys.executable, *STAGES[kind], "--data_path", str(path), "--config", args.config, "--max_seq_len",
           str(args.max_seq_len), "--batch_size", str(args.batch_size), "--accumulation_steps", "1", "--max_steps", "1",
           "--save_interval", "0", "--cache_dir", str(cache), "--out_dir", str(out), "--num_proc", str(args.num_proc),
           "--quiet"]
    before = folder_bytes(cache)
    r = measure(cmd)
    r["cache_bytes_written"] = folder_bytes(cache) - before
    found = REPORT.search(r.pop("stderr"))
    r.pop("stdout")
    if found:
        ready, validate, validate_rate, tokenize, tokenize_rate, rows = found.groups()
        # the rates as the data report prints them, from unrounded seconds (a small file's step rounds to 0.0 s)
        r.update(data_ready_s=float(ready), validate_s=float(validate), tokenize_s=float(tokenize), rows_s=float(rows),
                 validate_mb_s=float(validate_rate) if validate_rate else None,
                 tokenize_mb_s=float(tokenize_rate) if tokenize_rate else None)
    return r


def stream_once(path: Path, max_seq_len: int) -> dict:
    r = measure([sys.executable, str(Path(__file__).resolve()), "--_stream", "pretrain", str(path), str(max_seq_len)])
    r.update(json.loads(r.pop("stdout")))
    r.pop("stderr")
    r["mb"] = round(path.stat().st_size / 1e6, 1)
    return r


def stream_child(kind: str, path: str, max_seq_len: int):
    """Iterate the streaming dataset over the whole file (the child of stream_once)."""
    from dataset import build_dataset
    from trainer.modelio import load_tokenizer

    start = time.perf_counter()
    rows = sum(1 for _ in build_dataset(kind, path, load_tokenizer(), max_seq_len, streaming=True))
    print(json.dumps({"rows": rows, "stream_s": round(time.perf_counter() - start, 1)}))


# ----------------------------------------------------------------------------------------------------------------


def main(argv=None):
    args = parse_args(argv)
    if args._stream:
        return stream_child(args._stream[0], args._stream[1], int(args._stream[2]))
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_data_"))
    out.mkdir(parents=True, exist_ok=True)
    kit = Path(args.kit)
    load = os.getloadavg()[0]
    result = {"config": {"num_proc": args.num_proc, "model": args.config, "max_seq_len": args.max_seq_len,
                         "cpu_count": os.cpu_count(), "loadavg_start": round(load, 2)}, "runs": [], "streaming": []}
    try:
        for kind, sizes in (("pretrain", args.pretrain_mb), ("sft", args.sft_mb)):
            records = kit_records(kit, kind) if sizes else []
            for mb in sizes:
                path = out / f"{kind}_{mb:g}mb.jsonl"
                log(f"{kind} {mb:g} MB: writing {path} ...")
                made = make_file(records, kind, path, mb)
                cache = out / f"cache_{kind}_{mb:g}"
                shutil.rmtree(cache, ignore_errors=True)
                log(f"{kind} {mb:g} MB: first run (empty cache) ...")
                first = train_once(args, kind, path, cache, out / "train")
                log(f"{kind} {mb:g} MB: second run ...")
                second = train_once(args, kind, path, cache, out / "train")
                result["runs"].append({"kind": kind, "file": made, "cache_gb": round(folder_bytes(cache) / 1e9, 2),
                                       "first": first, "second": second})
                shutil.rmtree(cache, ignore_errors=True)
                path.unlink()
        if len(args.stream_mb) >= 2:
            records = kit_records(kit, "pretrain")
            for mb in args.stream_mb:
                path = out / f"stream_{mb:g}mb.jsonl"
                make_file(records, "pretrain", path, mb)
                log(f"streaming {mb:g} MB ...")
                result["streaming"].append(stream_once(path, args.max_seq_len))
                path.unlink()
    finally:
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    result["config"]["loadavg_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return result


def print_table(r):
    c = r["config"]
    print(f"data path at scale: --num_proc {c['num_proc']}, model {c['model']}, max_seq_len {c['max_seq_len']}, "
          f"{c['cpu_count']} CPUs (load average {c['loadavg_start']} at the start, {c['loadavg_end']} at the end)")
    if r["runs"]:
        print(f"\n{'kind':<9} {'MB':>7} {'run':<7} {'validate':>9} {'tokenize':>9} {'rows s':>7} {'1st step s':>10} "
              f"{'peak RSS':>9} {'peak anon':>9} {'cache written':>13}")
        for run in r["runs"]:
            for name in ("first", "second"):
                m = run[name]
                rate = lambda k: "-" if m.get(k) is None else f"{m[k]:.1f}MB/s"  # noqa: E731
                print(f"{run['kind']:<9} {run['file']['mb']:>7.0f} {name:<7} {rate('validate_mb_s'):>9} "
                      f"{rate('tokenize_mb_s'):>9} {m.get('rows_s', 0):>7.1f} {m['seconds']:>10.1f} "
                      f"{m['peak_rss_gb']:>8.2f}G {m['peak_anon_gb']:>8.2f}G {m['cache_bytes_written'] / 1e9:>12.2f}G")
    if r["streaming"]:
        print("\nstreaming (whole file, no model): peak memory of the process")
        for s in r["streaming"]:
            print(f"{s['mb']:>7.0f} MB  {s['rows']:>9} rows  {s['stream_s']:>7.1f} s  RSS {s['peak_rss_gb']:.2f}G  "
                  f"anon {s['peak_anon_gb']:.2f}G")
    if max(c["loadavg_start"], c["loadavg_end"]) >= c["cpu_count"]:
        print("note: the machine was busy (other work shared the CPUs): times and MB/s are lower than on an idle one")


if __name__ == "__main__":
    main()
