"""Tests for the committed tokenizer in model/ and for scripts/train_tokenizer.py."""

import json
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from conftest import command
from dataset import tokenizer_training

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = REPO_ROOT / "model"
SCRIPT = REPO_ROOT / "scripts" / "train_tokenizer.py"

TAGS = ["<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]


def _load_script_module():
    """The library functions and the command's own (build_parser, main) in one namespace."""
    return SimpleNamespace(**{**vars(tokenizer_training), **command("train_tokenizer")})


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(MODEL_DIR))


def test_files_present():
    assert (MODEL_DIR / "tokenizer.json").is_file()
    cfg = json.loads((MODEL_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["model_max_length"] == 32768
    assert cfg["add_bos_token"] is False and cfg["add_eos_token"] is False
    assert "{% generation %}" in cfg["chat_template"].replace("{%-", "{%").replace("-%}", "%}")


def test_vocab_and_special_ids(tok):
    assert len(tok) == 6400
    assert tok.vocab_size == 6400
    assert tok.pad_token == tok.unk_token == "<|endoftext|>"
    assert tok.bos_token == "<|im_start|>" and tok.eos_token == "<|im_end|>"
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 0, 1, 2)
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tok.model_max_length == 32768
    assert sorted(tok.all_special_ids) == [0, 1, 2]


def test_no_bos_eos_added_by_default(tok):
    ids = tok("hello 你好")["input_ids"]
    assert ids == tok.encode("hello 你好", add_special_tokens=False)
    assert 1 not in ids and 2 not in ids
    # special tokens written in the text are single ids
    assert tok.encode("<|im_start|>x<|im_end|>", add_special_tokens=False)[0] == 1
    assert tok.encode("<|im_start|>x<|im_end|>", add_special_tokens=False)[-1] == 2


@pytest.mark.parametrize("tid,tag", list(enumerate(TAGS, start=3)))
def test_tags_are_single_ids_and_survive_skip_special(tok, tid, tag):
    assert tok.convert_tokens_to_ids(tag) == tid
    assert tok.convert_ids_to_tokens(tid) == tag
    for text in (f"a{tag}\nb", f"{tag}", f"word{tag}word", f"中文{tag}中文", f" {tag} "):
        ids = tok.encode(text, add_special_tokens=False)
        assert ids.count(tid) == 1, (text, tok.convert_ids_to_tokens(ids))
        assert tok.decode(ids) == text
        assert tok.decode(ids, skip_special_tokens=True) == text
    # the ChatML tokens are dropped by skip_special_tokens, the tags are not
    ids = tok.encode(f"<|im_start|>assistant\n{tag}x<|im_end|><|endoftext|>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == f"assistant\n{tag}x"


def test_reasoning_answer_keeps_tags(tok):
    text = "<think>\n先算 16-3-4=9。\n</think>\n<answer>\n18\n</answer>"
    ids = tok.encode(text, add_special_tokens=False)
    assert [i for i in ids if i in (3, 4, 5, 6)] == [3, 4, 5, 6]
    assert tok.decode(ids + [2], skip_special_tokens=True) == text


ROUND_TRIP = [
    "Hello, world! MiniMind 是一个从零开始训练的小型语言模型。",
    "繁體中文：臺灣的資訊工程學系。《詩經》關關雎鳩，在河之洲。",
    "emoji 🤖🚀👍🏽👨‍👩‍👧 flags 🇨🇳🇺🇸 math ∑∫√½ “quotes” 'single' — dash… ellipsis",
    "  leading spaces\ttabs\r\nCRLF\n\n\n   trailing   ",
    "\u200b zero width \ufeff BOM \u00a0 nbsp \u3000 全角空格 ",
    "Ünïcödé façade naïve; 日本語のテキスト; 한국어 텍스트; кириллица; العربية",
    "def f(x):\n    return {'a': [1, 2, 3]} ** 2  # code\n",
    "12345678901234567890 3.14159 -0.5e-10 ￥100 $5",
    "",
    " ",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_exact_round_trip(tok, text):
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert all(0 <= i < 6400 for i in ids)


def test_round_trip_all_bytes(tok):
    text = "".join(chr(c) for c in range(1, 0x800)) + "".join(chr(c) for c in range(0x4E00, 0x4E00 + 500))
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


MULTI_TURN = [
    {"role": "system", "content": "你是一个乐于助人的助手。"},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello, how can I help?"},
    {"role": "user", "content": "1+1=?"},
    {"role": "assistant", "content": "<think>\n简单\n</think>\n<answer>\n2\n</answer>"},
]

EXPECTED_MULTI_TURN = (
    "<|im_start|>system\n你是一个乐于助人的助手。<|im_end|>\n"
    "<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\nHello, how can I help?<|im_end|>\n"  # an empty think block
    "<|im_start|>user\n1+1=?<|im_end|>\n"
    # an inline MiniMind2 reply: the think block is written MiniMind-3's way, one blank line before the answer
    "<|im_start|>assistant\n<think>\n简单\n</think>\n\n<answer>\n2\n</answer><|im_end|>\n"
)


def test_chat_template_multi_turn_string(tok):
    assert tok.apply_chat_template(MULTI_TURN, tokenize=False) == EXPECTED_MULTI_TURN
    # without a system message nothing is inserted
    assert tok.apply_chat_template(MULTI_TURN[1:], tokenize=False) == EXPECTED_MULTI_TURN.split("\n", 2)[2]


def test_chat_template_ids_match_plain_encoding(tok):
    out = tok.apply_chat_template(MULTI_TURN, tokenize=True, return_dict=True)
    assert out["input_ids"] == tok.encode(EXPECTED_MULTI_TURN, add_special_tokens=False)
    assert out["input_ids"][0] == 1 and out["input_ids"][-2:] == [2, tok.encode("\n", add_special_tokens=False)[0]]


def test_generation_prompt(tok):
    msgs = [{"role": "user", "content": "你好"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == "<|im_start|>user\n你好<|im_end|>\n"
    # thinking off by default: the prompt closes an empty think block; open_thinking=True opens one
    assert (
        tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, add_generation_prompt=True,
                                  open_thinking=True)["input_ids"]
    assert tok.decode(ids) == "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n<think>\n"


def test_assistant_tokens_mask_two_turns(tok):
    msgs = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "再问一次"},
        {"role": "assistant", "content": "<think>\n还是四\n</think>\n<answer>\n4\n</answer>"},
    ]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask) and set(mask) == {0, 1}

    # contiguous masked runs, one per assistant message
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    # what the assistant writes after the prompt that asks for its turn: the content (thinking off), or the
    # reasoning after the opened "<think>\n" and then the answer (thinking on)
    assert [tok.decode(r) for r in runs] == [
        "It is 4.<|im_end|>",
        "还是四\n</think>\n\n<answer>\n4\n</answer><|im_end|>",
    ]
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == (
        "It is 4.<|im_end|>还是四\n</think>\n\n<answer>\n4\n</answer><|im_end|>"
    )
    # the unmasked tokens are the prompts, the assistant headers with the think-block openings the generation
    # prompt writes (an empty block, or "<think>\n"), and the newlines after <|im_end|>
    assert tok.decode([i for i, m in zip(ids, mask) if not m]) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n\n"
        "<|im_start|>user\n再问一次<|im_end|>\n<|im_start|>assistant\n<think>\n\n"
    )
    assert mask[-1] == 0 and mask[-2] == 1 and ids[-2] == 2


def test_language_classifier():
    mod = _load_script_module()
    assert mod.text_language("这是一段很长的中文句子，里面只有 AI 两个字母") == "zh"
    assert mod.text_language("This is English with 两个 characters") == "en"
    assert mod.text_language("12345 !!!") is None


def test_help_documents_every_flag():
    mod = _load_script_module()
    parser = mod.build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, action.option_strings
    text = parser.format_help()
    for flag in ("--data", "--out_dir", "--vocab_size", "--report_data", "--no_report", "--report_only"):
        assert flag in text


def _write_small_corpus(d: Path):
    rng = random.Random(0)
    en_words = (
        "the quick brown fox jumps over lazy dog model token train data small language "
        "python test byte pair encoding merge vocabulary text sample output input"
    ).split()
    zh_chars = (
        "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所"
        "民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日"
        "那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想"
        "已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指"
        "几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权"
        "收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集"
        "温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支"
        "般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属"
        "圆包火住调满县局照参红细引听该铁价严"
    )
    pre = d / "pretrain.jsonl"
    with open(pre, "w", encoding="utf-8") as f:
        for _ in range(150):
            f.write(json.dumps({"text": " ".join(rng.choice(en_words) for _ in range(30))}, ensure_ascii=False) + "\n")
            f.write(json.dumps({"text": "".join(rng.choice(zh_chars) for _ in range(60))}, ensure_ascii=False) + "\n")
    sft = d / "sft.jsonl"
    with open(sft, "w", encoding="utf-8") as f:
        for k in range(50):
            conv = [
                {"role": "user", "content": f"问题 {k}: " + "".join(rng.choice(zh_chars) for _ in range(10))},
                {
                    "role": "assistant",
                    "content": "<think>\nhmm\n</think>\n<answer>\n" + rng.choice(en_words) + "\n</answer>",
                },
            ]
            f.write(json.dumps({"conversations": conv}, ensure_ascii=False) + "\n")
    return pre, sft


def test_train_script_small_vocab(tmp_path):
    pre, sft = _write_small_corpus(tmp_path)
    out = tmp_path / "tok"
    res = subprocess.run(
        [
            sys.executable, str(SCRIPT),
            "--data", str(pre), str(sft),
            "--vocab_size", "400",
            "--out_dir", str(out),
            "--report_data", str(pre),
            "--quiet",
        ],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path),
    )
    assert res.returncode == 0, res.stderr
    assert "chars/token" in res.stdout and "zh:" in res.stdout and "en:" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]

    small = AutoTokenizer.from_pretrained(str(out))
    assert len(small) == 400
    assert (small.pad_token_id, small.unk_token_id, small.bos_token_id, small.eos_token_id) == (0, 0, 1, 2)
    assert small.convert_tokens_to_ids(TAGS) == list(range(3, 11))
    text = "<think>\nx\n</think>\n<answer>\n混合 text 🚀\n</answer>"
    ids = small.encode(text, add_special_tokens=False)
    assert ids[0] == 3 and small.decode(ids, skip_special_tokens=True) == text
    prompt = small.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

    # same input -> byte-identical files
    out2 = tmp_path / "tok2"
    mod = _load_script_module()
    assert mod.main(["--data", str(pre), str(sft), "--vocab_size", "400", "--out_dir", str(out2),
                     "--no_report", "--no_verify", "--quiet"]) == 0
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (out2 / name).read_bytes()

    # the report function on the small corpus: 150 zh and 150 en lines
    stats = mod.compression_stats(out, pre)
    assert stats["zh"]["lines"] == 150 and stats["en"]["lines"] == 150
    assert stats["en"]["chars_per_token"] > 1.0 and stats["zh"]["chars_per_token"] > 0.3
