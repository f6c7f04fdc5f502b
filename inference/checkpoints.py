"""Where trained models live, and the one lookup every command uses to find them.

Stage outputs are OUT_DIR/<stage>_<dim>[_moe]/ (e.g. out/full_sft_512), LoRA adapters OUT_DIR/lora/<name>_<dim>[_moe]/,
run state OUT_DIR/runs/<name>/. `--model_mode N` picks a stage by MiniMind's numbers; the numbers, labels and producing
commands are declared by the stages themselves (trainer/stages.py).
"""
import json
import re
from pathlib import Path


class ModelNotFound(Exception):
    """A missing or unusable checkpoint, adapter or device; the message is one line meant for the user."""


def checkpoint_name(stage: str, dim: int, use_moe: bool = False) -> str:
    """The folder name of a stage's (or adapter's) output: <stage>_<dim>[_moe]."""
    return f"{stage}_{dim}{'_moe' if use_moe else ''}"


def stages():
    """Every training stage, in pipeline order. Imported on use: the trainer itself loads models through this
    package, so a module-level import would be circular."""
    from trainer.stages import ALL_STAGES

    return ALL_STAGES


def model_modes() -> dict:
    """--model_mode number -> the stage that produces that model."""
    from trainer.stages import MODEL_MODES

    return MODEL_MODES


def chats(model_mode: int) -> bool:
    """Whether the model of this --model_mode answers chats (a pretrained model continues plain text)."""
    return model_modes()[model_mode].chats


def produced_by() -> dict:
    """stage name -> the command that writes OUT_DIR/<stage>_<dim>[_moe]."""
    from trainer.stages import PRODUCED_BY

    return PRODUCED_BY


def modes_help() -> str:
    return ", ".join(f"{n} {s.name}" for n, s in model_modes().items())


def modes_table() -> str:
    """--model_mode values, one a line, for a --help epilog."""
    lines = [f"  {n}  {s.name + '_<dim>':<16} {s.label}; made by {s.command}" for n, s in model_modes().items()]
    return "model modes (--model_mode N loads OUT_DIR/<stage>_<dim>[_moe]):\n" + "\n".join(lines)


def train_flags(dim: int, use_moe: bool, out_dir) -> str:
    """The flags that make a training command write where a lookup with these arguments looks."""
    flags = f" --dim {dim}" + (" --use_moe" if use_moe else "")
    return flags + (f" --out_dir {out_dir}" if str(out_dir) != "out" else "")


def resolve_model_path(model_path=None, model_mode: int = 1, out_dir="out", dim: int = 512, use_moe: bool = False) -> Path:
    """The folder to load: `model_path` when given, else OUT_DIR/<stage>_<dim>[_moe] for `model_mode`."""
    if model_path:
        path = Path(model_path)
        if not path.is_dir():
            raise ModelNotFound(f"{path} not found (--model_path must be a model folder)")
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{path} is not a model folder (no config.json)")
        return path
    modes = model_modes()
    if model_mode not in modes:
        raise ModelNotFound(f"unknown --model_mode {model_mode} ({modes_help()})")
    stage = modes[model_mode]
    path = Path(out_dir) / checkpoint_name(stage.name, dim, use_moe)
    if not (path / "config.json").exists():
        raise ModelNotFound(f"{path} not found — produce it with: {stage.command}{train_flags(dim, use_moe, out_dir)}")
    return path


def resolve_lora_path(lora_name, out_dir="out", dim: int = 512, use_moe: bool = False) -> Path | None:
    """None without a name; an adapter folder given directly; else OUT_DIR/lora/<name>_<dim>[_moe]."""
    if not lora_name:
        return None
    direct = Path(lora_name)
    if (direct / "adapter_config.json").exists():
        return direct
    path = Path(out_dir) / "lora" / checkpoint_name(lora_name, dim, use_moe)
    if not (path / "adapter_config.json").exists():
        raise ModelNotFound(f"{path} not found — produce it with: python train_lora.py --lora_name {lora_name}"
                            f" --data_path data/{lora_name}.jsonl{train_flags(dim, use_moe, out_dir)}")
    return path


def resolve_start(spec, out_dir="out", dim: int = 512, use_moe: bool = False, flag: str = "--from_weight") -> Path | None:
    """Starting weights of a training run: 'none' -> None; a stage name -> OUT_DIR/<stage>_<dim>[_moe];
    anything else is a folder path."""
    if spec in (None, "", "none", "scratch"):
        return None
    commands = produced_by()
    if spec in commands:
        path = Path(out_dir) / checkpoint_name(spec, dim, use_moe)
        if not (path / "config.json").exists():
            raise ModelNotFound(f"starting weights {path} not found: run `{commands[spec]} --dim {dim}"
                                f"{' --use_moe' if use_moe else ''} --out_dir {out_dir}` first, "
                                f"or pass {flag} DIR / none")
        return path
    path = Path(spec)
    if not (path / "config.json").exists():
        raise ModelNotFound(f"{flag} {spec}: not a model folder (no config.json) and not a stage name "
                            f"({', '.join(commands)})")
    return path


def find_dim(out_dir, use_moe: bool = False) -> int:
    """The one model width used in OUT_DIR's folder names; ModelNotFound when there is none or several."""
    out_dir = Path(out_dir)
    suffix = "_moe" if use_moe else ""
    pattern = re.compile(rf"^({'|'.join(s.name for s in model_modes().values())})_([0-9]+){suffix}$")
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
    """A pipeline's models in order: {"name", "stage", "path", "adapter", "starts_from"} for every stage folder that
    exists and every adapter in OUT_DIR/lora/ (on top of the lora_base stage's folder, listed right after it)."""
    out_dir = Path(out_dir)
    rows = []
    for stage in model_modes().values():
        path = out_dir / checkpoint_name(stage.name, dim, use_moe)
        if (path / "config.json").exists():
            rows.append({"name": stage.name, "stage": stage.name, "path": path, "adapter": None,
                         "starts_from": stage.default_from})
    suffix = f"_{dim}{'_moe' if use_moe else ''}"
    adapters = sorted(p for p in (out_dir / "lora").glob(f"*{suffix}") if (p / "adapter_config.json").exists())
    base = out_dir / checkpoint_name(lora_base, dim, use_moe)
    if adapters and not (base / "config.json").exists():
        raise ModelNotFound(f"{base} (the base of the adapters in {out_dir / 'lora'}) not found — produce it with: "
                            f"{produced_by()[lora_base]} --dim {dim} --out_dir {out_dir}")
    at = next((i + 1 for i, r in enumerate(rows) if r["stage"] == lora_base), len(rows))
    for adapter in reversed(adapters):
        name = adapter.name[:-len(suffix)]
        rows.insert(at, {"name": f"{lora_base} + {name}", "stage": "lora", "path": base, "adapter": adapter,
                         "starts_from": lora_base})
    if not rows:
        raise ModelNotFound(f"no models of width {dim} in {out_dir} — produce them with: python scripts/demo_pipeline.py "
                            f"--out_dir {out_dir} (or the train_*.py scripts with --dim {dim} --out_dir {out_dir})")
    return rows


def producing_command(path) -> str:
    """The command that writes a model folder with this name (a best guess from the name)."""
    path = Path(path)
    if path.parent.name == "lora":
        return f"python train_lora.py --lora_name {re.sub(r'_[0-9]+(_moe)?$', '', path.name)}"
    for stage in sorted(model_modes().values(), key=lambda s: -len(s.name)):
        if path.name.startswith(stage.name + "_"):
            return stage.command
    return "one of the train_*.py scripts (or scripts/demo_pipeline.py)"


def resolve_model_arg(spec, base=None) -> tuple[Path, Path | None]:
    """(model folder, adapter folder or None) for a MODEL argument; ModelNotFound with a one-line message."""
    path = Path(spec)
    if not path.is_dir():
        raise ModelNotFound(f"{path} not found — produce it with: {producing_command(path)}")
    if (path / "adapter_config.json").exists():
        if base is None:
            recorded = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
            if not recorded:
                raise ModelNotFound(f"{path} is a LoRA adapter with no recorded base model: pass --base DIR")
            base = recorded
        base = Path(base)
        if not (base / "config.json").exists():
            raise ModelNotFound(f"{base} (base model of the adapter {path}) not found — produce it with: "
                                f"{producing_command(base)}, or pass --base DIR")
        return base, path
    if not (path / "config.json").exists():
        raise ModelNotFound(f"{path} is not a model folder (no config.json) — produce it with: {producing_command(path)}")
    return path, None
