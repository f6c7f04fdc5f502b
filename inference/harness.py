"""lm-evaluation-harness on our models (`python scripts/eval_harness.py --help`): the project's offline
multiple-choice task about the demo world (`minimind_world`), and running lm-eval's `hf` model type on a model folder
plus an optional LoRA adapter."""
import json
import random
from pathlib import Path

from dataset.demo import CAPITALS, COLOURS, NUMBER_WORDS
from model import TOKENIZER_DIR

from .checkpoints import ModelNotFound

TASK_NAME = "minimind_world"
TASK_VERSION = 1.0


# ---------------------------------------------------------------- the project's local task

def _options(rng, right, pool, n=4):
    """(choices, index of the right one): `right` and n-1 other members of pool, shuffled."""
    choices = [right, *rng.sample([p for p in pool if p != right], n - 1)]
    rng.shuffle(choices)
    return choices, choices.index(right)


def world_items(seed: int = 0) -> list[dict]:
    """Multiple-choice completions about the demo world: {"id", "context", "choices", "answer" (index)}. A choice
    carries its own leading space where the language needs one, so the task's target delimiter is empty."""
    rng = random.Random(seed)
    items = []

    def add(context, right, pool):
        choices, answer = _options(rng, right, pool)
        items.append({"id": len(items), "context": context, "choices": choices, "answer": answer})

    cities = [c[1] for c in CAPITALS]
    cities_zh = [c[3] for c in CAPITALS]
    for country, city, country_zh, city_zh in CAPITALS:
        add(f"The capital of {country} is", f" {city}", [f" {c}" for c in cities])
        add(f"{country_zh}的首都是", city_zh, cities_zh)
    colours = sorted({c[1] for c in COLOURS})
    colours_zh = sorted({c[3] for c in COLOURS})
    for thing, colour, thing_zh, colour_zh in COLOURS:
        add(f"{thing[0].upper() + thing[1:]} is", f" {colour}", [f" {c}" for c in colours])
        add(f"{thing_zh}是", f"{colour_zh}的", [f"{c}的" for c in colours_zh])
    pairs = rng.sample([(a, b) for a in range(10) for b in range(10)], 20)
    for a, b in pairs:
        add(f"{NUMBER_WORDS[a].capitalize()} plus {NUMBER_WORDS[b]} is", f" {NUMBER_WORDS[a + b]}",
            [f" {w}" for w in NUMBER_WORDS])
    return items


def write_task(task_dir) -> Path:
    """Write minimind_world.jsonl and minimind_world.yaml into task_dir (the YAML holds the jsonl's absolute
    path, so the folder works as an lm-eval --include_path from anywhere); returns the YAML path."""
    import yaml

    task_dir = Path(task_dir).resolve()
    task_dir.mkdir(parents=True, exist_ok=True)
    data = task_dir / f"{TASK_NAME}.jsonl"
    data.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in world_items()), encoding="utf-8")
    config = {
        "task": TASK_NAME,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",  # a field name: lm-eval reads the field
        "doc_to_choice": "choices",
        "doc_to_target": "answer",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": TASK_VERSION},
    }
    path = task_dir / f"{TASK_NAME}.yaml"
    path.write_text("# Written by scripts/eval_harness.py: the project's offline multiple-choice task.\n"
                    + yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


# ---------------------------------------------------------------- running lm-eval

def model_arguments(model_path: Path, lora_path: Path | None, dtype: str) -> dict:
    """lm-eval `hf` model_args for a model folder (+ adapter)."""
    args = {"pretrained": str(model_path), "backend": "causal", "dtype": dtype}
    if not (model_path / "tokenizer.json").exists() and not (model_path / "tokenizer_config.json").exists():
        args["tokenizer"] = str(TOKENIZER_DIR)
    if lora_path is not None:
        args["peft"] = str(lora_path)
    return args


def task_manager(tasks: list[str], include_paths: list):
    """A TaskManager over the include paths only when they hold every requested task (indexing lm-eval's
    thousands of built-in tasks takes seconds), else over the built-ins too."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(p) for p in include_paths], include_defaults=False)
    if all(manager.match_tasks([t]) for t in tasks):
        return manager
    return TaskManager(include_path=[str(p) for p in include_paths])


def run_harness(model_path, lora_path, tasks, include_paths, device="cpu", dtype="float32", batch_size=8,
                num_fewshot=None, limit=None, apply_chat_template=False, seed=0) -> dict:
    import lm_eval

    import model  # noqa: F401  registers MiniMind with AutoConfig / AutoModelForCausalLM

    manager = task_manager(tasks, include_paths)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise ModelNotFound(f"unknown task{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} (not in lm-eval's "
                            f"tasks or the --include_path folders)")
    return lm_eval.simple_evaluate(
        model="hf", model_args=model_arguments(Path(model_path), lora_path, dtype), tasks=tasks,
        num_fewshot=num_fewshot, batch_size=batch_size, device=device, limit=limit, task_manager=manager,
        apply_chat_template=apply_chat_template, log_samples=False, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed)
