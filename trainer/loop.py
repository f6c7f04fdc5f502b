"""The one training loop every stage runs: data → model → stage loss → backward → optimizer, with
distributed training, mixed precision, accumulation, clipping, logging and resumable checkpoints around it."""
import math
import random
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from dataset import DataError
from . import distributed, fsdp
from .args import parse_args
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .metrics import RunLogger
from .modelio import StageError, build_or_load_model, load_tokenizer
from .evaluation import score_file
from .optim import build_optimizer
from .precision import autocast_dtype
from .rundir import RunDirBusy, hold_run_dir, watch_launcher


class NonFiniteLoss(Exception):
    pass


def learning_rate(step: int, total: int, peak: float, warmup: int, schedule: str = "cosine",
                  decay_frac: float = 0.3, min_ratio: float = 0.1) -> float:
    """The learning rate of optimizer step `step` (0 … total-1), after an optional linear warm-up.

    cosine: MiniMind's schedule, peak·min_ratio + peak/2·(1 + cos(π·progress)); with MiniMind's 0.1 it starts at 1.1×
    the peak and ends at a tenth of it.
    wsd: warm-up, stable at the peak, then a linear decay over the last `decay_frac` of the steps that reaches
    peak·min_ratio on the last step.
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "wsd":
        decay_steps = max(1, round(decay_frac * total))
        after = total - 1 - step  # steps after this one
        return peak * (min_ratio + (1 - min_ratio) * min(1.0, after / decay_steps))
    progress = (step - warmup) / max(1, total - warmup)
    return peak * min_ratio + 0.5 * peak * (1 + math.cos(math.pi * progress))


def to_device(batch: dict, device):
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def run(stage, argv=None):
    """Entry point of every train_*.py: parse flags, train, save; data and set-up errors end in one clear line.
    What the stage sets up for the run (stage.run_state: a reference model, a teacher, rewards) is dropped when the
    run ends, so the module-level stage objects hold no state between runs."""
    args = parse_args(stage, argv)
    info = distributed.setup(args.device)
    watch_launcher()
    code = 0
    try:
        with hold_run_dir(Path(args.out_dir) / "runs" / run_name(stage, args), info):  # one run per directory
            train(stage, args, info)
    except (DataError, StageError, NonFiniteLoss, RunDirBusy) as e:
        if info.is_main:
            print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        if info.is_main:
            print("interrupted: the last checkpoint is kept; rerun with --resume to continue", file=sys.stderr)
        code = 130
    finally:
        for name in stage.run_state:
            stage.__dict__.pop(name, None)
    if info.enabled:
        distributed.finish(info, code)
    if code:
        sys.exit(code)


def run_name(stage, args) -> str:
    """The run's name: its final folder OUT_DIR/<name> and its log and checkpoint folder OUT_DIR/runs/<name>."""
    return args.save_name or stage.output_name(args)


def train(stage, args, info):
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    tokenizer = load_tokenizer(args.tokenizer_path)
    name = run_name(stage, args)
    out_dir = Path(args.out_dir)
    run_dir = out_dir / "runs" / name
    ckpt_dir = run_dir / "checkpoints"

    # Rank 0 tokenizes first and fills the cache; the others then read it.
    if not info.is_main:
        distributed.barrier(info)
    data = stage.build_data(args, tokenizer, info)
    if info.is_main:
        distributed.barrier(info)
        for line in data.report():
            print(line, file=sys.stderr)

    model = build_or_load_model(args, stage, tokenizer)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable()
    model = stage.prepare_model(model, args)
    model.to(info.device)
    stage.setup(args, model, tokenizer, info)  # frozen reference/teacher copies are made here, unsharded
    use_fsdp = fsdp.check(args, info)
    if use_fsdp:
        fsdp.shard(model)  # before the optimizer: sharding replaces the parameters
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(model, args, info.device)
    if info.is_main:
        print(f"optimizer: {optimizer.describe()}", file=sys.stderr)
    amp_dtype = autocast_dtype(args.dtype, info.device)
    scaler = torch.amp.GradScaler(info.device.type) if amp_dtype == torch.float16 else None
    autocast = (lambda: torch.autocast(info.device.type, dtype=amp_dtype)) if amp_dtype else nullcontext

    progress = {"step": 0, "epoch": 0, "epoch_step": 0}
    if args.resume:
        path = latest_checkpoint(ckpt_dir)
        if path is None:
            raise StageError(f"--resume: no checkpoint in {ckpt_dir}; start without --resume")
        try:
            if use_fsdp:
                progress = fsdp.load_checkpoint(path, model, optimizer, scaler, info)
            else:
                progress = load_checkpoint(path, model, optimizer, scaler)
        except ValueError as e:
            raise StageError(str(e)) from None
        if info.is_main:
            print(f"resumed from {path} (step {progress['step']})", file=sys.stderr)

    train_model = model
    if info.enabled and not use_fsdp:
        train_model = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                              find_unused_parameters=bool(getattr(model.config, "use_moe", False)))
    if args.compile:
        train_model = torch.compile(train_model)
    model.train()
    stage.train_mode(model)

    steps_per_epoch = stage.steps_per_epoch(data, args, info)
    total_steps = steps_per_epoch * args.epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    if total_steps == 0:
        raise StageError(f"{args.data_path}: no training rows (after filtering); nothing to train")
    log = RunLogger(run_dir, args, total_steps, progress["step"], enabled=info.is_main)
    if info.is_main and not args.resume and ckpt_dir.exists():
        for old in ckpt_dir.glob("step_*"):  # a fresh run must not later resume into an older run's state
            shutil.rmtree(old, ignore_errors=True)
        (ckpt_dir / "latest").unlink(missing_ok=True)

    clock = TrainingClock(progress.get("train_s", 0.0))

    def checkpoint():
        train_s = clock.seconds()
        with clock.paused():
            state = {**progress, "train_s": train_s, "args": vars(args)}
            if use_fsdp:
                fsdp.save_checkpoint(ckpt_dir, model, optimizer, scaler, state, info)
            elif info.is_main:
                save_checkpoint(ckpt_dir, model, optimizer, scaler, state)
            distributed.barrier(info)

    def validate():
        train_s = clock.seconds()
        with clock.paused():
            if info.is_main or use_fsdp:  # a sharded model runs its forward on every rank
                with autocast():
                    score = score_file(model, tokenizer, args.eval_data, "auto", args.max_seq_len,
                                       args.batch_size, limit=args.eval_rows, cache_dir=args.cache_dir)
            if info.is_main:
                log.log(step, {"val_loss": score.loss, "val_bpb": score.bits_per_byte, "train_s": train_s})
            distributed.barrier(info)

    schedule = dict(schedule=args.lr_schedule, decay_frac=args.decay_frac, min_ratio=args.min_lr_ratio)
    window = {"items": 0.0, "tokens": 0, "start": None, "sums": {}}
    nonfinite = torch.zeros((), dtype=torch.bool, device=info.device)
    step = progress["step"]
    window["start"] = time.time()
    try:
        for epoch in range(progress["epoch"], args.epochs):
            epoch_step = progress["epoch_step"] if epoch == progress["epoch"] else 0
            steps = stage.step_groups(data, train_model, epoch, epoch_step, args, info)
            while step < total_steps:
                # before the group is drawn: a stage that samples its batches (GRPO's rollouts) samples them with
                # this step's schedule, also on the first step after --resume
                stage.on_step(step, total_steps)
                group = next(steps, None)
                if group is None:
                    break
                optimizer.set_lr(lambda peak: learning_rate(step, total_steps, peak, args.warmup_iters, **schedule))
                lr = learning_rate(step, total_steps, args.learning_rate, args.warmup_iters, **schedule)
                local_items = sum(b["num_items"] for b in group)
                items = distributed.all_reduce_sum(torch.tensor(float(local_items), device=info.device), info)
                scale = info.world_size / items  # DDP averages gradients over ranks
                step_loss = torch.zeros((), device=info.device)
                step_sums, step_tokens = {}, 0
                for i, batch in enumerate(group):
                    step_tokens += batch.get("num_tokens", 0)
                    batch = to_device(batch, info.device)
                    sync = fsdp.accumulate_only(train_model, info.enabled and i < len(group) - 1)
                    with sync:
                        with autocast():
                            loss_sum, sums = stage.loss(train_model, batch, args)
                        loss = loss_sum * scale
                        (scaler.scale(loss) if scaler else loss).backward()
                    step_loss += loss_sum.detach()
                    for k, v in sums.items():
                        step_sums[k] = step_sums.get(k, 0) + v.detach()
                if scaler:
                    optimizer.unscale_(scaler)
                grad_norm = fsdp.local(torch.nn.utils.clip_grad_norm_(params, args.grad_clip if args.grad_clip > 0 else float("inf")))
                bad = ~torch.isfinite(step_loss)
                if scaler is None:
                    bad |= ~torch.isfinite(grad_norm)
                else:  # float16: the GradScaler skips steps whose gradients overflow (and lowers its scale)
                    bad = distributed.all_reduce_sum(bad.float(), info) > 0  # every rank decides alike
                skipped = args.skip_nonfinite and bool(bad)
                if skipped:  # nothing of this step reaches the weights or the logged averages
                    optimizer.zero_grad(set_to_none=True)
                    if scaler:
                        scaler.update()  # ends the scaler's step (it was unscaled) and lowers the scale
                    log.message(f"step {step + 1}: non-finite loss or gradient, step skipped")
                else:
                    nonfinite |= bad
                    if info.device.type == "cpu" and bool(nonfinite):  # free to check on CPU: no device sync
                        raise NonFiniteLoss(_nonfinite_message(step + 1, ckpt_dir))
                    optimizer.step(scaler)
                    optimizer.zero_grad(set_to_none=True)
                step += 1
                epoch_step += 1
                if not skipped:
                    window["items"] += float(local_items)
                    window["tokens"] += step_tokens
                    for k, v in {**step_sums, "loss": step_loss}.items():
                        window["sums"][k] = window["sums"].get(k, 0) + v
                progress.update(step=step, epoch=epoch, epoch_step=epoch_step)
                log.step()
                last = step == total_steps
                if step % args.log_interval == 0 or last:
                    _log_window(log, window, step, epoch, lr, grad_norm, info, clock.seconds())
                    if bool(nonfinite):
                        raise NonFiniteLoss(_nonfinite_message(step, ckpt_dir))
                if args.eval_data and (last or (args.eval_interval and step % args.eval_interval == 0)):
                    validate()
                if args.save_interval and step % args.save_interval == 0 and not last:
                    if bool(nonfinite):
                        raise NonFiniteLoss(_nonfinite_message(step, ckpt_dir))
                    checkpoint()
            if step >= total_steps:
                break
            progress.update(epoch=epoch + 1, epoch_step=0)
        progress.update(epoch=args.epochs if step >= steps_per_epoch * args.epochs else progress["epoch"])
        checkpoint()
        final = model
        if use_fsdp:  # the stage's starting model, with the trained weights gathered into it
            final = fsdp.gather_full_model(model, lambda: stage.prepare_model(build_or_load_model(args, stage, tokenizer), args))
        if info.is_main:
            out = stage.save(final, tokenizer, args, Path(args.out_dir) / name)
            log.message(f"saved {out}")
    finally:
        log.close()


def _log_window(log, window, step, epoch, lr, grad_norm, info, train_s):
    """Average the window's sums over its items (across ranks) and log them; one host sync per log step."""
    keys = sorted(window["sums"])  # empty when every step of the window was skipped
    values = [torch.as_tensor(window["sums"][k], dtype=torch.float32, device=info.device).reshape(1) for k in keys]
    totals = torch.cat([*values, torch.tensor([window["items"], float(window["tokens"])], device=info.device)])
    totals = distributed.all_reduce_sum(totals, info).tolist()
    items, tokens = totals[-2], totals[-1]
    elapsed = max(time.time() - window["start"], 1e-9)
    record = {k: v / max(items, 1.0) for k, v in zip(keys, totals[:-2])}
    record.update({"epoch": epoch, "lr": lr, "grad_norm": float(grad_norm), "tok/s": tokens / elapsed, "train_s": train_s})
    log.log(step, record)
    window.update(items=0.0, tokens=0, sums={}, start=time.time())


class TrainingClock:
    """Seconds spent training, without validation and checkpoint writing (time-to-quality figures use it);
    carried across --resume."""

    def __init__(self, already: float = 0.0):
        self.start, self.pause_total = time.time() - already, 0.0

    def seconds(self) -> float:
        return time.time() - self.start - self.pause_total

    @contextmanager
    def paused(self):
        t = time.time()
        try:
            yield
        finally:
            self.pause_total += time.time() - t


def _nonfinite_message(step, ckpt_dir):
    last = latest_checkpoint(ckpt_dir)
    kept = f"the last good checkpoint is {last} (rerun with --resume and a lower --learning_rate)" if last else "no checkpoint was written yet"
    return f"non-finite loss or gradient at step {step}: training stopped; {kept}. --skip_nonfinite skips such steps instead"

