"""Write the demo corpus: small, deterministic jsonl files in every format the stages read.

The text is generated from a few templates over a fixed world (countries and capitals, colours of things,
small sums), so a model of a few million parameters can learn it on a CPU in minutes and the pipeline can
check that it did: facts recalled after SFT, an identity learned by a LoRA adapter (tested on phrasings that
are not in its training file), correct answers preferred after DPO, well-formed <think>/<answer> replies, and
(in MiniMind-3's format, trained with the reasoning stage) tool calls that run and a thinking switch obeyed.

  python scripts/make_demo_data.py --out_dir data/demo

`write_demo_heldout` draws fresh held-out samples of the same world (the evaluation report's demo data).
"""
import json
import random
import re
from pathlib import Path

CAPITALS = [
    ("France", "Paris", "法国", "巴黎"), ("Japan", "Tokyo", "日本", "东京"), ("Italy", "Rome", "意大利", "罗马"),
    ("Germany", "Berlin", "德国", "柏林"), ("Spain", "Madrid", "西班牙", "马德里"), ("China", "Beijing", "中国", "北京"),
    ("Egypt", "Cairo", "埃及", "开罗"), ("Russia", "Moscow", "俄罗斯", "莫斯科"), ("Canada", "Ottawa", "加拿大", "渥太华"),
    ("Kenya", "Nairobi", "肯尼亚", "内罗毕"), ("Peru", "Lima", "秘鲁", "利马"), ("Greece", "Athens", "希腊", "雅典"),
]
COLOURS = [
    ("the sky", "blue", "天空", "蓝色"), ("grass", "green", "草", "绿色"), ("snow", "white", "雪", "白色"),
    ("coal", "black", "煤", "黑色"), ("a banana", "yellow", "香蕉", "黄色"), ("a tomato", "red", "番茄", "红色"),
    ("an orange", "orange", "橙子", "橙色"), ("a plum", "purple", "李子", "紫色"),
]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]

IDENTITY_NAME = "MiniMind"
IDENTITY_ANSWER_EN = f"I am {IDENTITY_NAME}, a small language model trained from scratch on this computer."
IDENTITY_ANSWER_ZH = f"我是{IDENTITY_NAME}，一个在这台电脑上从零训练的小型语言模型。"
# 39 phrasings: with the first 29 the adapter named itself in 8 or 9 of the 10 held-out phrasings, depending on
# float-rounding differences in the base model; with these 39, in 9 of 10 on both bases tried
IDENTITY_TRAIN = ["Who are you?", "What is your name?", "Introduce yourself.", "Tell me who you are.",
                  "What should I call you?", "Are you a person?", "What are you?", "Please introduce yourself.",
                  "What's your name?", "Who is this?", "Do you have a name?", "Who am I chatting with?",
                  "Tell me your name.", "Say who you are.", "Who made you?", "Are you a robot?",
                  "Who are you, please?", "Tell me about yourself.", "What kind of model are you?", "Your name?",
                  "Who am I speaking with?", "May I know your name?", "Can you say who you are?",
                  "Tell me your name, please.", "Would you introduce yourself?", "How should I call you?",
                  "What are you called?", "Who is talking?",
                  "你是谁？", "你叫什么名字？", "请介绍一下你自己。", "你是什么？", "我该怎么称呼你？",
                  "你的名字是什么？", "请问你是谁？", "你是人吗？", "介绍一下你自己。", "你是哪位？", "能介绍一下你自己吗？"]
# held out: never in the training file; the demo checks the adapter answers these with its name
IDENTITY_HELD_OUT = ["Who am I talking to?", "Can you tell me your name?", "Introduce yourself, please.", "你到底是谁？",
                     "What is your name, please?", "Who are you exactly?", "Could you introduce yourself?",
                     "What do I call you?", "Please tell me who you are.", "你叫什么？"]

# Fact questions are asked in several phrasings; the held-out phrasings are never in a training file, so the
# fact accuracy the report measures (answer == the fact's answer sentence) is recall, not an echo of a seen line.
CAPITAL_QUESTIONS = ["What is the capital of {}?", "Which city is the capital of {}?", "Name the capital of {}."]
CAPITAL_QUESTIONS_ZH = ["{}的首都是哪里？", "{}的首都是哪个城市？"]
COLOUR_QUESTIONS = ["What colour is {}?", "What is the colour of {}?", "Which colour is {}?"]
COLOUR_QUESTIONS_ZH = ["{}是什么颜色的？", "{}是什么颜色？"]
HELD_OUT_QUESTIONS = {"capital": "What city is the capital of {}?", "capital_zh": "请问{}的首都是哪里？",
                      "colour": "Which colour does {} have?", "colour_zh": "请问{}是什么颜色的？"}


def world_facts(rng):
    """(question, answer, statement) triples in English and Chinese, each fact in one of its training phrasings
    (drawn with rng)."""
    facts = []
    for country, city, country_zh, city_zh in CAPITALS:
        facts.append((rng.choice(CAPITAL_QUESTIONS).format(country), f"The capital of {country} is {city}.",
                      f"The capital of {country} is {city}."))
        facts.append((rng.choice(CAPITAL_QUESTIONS_ZH).format(country_zh), f"{country_zh}的首都是{city_zh}。",
                      f"{country_zh}的首都是{city_zh}。"))
    for thing, colour, thing_zh, colour_zh in COLOURS:
        facts.append((rng.choice(COLOUR_QUESTIONS).format(thing), f"{thing[0].upper() + thing[1:]} is {colour}.",
                      f"{thing[0].upper() + thing[1:]} is {colour}."))
        facts.append((rng.choice(COLOUR_QUESTIONS_ZH).format(thing_zh), f"{thing_zh}是{colour_zh}的。",
                      f"{thing_zh}是{colour_zh}的。"))
    return facts


def held_out_fact_questions() -> list[dict]:
    """Every capital and colour of the world asked in a phrasing no training file uses, with the exact answer
    sentence the training data gives for that fact: [{"kind": "fact", "prompt", "answer"}, ...]."""
    rows = []
    for country, city, country_zh, city_zh in CAPITALS:
        rows.append((HELD_OUT_QUESTIONS["capital"].format(country), f"The capital of {country} is {city}."))
        rows.append((HELD_OUT_QUESTIONS["capital_zh"].format(country_zh), f"{country_zh}的首都是{city_zh}。"))
    for thing, colour, thing_zh, colour_zh in COLOURS:
        rows.append((HELD_OUT_QUESTIONS["colour"].format(thing), f"{thing[0].upper() + thing[1:]} is {colour}."))
        rows.append((HELD_OUT_QUESTIONS["colour_zh"].format(thing_zh), f"{thing_zh}是{colour_zh}的。"))
    return [{"kind": "fact", "prompt": q, "answer": a} for q, a in rows]


def sum_questions(n: int = 20, seed: int = 7) -> list[dict]:
    """n sums a + b (single digits) in the training phrasing, with their answer sentence; a model this size
    learns the table of 100 sums by heart or not at all, so these measure how much of it it holds."""
    rng = random.Random(seed)
    pairs = rng.sample([(a, b) for a in range(10) for b in range(10)], n)
    return [{"kind": "sum", "prompt": f"What is {a} plus {b}?", "answer": f"{a} plus {b} is {a + b}."} for a, b in pairs]


WORD = re.compile(r"[A-Za-z]+|[\u3400-\u9fff]")


def words(text: str) -> list[str]:
    """The words of a text for the "reads as a sentence" check: Latin-letter runs (lower-cased) and single CJK
    characters; digits and punctuation are not words."""
    return [w.lower() for w in WORD.findall(text)]


def sums(rng, n):
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        out.append((a, b))
    return out


def pretrain_lines(rng, n):
    facts = world_facts(rng)
    lines = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            picked = rng.sample(facts, 3)
            lines.append(" ".join(f[2] for f in picked if f[2].isascii()) or picked[0][2])
        elif kind < 0.7:
            picked = [f for f in rng.sample(facts, 4) if not f[2].isascii()]
            lines.append("".join(f[2] for f in picked) or facts[1][2])
        else:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            lines.append(f"{NUMBER_WORDS[a].capitalize()} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}. "
                         f"{a} + {b} = {a + b}.")
    return [{"text": t} for t in lines]


def conversation(*turns):
    return {"conversations": [{"role": r, "content": c} for r, c in zip(("user", "assistant") * 4, turns)]}


def sft_lines(rng, n):
    out = []
    for i in range(n):
        facts = world_facts(rng)  # each fact in a freshly drawn phrasing
        if i % 5 == 4:  # multi-turn
            (q1, a1, _), (q2, a2, _) = rng.sample(facts, 2)
            out.append(conversation(q1, a1, q2, a2))
        elif i % 3 == 0:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            out.append(conversation(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
        else:
            q, a, _ = rng.choice(facts)
            out.append(conversation(q, a))
    return out


def identity_lines(rng, repeats=4):
    out = []
    for _ in range(repeats):
        for q in IDENTITY_TRAIN:
            out.append(conversation(q, IDENTITY_ANSWER_ZH if not q.isascii() else IDENTITY_ANSWER_EN))
    rng.shuffle(out)
    return out


# Tone pairs: the same correct answer, closed helpfully or dismissively. SFT never shows either closing, so
# before DPO the model has no preference between them; DPO has to teach it (facts pairs alone are mostly known).
HELPFUL_CLOSINGS = ["Happy to help!", "Glad I could help.", "Ask me anything else!"]
DISMISSIVE_CLOSINGS = ["Stop asking me.", "Look it up yourself.", "Not my problem."]


def dpo_lines(rng, n):
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            country, city, _, _ = rng.choice(CAPITALS)
            wrong = rng.choice([c for c in CAPITALS if c[1] != city])[1]
            q, good, bad = f"What is the capital of {country}?", f"The capital of {country} is {city}.", f"The capital of {country} is {wrong}."
        else:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            wrong = a + b + rng.choice([-2, -1, 1, 2])
            q, good, bad = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a} plus {b} is {wrong}."
        if rng.random() < 0.5:  # a tone pair: the correct answer in both, only the closing differs
            good, bad = f"{good} {rng.choice(HELPFUL_CLOSINGS)}", f"{good} {rng.choice(DISMISSIVE_CLOSINGS)}"
        user = {"role": "user", "content": q}
        out.append({"chosen": [user, {"role": "assistant", "content": good}],
                    "rejected": [user, {"role": "assistant", "content": bad}]})
    return out


def reason_lines(rng, n):
    out = []
    for _ in range(n):
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        think = f"First {a} + {b} = {a + b}. Then {a + b} + {c} = {a + b + c}."
        reply = f"<think>\n{think}\n</think>\n<answer>\n{a + b + c}\n</answer>"
        out.append(conversation(f"Add {a}, {b} and {c}.", reply))
    return out


REASON_HELD_OUT = ["Add 2, 5 and 7.", "Add 9, 1 and 4.", "Add 3, 3 and 8.", "Add 6, 2 and 1."]


def write_jsonl(path: Path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def make_demo_data(out_dir, seed: int = 0, scale: float = 1.0) -> dict:
    """Write every demo file into out_dir; return {name: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    files = {
        "pretrain": (pretrain_lines(rng, int(4000 * scale)), "pretrain_hq.jsonl"),
        "sft": (sft_lines(rng, int(3000 * scale)), "sft_mini_512.jsonl"),
        "lora_identity": (identity_lines(rng), "lora_identity.jsonl"),
        "dpo": (dpo_lines(rng, int(600 * scale)), "dpo.jsonl"),
        "reason": (reason_lines(rng, int(1500 * scale)), "r1_mix_1024.jsonl"),
    }
    # the reasoning stage of the demo pipeline trains this mix: the reasoning file plus tool use and the thinking
    # switch, and plain chats from the SFT file replayed so that the stage does not forget how to chat (the
    # reasoning file alone stays as it was, for the stages and tests that read it)
    mix_rng = random.Random(seed + 7)
    replay = mix_rng.sample(files["sft"][0], min(len(files["sft"][0]), int(CHAT_REPLAY * scale)))
    files["reason_tools"] = (files["reason"][0] + tool_and_thinking_lines(mix_rng, scale) + replay,
                             "r1_tool_mix.jsonl")
    # the agent stage's tasks (train_agent.py): tool tasks with their reference answers, none of them a held-out task
    files["agent"] = (agent_task_lines(random.Random(seed + 11), int(AGENT_TASKS * scale) or 1), "agent_tasks.jsonl")
    paths = {}
    for name, (rows, filename) in files.items():
        write_jsonl(out_dir / filename, rows)
        paths[name] = out_dir / filename
    write_jsonl(out_dir / "heldout_prompts.jsonl", heldout_prompts())
    paths["heldout"] = out_dir / "heldout_prompts.jsonl"
    return paths


def heldout_prompts() -> list[dict]:
    """The prompts no training file holds: identity phrasings, reasoning sums, and fact and sum questions with
    their exact answers ({"kind", "prompt"[, "answer"]})."""
    return ([{"kind": "identity", "prompt": p} for p in IDENTITY_HELD_OUT]
            + [{"kind": "reason", "prompt": p} for p in REASON_HELD_OUT]
            + held_out_fact_questions() + sum_questions())


HELDOUT_FILES = {"text": "pretrain.jsonl", "chat": "sft.jsonl", "dpo": "dpo.jsonl", "prompts": "prompts.jsonl",
                 "tools": "tools.jsonl"}
DEMO_HELDOUT_SEED = 12345


def write_demo_heldout(folder, seed: int = DEMO_HELDOUT_SEED) -> dict:
    """Fresh samples of the demo world (scripts/make_demo_data.py) drawn with their own seeds, so no line is
    chosen the way the training files' were: pretrain.jsonl, sft.jsonl, dpo.jsonl, prompts.jsonl (the
    identity, reasoning and fact prompts that are never in the training files, and sum questions) and tools.jsonl
    (tool tasks and thinking prompts, scripts/eval_toolcall.py's format). Returns {name: path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "dpo": dpo_lines(random.Random(seed), 200),
        "text": pretrain_lines(random.Random(seed + 1), 200),
        "chat": sft_lines(random.Random(seed + 2), 200),
        "prompts": heldout_prompts(),
        "tools": tool_heldout_lines(random.Random(seed + 3)),
    }
    paths = {}
    for name, rows in files.items():
        paths[name] = folder / HELDOUT_FILES[name]
        write_jsonl(paths[name], rows)
    return paths


# ---------------------------------------------------------------- tool use and the thinking switch (MiniMind-3's format)
# Conversations in MiniMind-3's shape: the offered tools on the system turn, the assistant's `tool_calls`, the
# results as `tool` turns, and `reasoning_content` for replies that think. The tools are inference/tools.py's
# built-ins (the same names, arguments and result texts), so a trained model's calls run there unchanged.

TOOL_UNITS = [("km", "m", 1000), ("m", "cm", 100), ("kg", "g", 1000), ("h", "min", 60), ("min", "s", 60)]


def _tool_schemas(names):
    from inference.tools import BUILTIN_SCHEMAS  # the schemas the chat CLI and the server offer

    return [BUILTIN_SCHEMAS[n] for n in names]


def _tool_result(value) -> str:
    return json.dumps({"result": value}, ensure_ascii=False)


def _tool_task(rng, kind: str):
    """(question, [(call, result value)], final answer, [strings the answer must contain]) for one task."""
    if kind == "capital":
        country, city, _, _ = rng.choice(CAPITALS)
        q = rng.choice(["What is the capital of {}?", "Which city is the capital of {}?", "Look up the capital of {}."])
        return q.format(country), [({"name": "get_capital", "arguments": {"country": country}}, city)], \
            f"The capital of {country} is {city}.", [city]
    if kind == "colour":
        thing, colour, _, _ = rng.choice(COLOURS)
        q = rng.choice(["What colour is {}?", "Which colour does {} have?"])
        return q.format(thing), [({"name": "get_colour", "arguments": {"thing": thing}}, colour)], \
            f"{thing[0].upper() + thing[1:]} is {colour}.", [colour]
    if kind == "calculate":
        a, b = rng.randint(11, 99), rng.randint(11, 99)
        word, sign, value = rng.choice([("times", "*", a * b), ("plus", "+", a + b), ("minus", "-", a - b)])
        q = rng.choice(["What is {a} {w} {b}?", "Compute {a} {s} {b}.", "Calculate {a} {w} {b}."])
        return q.format(a=a, b=b, w=word, s=sign), \
            [({"name": "calculate", "arguments": {"expression": f"{a} {sign} {b}"}}, value)], \
            f"{a} {word} {b} is {value}.", [str(value)]
    if kind == "convert":
        source, target, factor = rng.choice(TOOL_UNITS)
        value = rng.randint(2, 40)
        q = rng.choice(["Convert {v} {f} to {t}.", "How many {t} is {v} {f}?"])
        return q.format(v=value, f=source, t=target), \
            [({"name": "convert_units", "arguments": {"value": value, "from_unit": source, "to_unit": target}},
              value * factor)], f"{value} {source} is {value * factor} {target}.", [str(value * factor)]
    if kind == "capital_and_colour":  # two steps: one lookup, then the other
        country, city, _, _ = rng.choice(CAPITALS)
        thing, colour, _, _ = rng.choice(COLOURS)
        return f"What is the capital of {country}, and what colour is {thing}?", \
            [({"name": "get_capital", "arguments": {"country": country}}, city),
             ({"name": "get_colour", "arguments": {"thing": thing}}, colour)], \
            f"The capital of {country} is {city}, and {thing} is {colour}.", [city, colour]
    if kind == "product_plus":  # two steps where the second call uses the first one's result
        a, b, c = rng.randint(11, 49), rng.randint(11, 49), rng.randint(11, 99)
        return f"What is {a} times {b}, plus {c}?", \
            [({"name": "calculate", "arguments": {"expression": f"{a} * {b}"}}, a * b),
             ({"name": "calculate", "arguments": {"expression": f"{a * b} + {c}"}}, a * b + c)], \
            f"{a} times {b}, plus {c}, is {a * b + c}.", [str(a * b + c)]
    raise ValueError(f"unknown tool task {kind!r}")


TOOL_TASKS = {"capital": 2, "colour": 1, "calculate": 3, "convert": 2, "capital_and_colour": 1, "product_plus": 1}


def _offered_tools(rng, calls) -> list[str]:
    """The functions a task needs plus one it does not, in random order: the model has to pick."""
    from inference.tools import BUILTIN_TOOLS

    needed = list(dict.fromkeys(call["name"] for call, _ in calls))
    names = needed + [rng.choice([n for n in BUILTIN_TOOLS if n not in needed])]
    rng.shuffle(names)
    return names


TOOL_SYSTEM_PROMPTS = ["", "You are a helpful assistant."]  # "": the tools block alone (MiniMind-3 allows it)


def tool_lines(rng, n) -> list[dict]:
    """Tool-use conversations: each step an assistant turn with one call, then its result as a tool turn, then the
    answer. About a fifth of the tasks take two steps. Tools are on the system turn as a JSON string, as in
    MiniMind-3's files."""
    kinds = [k for k, weight in TOOL_TASKS.items() for _ in range(weight)]
    out = []
    for _ in range(n):
        question, calls, answer, _ = _tool_task(rng, rng.choice(kinds))
        turns = [{"role": "system", "content": rng.choice(TOOL_SYSTEM_PROMPTS),
                  "tools": json.dumps(_tool_schemas(_offered_tools(rng, calls)), ensure_ascii=False)},
                 {"role": "user", "content": question}]
        for call, value in calls:
            turns.append({"role": "assistant", "content": "", "tool_calls": json.dumps([call], ensure_ascii=False)})
            turns.append({"role": "tool", "content": _tool_result(value)})
        turns.append({"role": "assistant", "content": answer})
        out.append({"conversations": turns})
    return out


def _thinking_task(rng):
    """(question, reasoning, answer, what the answer must contain)."""
    kind = rng.random()
    if kind < 0.5:
        a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
        return f"Add {a}, {b} and {c}.", f"First {a} + {b} = {a + b}. Then {a + b} + {c} = {a + b + c}.", \
            f"The sum is {a + b + c}.", str(a + b + c)
    if kind < 0.8:
        country, city, _, _ = rng.choice(CAPITALS)
        return f"What is the capital of {country}?", f"The question asks about {country}. Its capital city is {city}.", \
            f"The capital of {country} is {city}.", city
    thing, colour, _, _ = rng.choice(COLOURS)
    return f"What colour is {thing}?", f"The question asks about {thing}. It is {colour}.", \
        f"{thing[0].upper() + thing[1:]} is {colour}.", colour


def thinking_lines(rng, n) -> list[dict]:
    """The thinking switch: half the replies think (`reasoning_content`), half answer directly (no reasoning), on
    the same kinds of questions; the prompt's open or closed <think> block is what tells them apart."""
    out = []
    for i in range(n):
        question, reasoning, answer, _ = _thinking_task(rng)
        reply = {"role": "assistant", "content": answer}
        if i % 2 == 0:
            reply["reasoning_content"] = reasoning
        out.append({"conversations": [{"role": "user", "content": question}, reply]})
    return out


def tool_heldout_lines(rng, n_tools: int = 24, n_thinking: int = 8) -> list[dict]:
    """scripts/eval_toolcall.py's file format: tool tasks with the calls and answer expected, and thinking prompts."""
    out = []
    kinds = list(TOOL_TASKS)
    for i in range(n_tools):
        kind = kinds[i % len(kinds)]
        question, calls, _, must = _tool_task(rng, kind)
        out.append({"kind": kind, "tools": _tool_schemas(_offered_tools(rng, calls)),
                    "messages": [{"role": "system", "content": rng.choice(TOOL_SYSTEM_PROMPTS)},
                                 {"role": "user", "content": question}],
                    "expected_calls": [call for call, _ in calls], "answer": must})
    for _ in range(n_thinking):
        question, _, _, must = _thinking_task(rng)
        out.append({"kind": "thinking", "messages": [{"role": "user", "content": question}], "answer": [must]})
    return out


# at scale 1 (a tool conversation is ~540 tokens). 480 tool conversations instead of 240 took the reasoning model's
# held-out calls from 4% to 29% right arguments (answers with tools 21% -> 33%) for about a minute more of the demo
TOOL_CONVERSATIONS, THINKING_CONVERSATIONS = 480, 240
CHAT_REPLAY = 1000  # SFT conversations replayed in the reasoning stage's mix


def tool_and_thinking_lines(rng, scale: float = 1.0) -> list[dict]:
    """What the demo adds to the reasoning stage's file: tool use and the thinking switch, shuffled."""
    rows = tool_lines(rng, int(TOOL_CONVERSATIONS * scale)) + thinking_lines(rng, int(THINKING_CONVERSATIONS * scale))
    rng.shuffle(rows)
    return rows


# ---------------------------------------------------------------- agentic RL tasks (train_agent.py)

AGENT_TASKS = 400  # at scale 1


def agent_task_lines(rng, n: int, heldout_seed: int = DEMO_HELDOUT_SEED) -> list[dict]:
    """Tool tasks for the agent stage, in the held-out file's format (the question, the tools offered, the calls
    expected and what the answer must contain), drawn like the held-out ones; any question the held-out tool
    file (`write_demo_heldout`'s tools.jsonl at `heldout_seed`) asks is left out, so the demo's before → after is
    measured on tasks the stage never trained on."""
    held_out = {r["messages"][-1]["content"] for r in tool_heldout_lines(random.Random(heldout_seed + 3))
                if r.get("tools")}
    kinds = list(TOOL_TASKS)
    out = []
    while len(out) < n:
        kind = kinds[len(out) % len(kinds)]
        question, calls, _, must = _tool_task(rng, kind)
        if question in held_out:
            continue
        out.append({"kind": kind, "tools": _tool_schemas(_offered_tools(rng, calls)),
                    "messages": [{"role": "system", "content": rng.choice(TOOL_SYSTEM_PROMPTS)},
                                 {"role": "user", "content": question}],
                    "expected_calls": [call for call, _ in calls], "answer": must})
    return out
