"""inference/tools.py: the built-in tools give right answers (checked against independent computations), refuse
hostile input with an error result instead of raising or running away, and schema files load with clear errors."""
import json
import math
import time

import pytest

from dataset.demo import CAPITALS, COLOURS
from inference import tools
from inference.chat_format import check_call
from inference.tools import Toolbox, ToolError, builtin_toolbox, calculate, convert_units, load_toolbox


def run(name, **arguments):
    return builtin_toolbox().run({"name": name, "arguments": arguments})


def result_of(tool_result):
    assert tool_result.ok, tool_result.content
    return json.loads(tool_result.content)["result"]


def error_of(tool_result):
    assert not tool_result.ok, tool_result.content
    return json.loads(tool_result.content)["error"]


@pytest.mark.parametrize("expression, expected", [
    ("37 * 12", 37 * 12), ("(3 + 4) * 5 - 6 / 4", (3 + 4) * 5 - 6 / 4), ("2 ** 10", 1024), ("2 ^ 10", 1024),
    ("-7 // 2", -4), ("17 % 5", 2), ("sqrt(2)", round(math.sqrt(2), 10)), ("abs(-3.5)", 3.5),
    ("round(2.71828, 2)", 2.72), ("max(3, 9, 4) - min(3, 9, 4)", 6), ("2 * pi", round(2 * math.pi, 10)),
    ("12 × 3 ÷ 4", 9), ("(" * 90 + "7" + ")" * 90, 7), ("0.1 + 0.2", 0.3), ("10 / 4", 2.5), ("10 / 5", 2),
])
def test_calculate_matches_python_arithmetic(expression, expected):
    value = calculate(expression)
    assert value == pytest.approx(expected)
    assert type(value) is type(expected) or isinstance(expected, float) and float(value) == expected


@pytest.mark.parametrize("expression, problem", [
    ("2 ** 1000000", "exponent"), ("9 ** 9 ** 9", "exponent"), ("10 ** 16", "exceeds"), ("99999999 * 99999999", "exceeds"),
    ("1" * 30, "exceeds"), ("1e308 * 10", "exceeds"), ("1 / 0", "division by zero"), ("5 % 0", "division by zero"),
    ("0 ** -1", "division by zero"), ("(-8) ** 0.5", "not a real number"), ("sqrt(-1)", "negative"),
    ("__import__('os').system('true')", "only these functions"), ("().__class__", "Attribute"),
    ("x + 1", "unknown name 'x'"), ("open('/etc/passwd')", "only these functions"), ("'a' * 3", "only numbers"),
    ("True + 1", "only numbers"), ("[1, 2]", "List is not allowed"), ("lambda: 1", "Lambda"),
    ("1 if 1 else 2", "IfExp"), ("3 < 4", "Compare"), ("abs(x=1)", "plain arguments"), ("min(1)", "takes 2 to 10"),
    ("round(1.5, 99)", "digits"), ("(1+" * 40 + "1" + ")" * 40, "parts"), ("-" * 150 + "1", "parts"),
    ("1 +" * 80 + "1", "longer than"), ("", "empty"), ("3 +", "cannot parse"), ("1; 2", "cannot parse"),
])
def test_calculate_refuses_hostile_or_bad_expressions(expression, problem):
    with pytest.raises(ToolError, match=problem):
        calculate(expression)


def test_calculate_is_quick_on_the_worst_input_within_limits():
    start = time.perf_counter()
    for expression in ("9 ** 9 ** 9 ** 9", "2 ** 64 ** 64", "(" * 90 + ")" * 90, "max(" + ",".join(["1e15"] * 10) + ") ** 64"):
        with pytest.raises(ToolError):
            calculate(expression)
    assert time.perf_counter() - start < 1.0


def test_calculate_never_calls_eval_or_exec(monkeypatch):
    import builtins

    def forbidden(*args, **kwargs):
        raise AssertionError("eval/exec was called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    assert calculate("(1 + 2) * 3") == 9


@pytest.mark.parametrize("value, source, target, expected", [
    (3.5, "km", "m", 3500), (12, "inches", "cm", 12 * 2.54), (1, "mile", "ft", 1609.344 / 0.3048),
    (2, "kg", "lb", 2 / 0.45359237), (90, "minutes", "hours", 1.5), (100, "C", "F", 212), (32, "fahrenheit", "celsius", 0),
    (0, "K", "C", -273.15), ("5", "metres", "mm", 5000), (2, "litres", "ml", 2000),
])
def test_convert_units_against_known_factors(value, source, target, expected):
    assert convert_units(value, source, target) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("arguments, problem", [
    ({"value": 1, "from_unit": "km", "to_unit": "kg"}, "cannot convert length"),
    ({"value": 1, "from_unit": "parsec", "to_unit": "m"}, "unknown unit 'parsec'"),
    ({"value": "lots", "from_unit": "km", "to_unit": "m"}, "must be a number"),
    ({"value": 1e300, "from_unit": "km", "to_unit": "m"}, "exceeds"),
    ({"value": True, "from_unit": "km", "to_unit": "m"}, "must be a number"),
    ({"value": 1, "from_unit": "km"}, "missing argument: to_unit"),
    ({"value": 1, "from_unit": "km", "to_unit": "m", "precision": 3}, "unknown argument: precision"),
])
def test_convert_units_bad_arguments_are_error_results(arguments, problem):
    assert problem in error_of(run("convert_units", **arguments))


def test_world_lookups_answer_every_demo_fact_in_both_languages():
    for country, city, country_zh, city_zh in CAPITALS:
        assert result_of(run("get_capital", country=country)) == city
        assert result_of(run("get_capital", country=country.upper() + "?")) == city
        assert result_of(run("get_capital", country=country_zh)) == city_zh
    for thing, colour, thing_zh, colour_zh in COLOURS:
        assert result_of(run("get_colour", thing=thing)) == colour
        assert result_of(run("get_colour", thing=thing.split()[-1])) == colour  # "the sky" -> "sky"
        assert result_of(run("get_colour", thing=thing_zh)) == colour_zh
    assert "unknown country 'Atlantis'" in error_of(run("get_capital", country="Atlantis"))
    assert "must be a string" in error_of(run("get_capital", country=["France"]))


def test_toolbox_turns_every_failure_into_an_error_result():
    box = builtin_toolbox()
    assert "unknown function 'rm'" in error_of(box.run({"name": "rm", "arguments": {}}))
    assert "unknown function None" in error_of(box.run({"arguments": {}}))
    assert "must be a JSON object" in error_of(box.run({"name": "calculate", "arguments": "1+1"}))
    assert "missing argument: expression" in error_of(box.run({"name": "calculate", "arguments": {}}))
    assert "longer than" in error_of(box.run({"name": "calculate", "arguments": {"expression": "1" * 5000}}))
    assert "exponent" in error_of(box.run({"name": "calculate", "arguments": {"expression": "2**99999"}}))
    # results are JSON text the model reads, never longer than the limit
    assert json.loads(box.run({"name": "calculate", "arguments": {"expression": "6*7"}}).content) == {"result": 42}


def test_a_slow_or_crashing_tool_gives_an_error_result_within_the_time_limit():
    def slow(seconds):
        time.sleep(seconds)
        return "done"

    def crash():
        raise RuntimeError("disk on fire")

    def huge():
        return "x" * 100_000

    box = Toolbox([{"name": "slow", "parameters": {"properties": {"seconds": {"type": "number"}}}},
                   {"name": "crash"}, {"name": "huge"}],
                  {"slow": slow, "crash": crash, "huge": huge}, timeout_s=0.2)
    start = time.perf_counter()
    assert "timed out after 0.2s" in error_of(box.run({"name": "slow", "arguments": {"seconds": 5}}))
    assert time.perf_counter() - start < 1.5
    assert result_of(box.run({"name": "slow", "arguments": {"seconds": 0}})) == "done"
    assert error_of(box.run({"name": "crash", "arguments": {}})) == "RuntimeError: disk on fire"
    big = box.run({"name": "huge", "arguments": {}})
    assert big.ok and len(big.content) <= tools.MAX_RESULT_CHARS and big.content.endswith("[truncated]")


def test_schemas_are_openai_form_and_agree_with_the_call_checker():
    box = builtin_toolbox()
    for schema in box.schemas:
        assert schema["type"] == "function" and schema["function"]["parameters"]["type"] == "object"
        spec = schema["function"]
        assert set(spec["parameters"]["required"]) <= set(spec["parameters"]["properties"])
        complete = {"name": spec["name"], "arguments": {k: "x" for k in spec["parameters"]["required"]}}
        assert check_call(complete, box.schemas) is None
        if spec["parameters"]["required"]:
            assert "missing" in check_call({"name": spec["name"], "arguments": {}}, box.schemas)


def test_load_toolbox_from_names_all_and_files(tmp_path):
    assert load_toolbox("all").names == list(tools.BUILTIN_TOOLS)
    assert load_toolbox("calculate, get_capital").names == ["calculate", "get_capital"]
    assert not load_toolbox(None) and not load_toolbox("")
    with pytest.raises(ValueError, match="unknown built-in tool nope"):
        load_toolbox("calculate,nope")

    weather = {"name": "get_weather", "description": "Weather in a city",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    path = tmp_path / "tools.json"
    path.write_text(json.dumps({"tools": [{"type": "function", "function": weather}, tools.BUILTIN_SCHEMAS["calculate"]]}))
    box = load_toolbox(str(path))
    assert box.names == ["get_weather", "calculate"]
    # a built-in name runs the built-in; a function without an implementation answers so, and is still checked
    assert result_of(box.run({"name": "calculate", "arguments": {"expression": "2+3"}})) == 5
    assert "no implementation for 'get_weather'" in error_of(box.run({"name": "get_weather", "arguments": {"city": "Lima"}}))
    assert "missing argument: city" in error_of(box.run({"name": "get_weather", "arguments": {}}))

    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "a"},\n {"description": "no name"}]')
    with pytest.raises(ValueError, match=r"bad.json: tools\[1\]: a function schema needs a name"):
        load_toolbox(str(bad))
    broken = tmp_path / "broken.json"
    broken.write_text('[\n{"name": }]')
    with pytest.raises(ValueError, match=r"broken.json:2: not valid JSON"):
        load_toolbox(str(broken))
    with pytest.raises(ValueError, match="cannot read"):
        load_toolbox(str(tmp_path / "missing.json"))
