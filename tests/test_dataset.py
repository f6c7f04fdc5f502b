"""Tests for the dataset package: validation, samples, caching, packing, collation, streaming."""
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_KIT = Path(__file__).parents[1] / ".." / "shared" / "data"
MODEL_DIR = REPO_ROOT / "model"

import dataset
from dataset import (DataError, DataWarning, DPOCollator, PackedBatchCollator, best_fit_decreasing,
                     build_dataset, load_records)
from dataset import jsonl, samples
from dataset.samples import IGNORE_INDEX, pretrain_chunks
from conftest import skip_unless_required

CHAT_TEMPLATE = (
    "{%- for message in messages -%}{%- if message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}{%- generation -%}{{- message['content'] + '<|im_end|>' -}}"
    "{%- endgeneration -%}{{- '\\n' -}}{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<answer>", "</answer>"]


def _throwaway_tokenizer(directory: Path):
    """A small byte-level BPE with the project's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([f"the answer is {i}. 你好，世界 {i * 7}" for i in range(300)], trainer)
    PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                            pad_token="<|endoftext|>", unk_token="<|endoftext|>", chat_template=CHAT_TEMPLATE,
                            additional_special_tokens=SPECIAL_TOKENS[3:]).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    if (MODEL_DIR / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(MODEL_DIR))
    return AutoTokenizer.from_pretrained(str(_throwaway_tokenizer(tmp_path_factory.mktemp("tokenizer"))))


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


@pytest.fixture
def data_kit():
    if not (DATA_KIT / "sft.jsonl").exists():
        skip_unless_required(f"needs the data kit at {DATA_KIT.resolve()} (present in CI, not in a user's clone)",
                             "REQUIRE_KIT")
    return DATA_KIT


def write_jsonl(path: Path, lines) -> Path:
    """Dicts are written as JSON, str lines as they are, bytes raw."""
    data = b"".join((line if isinstance(line, bytes) else
                     (line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)).encode()) + b"\n"
                    for line in lines)
    path.write_bytes(data)
    return path


def chat(*pairs, system=None):
    turns = [{"role": "system", "content": system}] if system else []
    for user, assistant in pairs:
        turns += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return turns


def label_runs(tokenizer, sample) -> list[str]:
    """The loss-bearing labels of a sample, decoded run by run."""
    runs, run = [], []
    for label in sample["labels"] + [IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            run.append(label)
        elif run:
            runs.append(tokenizer.decode(run, skip_special_tokens=False))
            run = []
    return runs


def sample_key(sample) -> tuple:
    return tuple(sample["input_ids"]), tuple(sample["labels"])


GOOD = {"pretrain": {"text": "hello"},
        "sft": {"conversations": chat(("hi", "hello"))},
        "dpo": {"chosen": chat(("hi", "hello")), "rejected": chat(("hi", "go away"))}}

MALFORMED = [
    ("pretrain", '{"text": "unterminated"', "invalid JSON: "),
    ("pretrain", "[1, 2]", "line is not a JSON object (got array)"),
    ("pretrain", {"txt": "a"}, "text: missing"),
    ("pretrain", {"text": ""}, "text: empty"),
    ("pretrain", {"text": 5}, "text: expected a string, got number"),
    ("pretrain", b'{"text": "\xff"}', "invalid UTF-8 at byte 10"),
    ("sft", {"conversations": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
     "conversations[1].role: unknown role 'bot' (expected system/user/assistant/tool)"),
    ("sft", {"conversations": [{"role": "user", "content": "a"}]}, "conversations: no assistant turn"),
    ("sft", {"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ["b"]}]},
     "conversations[1].content: expected a string, got array"),
    ("sft", {"conversations": [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "}]},
     "conversations[1].content: empty"),
    ("sft", {"conversations": [{"content": "a"}]}, "conversations[0].role: missing"),
    ("sft", {"conversations": []}, "conversations: empty"),
    ("sft", {"conversations": "hi"}, "conversations: expected an array of turns, got string"),
    ("sft", {"messages": []}, "conversations: missing"),
    ("sft", {"conversations": chat(("a", "b")) + [{"role": "system", "content": "s"}]},
     "conversations[2].role: a system turn is only allowed first"),
    ("dpo", {"chosen": chat(("a", "b"))}, "rejected: missing"),
    ("dpo", {"chosen": chat(("a", "b")), "rejected": chat(("a", "b")) + [{"role": "user", "content": "c"}]},
     "rejected: must end with an assistant turn"),
    ("dpo", {"chosen": [None], "rejected": chat(("a", "b"))},
     "chosen[0]: expected an object with role and content, got null"),
]


@pytest.mark.parametrize("kind,line,problem", MALFORMED)
def test_malformed_line_names_file_line_and_field(tmp_path, tokenizer, cache_dir, kind, line, problem):
    path = write_jsonl(tmp_path / "data.jsonl", [GOOD[kind], "", line, GOOD[kind]])
    with pytest.raises(DataError) as loaded:
        load_records(kind, path)
    assert str(loaded.value).startswith(f"{path}:3: {problem}")
    with pytest.raises(DataError) as built:
        build_dataset(kind, path, tokenizer, 64, cache_dir=cache_dir)
    assert str(built.value) == str(loaded.value)
    assert (built.value.line, built.value.path) == (3, str(path))


def test_skip_bad_lines_counts_and_reports(tmp_path, tokenizer, cache_dir):
    lines = [GOOD["sft"], "{oops", GOOD["sft"], {"conversations": chat(("a", "b"))[:1]}, "", "7", GOOD["sft"]]
    path = write_jsonl(tmp_path / "sft.jsonl", lines)

    records, n_bad, first = load_records("sft", path, skip_bad_lines=True)
    assert (len(records), n_bad, first.line) == (3, 3, 2)

    with pytest.raises(DataError, match=rf"^{path}:2: invalid JSON"):
        build_dataset("sft", path, tokenizer, 64, cache_dir=cache_dir)
    with pytest.warns(DataWarning, match=rf"skipped 3 bad lines in {path} \(first: {path}:2: invalid JSON"):
        ds = build_dataset("sft", path, tokenizer, 64, cache_dir=cache_dir, skip_bad_lines=True)
    assert (ds.stats.n_bad_lines, ds.stats.n_records, ds.stats.n_samples) == (3, 3, 3)


def test_json_lines_numbers_lines_as_the_file_does_and_names_the_bad_one(tmp_path):
    class ToolFileProblem(Exception):
        pass

    path = tmp_path / "small.jsonl"
    path.write_text('{"a": 1}\n\n  \n[2]\n"x"\n', encoding="utf-8")
    assert list(jsonl.json_lines(path)) == [(1, {"a": 1}), (4, [2]), (5, "x")]
    path.write_text('{"a": 1}\n\n{"b": \n', encoding="utf-8")
    with pytest.raises(ToolFileProblem, match=rf"^{path}:3: invalid JSON: Expecting value \(column 7\)$"):
        list(jsonl.json_lines(path, ToolFileProblem))


def test_pretrain_chunks_keep_every_token(tmp_path, tokenizer, cache_dir):
    assert pretrain_chunks([10, 11, 12, 13], 1, 2, 2) == [([1, 10], [10, 11]), ([11, 12], [12, 13]), ([13], [2])]
    text = " ".join(f"word{i} 你好" for i in range(200))
    path = write_jsonl(tmp_path / "pretrain.jsonl", [{"text": text}, {"text": "short"}])
    ds = build_dataset("pretrain", path, tokenizer, 16, packing=False, cache_dir=cache_dir)
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    chunks = [row[0] for row in ds][:-1]  # file order; the last row is the short document
    assert all(len(c["input_ids"]) == len(c["labels"]) <= 16 for c in chunks)
    assert sum((c["input_ids"] for c in chunks), []) == [tokenizer.bos_token_id] + tokens
    assert sum((c["labels"] for c in chunks), []) == tokens + [tokenizer.eos_token_id]
    assert ds.stats.n_samples == len(chunks) + 1 and ds.stats.n_truncated == 0


def test_sft_labels_cover_assistant_replies_only(tmp_path, tokenizer, cache_dir):
    conversation = chat(("What is 2+2?", "<think>\n2+2=4\n</think>\n<answer>\n4\n</answer>"),
                        ("And in words?", "Four, 四."), system="You are MiniMind.")
    path = write_jsonl(tmp_path / "sft.jsonl", [{"conversations": conversation}])
    (sample,) = build_dataset("sft", path, tokenizer, 512, cache_dir=cache_dir)[0]

    full = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    assert sample["input_ids"] == full[:-1] and len(sample["labels"]) == len(full) - 1
    # what each reply writes after its generation prompt: the reasoning after the opened "<think>\n" (the think
    # block is written MiniMind-3's way, a blank line before the answer), the plain reply after an empty think block
    assert label_runs(tokenizer, sample) == ["2+2=4\n</think>\n\n<answer>\n4\n</answer><|im_end|>", "Four, 四.<|im_end|>"]
    assert all(label in (IGNORE_INDEX, token) for label, token in zip(sample["labels"], full[1:]))


def test_truncation_is_counted_and_empty_samples_dropped(tmp_path, tokenizer, cache_dir):
    long = " ".join(f"w{i}" for i in range(100))
    lines = [{"conversations": chat((long, "ok"))},  # the reply falls past the cut: dropped
             {"conversations": chat(("hi", long))},  # cut inside the reply: kept
             {"conversations": chat(("hi", "ok"))}]
    path = write_jsonl(tmp_path / "sft.jsonl", lines)
    with pytest.warns(DataWarning, match="truncated 2 of 3 conversations to 32 positions; dropped 1"):
        ds = build_dataset("sft", path, tokenizer, 32, packing=False, cache_dir=cache_dir)
    assert (ds.stats.n_truncated, ds.stats.n_dropped, ds.stats.n_samples) == (2, 1, 2)
    lengths = sorted(len(row[0]["input_ids"]) for row in ds)
    assert lengths[-1] == 32 and lengths[0] < 32


def test_dpo_pairs_label_final_reply_only(tmp_path, tokenizer, cache_dir):
    prompt = chat(("Hi", "Hello!"))
    records = [{"chosen": prompt + chat(("Name?", "I am MiniMind.")), "rejected": prompt + chat(("Name?", "No."))},
               {"chosen": chat(("2+2?", "4")), "rejected": chat(("2+2?", "5"))}]
    path = write_jsonl(tmp_path / "dpo.jsonl", records)
    ds = build_dataset("dpo", path, tokenizer, 256, cache_dir=cache_dir)
    assert len(ds) == 2
    chosen, rejected = ds[0]
    assert label_runs(tokenizer, chosen) == ["I am MiniMind.<|im_end|>"]
    assert label_runs(tokenizer, rejected) == ["No.<|im_end|>"]

    batch = DPOCollator(tokenizer.pad_token_id, 256)([ds[0], ds[1]])
    assert batch["input_ids"].shape[0] == 4 and batch["num_items"] == 2 and batch["attention_mask"] is None
    for b, sample in enumerate([ds[0][0], ds[1][0], ds[0][1], ds[1][1]]):
        assert batch["input_ids"][b, :len(sample["input_ids"])].tolist() == sample["input_ids"]


def test_best_fit_decreasing_places_every_sample_once():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(1, 40), rng.randint(200, 512)]) for _ in range(3000)]
    rows = best_fit_decreasing(lengths, 512)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert max(sum(lengths[i] for i in row) for row in rows) <= 512
    lower_bound = max(-(-sum(lengths) // 512), sum(n > 256 for n in lengths))  # no two of those share a row
    assert lower_bound / len(rows) >= 0.9
    assert rows == best_fit_decreasing(lengths, 512)
    with pytest.raises(ValueError):
        best_fit_decreasing([513], 512)


@pytest.mark.filterwarnings("ignore::dataset.stats.DataWarning")  # truncation is expected here
def test_packed_dataset_holds_every_sample_once(tmp_path, tokenizer, cache_dir):
    rng = random.Random(1)
    lines = [{"conversations": chat((f"question {i} " * rng.randint(1, 20), f"answer {i} " * rng.randint(1, 30)))}
             for i in range(300)]
    path = write_jsonl(tmp_path / "sft.jsonl", lines)
    unpacked = build_dataset("sft", path, tokenizer, 128, packing=False, cache_dir=cache_dir)
    packed = build_dataset("sft", path, tokenizer, 128, packing=True, cache_dir=cache_dir)
    every = Counter(sample_key(row[0]) for row in unpacked)
    assert Counter(sample_key(s) for row in packed for s in row) == every
    assert all(sum(len(s["input_ids"]) for s in row) <= 128 for row in packed)
    assert len(packed) < len(unpacked) and packed.stats.n_rows == len(packed)
    assert packed.stats.n_label_tokens == sum(l != IGNORE_INDEX for row in packed for s in row for l in s["labels"])


def test_collator_positions_and_block_causal_mask():
    def sample(*ids):
        return {"input_ids": list(ids), "labels": [i + 100 for i in ids[:-1]] + [IGNORE_INDEX]}

    collate = PackedBatchCollator(pad_id=0, max_seq_len=8)
    batch = collate([[sample(5, 6, 7), sample(8, 9)], [sample(3, 4, 5, 6)]])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [3, 4, 5, 6, 0]]
    assert batch["labels"].tolist() == [[105, 106, -100, 108, -100], [103, 104, 105, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert batch["num_items"] == 6 and isinstance(batch["num_items"], int)
    assert batch["loss_positions"].tolist() == [0, 1, 3, 5, 6, 7]  # flat b * 5 + t of the labelled positions
    expected = torch.tensor([
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]],
        [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 1]],
    ], dtype=torch.bool)
    assert batch["attention_mask"].dtype == torch.bool
    assert torch.equal(batch["attention_mask"], expected[:, None])

    single = PackedBatchCollator(pad_id=0, max_seq_len=8, pad_to_max=True)([[sample(5, 6)], [sample(1, 2, 3)]])
    assert single["attention_mask"] is None and single["input_ids"].shape == (2, 8)
    with pytest.raises(ValueError):
        collate([[sample(*range(9))]])


def test_tokenized_cache_is_reused_and_invalidated_by_edits(tmp_path, tokenizer, cache_dir, monkeypatch):
    calls = Counter()

    def counting(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(samples, "tokenize_batch", counting("tokenize", samples.tokenize_batch))
    monkeypatch.setattr(jsonl, "iter_lines", counting("read", jsonl.iter_lines))
    path = write_jsonl(tmp_path / "sft.jsonl", [GOOD["sft"]] * 5)

    first = build_dataset("sft", path, tokenizer, 64, cache_dir=cache_dir)
    assert calls == {"read": 1, "tokenize": 1}
    second = build_dataset("sft", path, tokenizer, 64, cache_dir=cache_dir)
    assert calls == {"read": 1, "tokenize": 1}
    assert second.samples.cache_files == first.samples.cache_files
    assert [second[i] for i in range(len(second))] == [first[i] for i in range(len(first))]

    build_dataset("sft", path, tokenizer, 32, cache_dir=cache_dir)  # new length: records reused
    assert calls == {"read": 1, "tokenize": 2}

    write_jsonl(path, [GOOD["sft"]] * 6)
    edited = build_dataset("sft", path, tokenizer, 64, cache_dir=cache_dir)
    assert calls == {"read": 2, "tokenize": 3}
    assert edited.stats.n_records == 6


def test_streaming_yields_the_same_samples(tmp_path, tokenizer, cache_dir):
    rng = random.Random(2)
    lines = [{"text": " ".join(f"t{j}" for j in range(rng.randint(1, 120)))} for _ in range(200)]
    path = write_jsonl(tmp_path / "pretrain.jsonl", lines)
    mapped = build_dataset("pretrain", path, tokenizer, 64, cache_dir=cache_dir)
    every = Counter(sample_key(s) for row in mapped for s in row)

    streamed = build_dataset("pretrain", path, tokenizer, 64, streaming=True, buffer_size=50)
    rows = list(streamed)
    assert Counter(sample_key(s) for row in rows for s in row) == every
    assert all(sum(len(s["input_ids"]) for s in row) <= 64 for row in rows)
    assert streamed.stats.n_samples == mapped.stats.n_samples and streamed.stats.n_rows == len(rows)

    shards = [Counter(sample_key(s) for row in build_dataset("pretrain", path, tokenizer, 64, streaming=True,
                                                             rank=rank, world_size=2) for s in row)
              for rank in (0, 1)]
    # Equal multisets: no sample is seen by both ranks and none is lost.
    assert shards[0] + shards[1] == every and shards[0] and shards[1]

    loader = torch.utils.data.DataLoader(streamed, batch_size=None, num_workers=2)  # workers shard too
    assert Counter(sample_key(s) for row in loader for s in row) == every


def test_streaming_validates_on_the_fly(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "dpo.jsonl", [GOOD["dpo"], {"chosen": []}, GOOD["dpo"]])
    with pytest.raises(DataError, match=rf"^{path}:2: chosen: empty"):
        list(build_dataset("dpo", path, tokenizer, 64, streaming=True))
    streamed = build_dataset("dpo", path, tokenizer, 64, streaming=True, skip_bad_lines=True)
    with pytest.warns(DataWarning, match="skipped 1 bad line in"):
        pairs = list(streamed)
    assert len(pairs) == 2 and streamed.stats.n_bad_lines == 1
    assert label_runs(tokenizer, pairs[0][1]) == ["go away<|im_end|>"]


@pytest.mark.skipif(not (MODEL_DIR / "modeling_minimind.py").exists(), reason="model/modeling_minimind.py not written yet")
def test_packed_batch_gives_the_same_loss_as_unpacked_rows():
    from model import MiniMindConfig, MiniMindForCausalLM

    torch.manual_seed(0)
    model = MiniMindForCausalLM(MiniMindConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                               num_key_value_heads=2, vocab_size=6400)).float().eval()
    rng = random.Random(3)
    lengths = [37, 5, 20, 61, 1, 12, 44, 9]
    sample_list = [{"input_ids": [rng.randrange(6400) for _ in range(n)],
                    "labels": [rng.choice([IGNORE_INDEX, rng.randrange(6400)]) for _ in range(n)]}
                   for n in lengths]
    rows = [[sample_list[i] for i in row] for row in best_fit_decreasing(lengths, 64)]
    assert any(len(row) > 1 for row in rows)

    def summed_loss(batch):
        with torch.no_grad():
            logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                           position_ids=batch["position_ids"]).logits
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).double(), batch["labels"].flatten(),
                                                 ignore_index=IGNORE_INDEX, reduction="sum")

    collate = PackedBatchCollator(pad_id=0, max_seq_len=64)
    packed_batch = collate(rows)
    unpacked_batch = collate([[s] for s in sample_list])
    assert packed_batch["num_items"] == unpacked_batch["num_items"]
    packed, unpacked = summed_loss(packed_batch), summed_loss(unpacked_batch)
    assert abs(packed - unpacked) <= 1e-5 * abs(unpacked)


@pytest.mark.filterwarnings("ignore::dataset.stats.DataWarning")  # the kit has conversations longer than the rows
@pytest.mark.parametrize("name,max_seq_len", [("sft", 512), ("reason", 1024)])
def test_packing_fills_rows_on_the_data_kit(data_kit, tokenizer, cache_dir, name, max_seq_len):
    ds = build_dataset("sft", data_kit / f"{name}.jsonl", tokenizer, max_seq_len, cache_dir=cache_dir)
    stats = ds.stats
    ideal_rows = -(-stats.n_positions // max_seq_len)
    assert stats.n_bad_lines == 0 and stats.n_samples + stats.n_dropped == stats.n_records
    assert ideal_rows / stats.n_rows >= 0.9 and stats.fill >= 0.9
    placed = sorted(i for row in ds.rows for i in row)
    assert len(placed) == len(set(placed)) == stats.n_samples


def test_line_ranges_cut_at_line_starts_and_number_lines(tmp_path):
    path = tmp_path / "f.jsonl"
    lines = [f'{{"text": "{"x" * (i % 7)}"}}' for i in range(50)]
    path.write_text("\n".join(lines[:20]) + "\n\n" + "\n".join(lines[20:]) + "\n", encoding="utf-8")  # a blank line
    data = path.read_bytes()
    for n in (1, 2, 3, 7, 200):
        ranges = jsonl.line_ranges(path, n)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(data) and len(ranges) <= n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # contiguous, no overlap
        for start, _, first_line in ranges:
            assert start == 0 or data[start - 1:start] == b"\n"
            assert first_line == data[:start].count(b"\n") + 1
        pieces = [list(jsonl.iter_lines(path, "pretrain", *r)) for r in ranges]
        assert [x for p in pieces for x in p] == list(jsonl.iter_lines(path, "pretrain"))


@pytest.mark.filterwarnings("ignore::dataset.stats.DataWarning")
def test_num_proc_gives_the_same_dataset_and_bad_line_numbers(tmp_path, tokenizer):
    rng = random.Random(3)
    good = [GOOD["sft"], {"conversations": [{"role": "user", "content": "hi " * rng.randint(1, 30)},
                                            {"role": "assistant", "content": "ok " * rng.randint(1, 30)}]}]
    lines = [json.dumps(good[i % 2]) for i in range(120)]
    lines[77] = '{"conversations": 5}'
    lines[101] = "not json"
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    one = build_dataset("sft", path, tokenizer, 64, cache_dir=tmp_path / "c1", skip_bad_lines=True)
    two = build_dataset("sft", path, tokenizer, 64, cache_dir=tmp_path / "c2", skip_bad_lines=True, num_proc=2)
    assert one.stats.n_bad_lines == two.stats.n_bad_lines == 2
    assert [one[i] for i in range(len(one))] == [two[i] for i in range(len(two))]
    with pytest.raises(DataError, match=r"sft.jsonl:78: conversations"):
        build_dataset("sft", path, tokenizer, 64, cache_dir=tmp_path / "c3", num_proc=3)


def test_packed_layout_is_cached_with_the_samples(tmp_path, tokenizer, monkeypatch):
    from dataset import packing
    calls = Counter()
    pack = packing.best_fit_decreasing
    monkeypatch.setattr(packing, "best_fit_decreasing", lambda *a: calls.update(["pack"]) or pack(*a))
    rng = random.Random(4)
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "word " * rng.randint(1, 60)} for _ in range(80)])
    first = build_dataset("pretrain", path, tokenizer, 64, cache_dir=tmp_path / "c")
    second = build_dataset("pretrain", path, tokenizer, 64, cache_dir=tmp_path / "c")
    assert calls["pack"] == 1 and len(first) == len(second) > 1
    assert [first[i] for i in range(len(first))] == [second[i] for i in range(len(second))]
    build_dataset("pretrain", path, tokenizer, 64, cache_dir=tmp_path / "c", seed=5)  # another row order: packed anew
    assert calls["pack"] == 2
