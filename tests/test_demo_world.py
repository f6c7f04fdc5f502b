"""The demo world's held-out questions: never in a training file, answerable from it."""
import json

from dataset.demo import CAPITALS, COLOURS, IDENTITY_HELD_OUT, held_out_fact_questions, make_demo_data, words
from dataset.prompts import read_questions


def user_turns(path):
    turns = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for conv in [record.get("conversations"), record.get("chosen")]:
            turns |= {t["content"] for t in conv or [] if t["role"] == "user"}
    return turns


def test_held_out_questions_are_new_phrasings_of_trained_facts(tmp_path):
    demo = make_demo_data(tmp_path, seed=0, scale=0.3)
    trained = set().union(*(user_turns(demo[k]) for k in ("sft", "lora_identity", "dpo", "reason")))
    answers = set()
    for line in demo["sft"].read_text(encoding="utf-8").splitlines():
        answers |= {t["content"] for t in json.loads(line)["conversations"] if t["role"] == "assistant"}

    facts = read_questions(demo["heldout"], "fact")
    assert len(facts) == 2 * (len(CAPITALS) + len(COLOURS)) and facts == [(q["prompt"], q["answer"]) for q in held_out_fact_questions()]
    assert not {q for q, _ in facts} & trained and not set(IDENTITY_HELD_OUT) & trained
    assert {a for _, a in facts} <= answers  # the exact answer is the sentence SFT teaches for that fact
    sums = read_questions(demo["heldout"], "sum")
    assert len(sums) == len(set(sums)) >= 10
    for question, answer in sums:
        a, b = (int(w) for w in question.removeprefix("What is ").removesuffix("?").split(" plus "))
        assert answer == f"{a} plus {b} is {a + b}."
    # every fact is trained in more than one phrasing (English), so the held-out one is not the only variation
    for country, *_ in CAPITALS[:3]:
        assert len({q for q in trained if q.endswith(f"capital of {country}?") or q.endswith(f"capital of {country}.")}) >= 2


def test_words_split_latin_words_and_cjk_characters():
    assert words("I am MiniMind, 3 + 4 = 7.") == ["i", "am", "minimind"]
    assert words("我是MiniMind。") == ["我", "是", "minimind"]


def test_an_answer_reads_as_a_sentence_only_with_known_words_in_one_script():
    from inference.report import reads_as_sentence

    vocabulary = set(words("I am MiniMind, a small model. 我是MiniMind，一个小型模型。"))
    assert reads_as_sentence("I am MiniMind, a small model.", vocabulary, "MiniMind")
    assert reads_as_sentence("我是MiniMind，一个小型模型。", vocabulary, "MiniMind")
    assert not reads_as_sentence("I am MiniMind BiniM model.", vocabulary, "MiniMind")  # a broken word
    assert not reads_as_sentence("I是MiniMind，一个", vocabulary, "MiniMind")  # two scripts
    assert not reads_as_sentence("", vocabulary, "MiniMind") and not reads_as_sentence("3 + 4", vocabulary)
