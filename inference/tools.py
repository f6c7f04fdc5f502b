"""Tools a model may call, and running its calls safely.

Built-in tools (`BUILTIN_TOOLS`), each with an OpenAI-form schema:
  calculate      arithmetic on numbers: + - * / // % ** (also ^), parentheses, abs/round/sqrt/min/max. The
                 expression is parsed with `ast` and walked over a whitelist of node kinds; nothing is ever
                 passed to eval/exec, names other than the listed functions and `pi`/`e` are refused, and
                 lengths, nesting, exponents and magnitudes are bounded.
  convert_units  length, mass, time, volume and temperature units.
  get_capital    the capital of a country of the demo world (dataset/demo.py CAPITALS, English or Chinese names).
  get_colour     the colour of a thing of the demo world (dataset/demo.py COLOURS).

A `Toolbox` is the set of tools offered to a model: `schemas` go to the chat template, `run(call)` executes one
parsed call. Running never raises into the caller: a bad call (unknown function, missing or mistyped arguments,
arithmetic that breaks a limit, a tool that fails or takes longer than the time limit) comes back as a
`ToolResult` with `ok=False` and an error message the model can read. Results are JSON text, `{"result": ...}` or
`{"error": "..."}`, cut to a size limit.

Schemas from a JSON file (`load_toolbox("my_tools.json")`) are offered to the model as they are. A schema whose
name is a built-in runs the built-in; any other function has no implementation here, and calling it returns the
error result "no implementation for <name>" — the model's calls can still be read and scored (what
scripts/eval_toolcall.py measures), and a real application would plug its own functions in through
`Toolbox(schemas, implementations)`.
"""
import ast
import json
import math
import operator
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .chat_format import FormatError, normalize_tools

# limits on what a call may ask for and what it returns
MAX_ARGUMENTS_CHARS = 2000  # a call's arguments, as JSON
MAX_EXPRESSION_CHARS = 200
MAX_EXPRESSION_NODES = 100
MAX_MAGNITUDE = 1e15  # any number, operand or intermediate result
MAX_EXPONENT = 64
MAX_RESULT_CHARS = 1000
TIMEOUT_S = 2.0


class ToolError(Exception):
    """A bad argument or a broken limit; its message goes back to the model as the error result."""


@dataclass
class ToolResult:
    name: str
    content: str  # what goes into the tool turn: JSON text
    ok: bool

    @classmethod
    def success(cls, name, value):
        return cls(name, _cut(json.dumps({"result": value}, ensure_ascii=False)), True)

    @classmethod
    def error(cls, name, message):
        return cls(name, _cut(json.dumps({"error": str(message)}, ensure_ascii=False)), False)


def _cut(text: str) -> str:
    return text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS - 14] + " …[truncated]"


# ---------------------------------------------------------------- calculate

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: pow, ast.BitXor: pow}  # ^ = power
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCTIONS = {"abs": (abs, 1, 1), "round": (round, 1, 2), "sqrt": (math.sqrt, 1, 1), "min": (min, 2, 10),
              "max": (max, 2, 10)}  # name -> (function, fewest, most arguments)
_CONSTANTS = {"pi": math.pi, "e": math.e}


def _checked(value):
    if isinstance(value, complex):
        raise ToolError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is not a finite number")
    if abs(value) > MAX_MAGNITUDE:
        raise ToolError(f"a number exceeds the limit of {MAX_MAGNITUDE:.0e}")
    return value


def _power(base, exponent):
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent {exponent} is beyond the limit of ±{MAX_EXPONENT}")
    if base != 0 and exponent * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise ToolError(f"{base} ** {exponent} exceeds the limit of {MAX_MAGNITUDE:.0e}")
    if base == 0 and exponent < 0:
        raise ToolError("division by zero (0 to a negative power)")
    if base < 0 and not float(exponent).is_integer():
        raise ToolError("a negative number to a fractional power is not a real number")
    return pow(base, exponent)


def _evaluate(node, deadline: float):
    if time.monotonic() > deadline:
        raise ToolError("the calculation took too long")
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, deadline)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ToolError(f"only numbers are allowed, not {node.value!r}")
        return _checked(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, deadline), _evaluate(node.right, deadline)
        if isinstance(node.op, (ast.Pow, ast.BitXor)):
            return _checked(_power(left, right))
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ToolError("division by zero")
        return _checked(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _checked(_UNARY[type(node.op)](_evaluate(node.operand, deadline)))
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r} (allowed: {', '.join([*_CONSTANTS, *_FUNCTIONS])})")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords:
            raise ToolError(f"only these functions may be called, with plain arguments: {', '.join(_FUNCTIONS)}")
        function, fewest, most = _FUNCTIONS[node.func.id]
        if not fewest <= len(node.args) <= most:
            raise ToolError(f"{node.func.id}() takes {fewest}" + (f" to {most}" if most > fewest else "")
                            + f" argument{'s' if most > 1 else ''}, got {len(node.args)}")
        values = [_evaluate(arg, deadline) for arg in node.args]
        if node.func.id == "sqrt" and values[0] < 0:
            raise ToolError("sqrt of a negative number")
        if node.func.id == "round" and len(values) == 2 and (not isinstance(values[1], int) or abs(values[1]) > 15):
            raise ToolError("round()'s digits must be a whole number between -15 and 15")
        return _checked(function(*values))
    raise ToolError(f"{type(node).__name__} is not allowed in an arithmetic expression")


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression (see the module docstring for what is allowed)."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = expression.strip().replace("×", "*").replace("÷", "/")
    if not text:
        raise ToolError("the expression is empty")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ToolError(f"cannot parse {expression!r}: {getattr(e, 'msg', None) or type(e).__name__}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_EXPRESSION_NODES:
        raise ToolError(f"the expression has more than {MAX_EXPRESSION_NODES} parts")
    value = _evaluate(tree, time.monotonic() + TIMEOUT_S)
    if isinstance(value, float):
        value = round(value, 10)
        if value.is_integer():
            value = int(value)
    return value


# ---------------------------------------------------------------- convert_units

# unit -> (quantity, factor to the quantity's base unit); temperatures are handled apart (they have offsets)
_UNITS = {}
for _quantity, _table in {
    "length": {("m", "metre", "meter"): 1, ("km", "kilometre", "kilometer"): 1000, ("cm", "centimetre", "centimeter"): 0.01,
               ("mm", "millimetre", "millimeter"): 0.001, ("mi", "mile"): 1609.344, ("yd", "yard"): 0.9144,
               ("ft", "foot", "feet"): 0.3048, ("in", "inch", "inches"): 0.0254},
    "mass": {("kg", "kilogram"): 1, ("g", "gram"): 0.001, ("mg", "milligram"): 1e-6, ("t", "tonne", "ton"): 1000,
             ("lb", "pound"): 0.45359237, ("oz", "ounce"): 0.028349523125},
    "time": {("s", "sec", "second"): 1, ("min", "minute"): 60, ("h", "hr", "hour"): 3600, ("day",): 86400,
             ("week",): 604800},
    "volume": {("l", "litre", "liter"): 1, ("ml", "millilitre", "milliliter"): 0.001, ("gal", "gallon"): 3.785411784},
}.items():
    for _names, _factor in _table.items():
        for _name in _names:
            _UNITS[_name] = (_quantity, _factor)
_TEMPERATURES = {"c": "C", "celsius": "C", "°c": "C", "f": "F", "fahrenheit": "F", "°f": "F", "k": "K", "kelvin": "K"}


def _unit(name: str):
    key = name.strip().lower().rstrip(".")
    if key in _TEMPERATURES:
        return "temperature", _TEMPERATURES[key]
    for candidate in (key, key[:-1] if key.endswith("s") else key, key[:-2] if key.endswith("es") else key):
        if candidate in _UNITS:
            return _UNITS[candidate]
    raise ToolError(f"unknown unit {name!r} (known: {', '.join(sorted({k for k in _UNITS if len(k) <= 3}))}, C, F, K)")


def _to_kelvin(value, scale):
    return {"C": value + 273.15, "F": (value - 32) * 5 / 9 + 273.15, "K": value}[scale]


def _from_kelvin(value, scale):
    return {"C": value - 273.15, "F": (value - 273.15) * 9 / 5 + 32, "K": value}[scale]


def convert_units(value, from_unit: str, to_unit: str) -> int | float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ToolError(f"value must be a number, got {value!r}") from None
    _checked(value)
    (quantity, a), (other, b) = _unit(from_unit), _unit(to_unit)
    if quantity != other:
        raise ToolError(f"cannot convert {quantity} ({from_unit}) to {other} ({to_unit})")
    if quantity == "temperature":
        result = _from_kelvin(_to_kelvin(value, a), b)
    else:
        result = value * a / b
    result = round(_checked(result), 6)
    return int(result) if result.is_integer() else result


# ---------------------------------------------------------------- the demo world

def _demo_world():
    from dataset.demo import CAPITALS, COLOURS  # the same facts the demo corpus teaches

    capitals, colours = {}, {}
    for country, city, country_zh, city_zh in CAPITALS:
        capitals[country.lower()] = city
        capitals[country_zh] = city_zh
    for thing, colour, thing_zh, colour_zh in COLOURS:
        colours[thing.lower()] = colour
        colours[thing.lower().removeprefix("the ").removeprefix("a ").removeprefix("an ")] = colour
        colours[thing_zh] = colour_zh
    return capitals, colours


def _lookup(table: dict, key: str, what: str):
    key = key.strip().rstrip("?.!").strip()
    found = table.get(key.lower())
    if found is None:
        shown = sorted(k for k in table if k.isascii())
        raise ToolError(f"unknown {what} {key!r} (known: {', '.join(shown)})")
    return found


def get_capital(country: str) -> str:
    return _lookup(_demo_world()[0], country, "country")


def get_colour(thing: str) -> str:
    return _lookup(_demo_world()[1], thing, "thing")


# ---------------------------------------------------------------- schemas and running calls

def _schema(name, description, properties: dict, required: list) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


BUILTIN_SCHEMAS = {
    "calculate": _schema("calculate", "Evaluate an arithmetic expression.",
                         {"expression": {"type": "string", "description": "e.g. 37 * 12"}}, ["expression"]),
    "convert_units": _schema("convert_units", "Convert a value between units.",
                             {"value": {"type": "number"}, "from_unit": {"type": "string"},
                              "to_unit": {"type": "string"}}, ["value", "from_unit", "to_unit"]),
    "get_capital": _schema("get_capital", "The capital city of a country.",
                           {"country": {"type": "string"}}, ["country"]),
    "get_colour": _schema("get_colour", "The colour of a thing.", {"thing": {"type": "string"}}, ["thing"]),
}
BUILTIN_TOOLS = {"calculate": calculate, "convert_units": convert_units, "get_capital": get_capital,
                 "get_colour": get_colour}

_JSON_TYPES = {"string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,), "object": (dict,),
               "array": (list,)}


def check_arguments(arguments: dict, schema: dict) -> None:
    """ToolError unless `arguments` fits the schema's parameters: required ones present, no unknown ones,
    declared types respected (a number may also come as a numeric string, which small models often write)."""
    parameters = schema.get("parameters") or {}
    properties = parameters.get("properties") or {}
    missing = [name for name in parameters.get("required") or [] if name not in arguments]
    if missing:
        raise ToolError(f"missing argument{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    unknown = [name for name in arguments if properties and name not in properties]
    if unknown:
        raise ToolError(f"unknown argument{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)} "
                        f"(expected: {', '.join(properties)})")
    for name, value in arguments.items():
        kind = (properties.get(name) or {}).get("type")
        if kind not in _JSON_TYPES:
            continue
        if kind == "number" and isinstance(value, str):
            try:
                float(value)
                continue
            except ValueError:
                pass
        if isinstance(value, bool) and kind != "boolean" or not isinstance(value, _JSON_TYPES[kind]):
            raise ToolError(f"argument {name!r} must be a {kind}, got {type(value).__name__} {json.dumps(value)[:40]}")


class Toolbox:
    """Tools offered to a model: `schemas` (OpenAI form, for the chat template) and implementations by name."""

    def __init__(self, schemas=(), implementations=None, timeout_s: float = TIMEOUT_S):
        self.schemas = normalize_tools(list(schemas))
        self.implementations = dict(implementations or {})
        self.timeout_s = timeout_s
        self._by_name = {t["function"]["name"]: t["function"] for t in self.schemas}

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def __bool__(self):
        return bool(self.schemas)

    def run(self, call: dict) -> ToolResult:
        """Execute one call {"name", "arguments": dict}; every failure is an error result, never an exception."""
        name = call.get("name") if isinstance(call, dict) else None
        if not isinstance(name, str) or name not in self._by_name:
            known = ", ".join(self._by_name) or "none"
            return ToolResult.error(str(name), f"unknown function {name!r} (known: {known})")
        arguments = call.get("arguments")
        if not isinstance(arguments, dict):
            return ToolResult.error(name, "arguments must be a JSON object")
        try:
            if len(json.dumps(arguments, ensure_ascii=False)) > MAX_ARGUMENTS_CHARS:
                raise ToolError(f"the arguments are longer than {MAX_ARGUMENTS_CHARS} characters")
            check_arguments(arguments, self._by_name[name])
        except (ToolError, TypeError, ValueError) as e:
            return ToolResult.error(name, e)
        function = self.implementations.get(name)
        if function is None:
            return ToolResult.error(name, f"no implementation for {name!r} here (its schema is only offered to the model)")
        return self._call(name, function, arguments)

    def _call(self, name, function, arguments) -> ToolResult:
        """Run in a worker thread so that a slow tool costs at most the time limit (the thread is abandoned)."""
        outcome = {}

        def work():
            try:
                outcome["value"] = function(**arguments)
            except ToolError as e:
                outcome["error"] = str(e)
            except Exception as e:  # a tool's own failure is reported to the model, not raised
                outcome["error"] = f"{type(e).__name__}: {e}"

        worker = threading.Thread(target=work, daemon=True, name=f"tool-{name}")
        worker.start()
        worker.join(self.timeout_s)
        if worker.is_alive():
            return ToolResult.error(name, f"timed out after {self.timeout_s:g}s")
        if "error" in outcome:
            return ToolResult.error(name, outcome["error"])
        try:
            return ToolResult.success(name, outcome.get("value"))
        except (TypeError, ValueError) as e:
            return ToolResult.error(name, f"the result cannot be written as JSON: {e}")


def builtin_toolbox(names=None) -> Toolbox:
    names = list(BUILTIN_TOOLS) if names is None else list(names)
    unknown = [n for n in names if n not in BUILTIN_TOOLS]
    if unknown:
        raise ValueError(f"unknown built-in tool{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                         f"(built-in: {', '.join(BUILTIN_TOOLS)}, or `all`, or a JSON file of schemas)")
    return Toolbox([BUILTIN_SCHEMAS[n] for n in names], {n: BUILTIN_TOOLS[n] for n in names})


def load_schemas(path) -> list[dict]:
    """A JSON file of function schemas: a list (OpenAI form, with or without the {"type": "function"} wrapper)
    or an object with a "tools" list. ValueError naming the file for anything else."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from None
    if isinstance(data, dict) and "tools" in data:
        data = data["tools"]
    try:
        return normalize_tools(data, where=f"{path}: tools")
    except FormatError as e:
        raise ValueError(str(e)) from None


def load_toolbox(spec: str | None) -> Toolbox:
    """What a --tools flag names: `all`, built-in names separated by commas, or a JSON file of schemas (built-in
    names in it run the built-ins; other functions are offered to the model but have no implementation)."""
    if not spec:
        return Toolbox()
    if spec == "all":
        return builtin_toolbox()
    if spec.endswith(".json") or Path(spec).is_file():
        schemas = load_schemas(spec)
        return Toolbox(schemas, {s["function"]["name"]: BUILTIN_TOOLS[s["function"]["name"]]
                                 for s in schemas if s["function"]["name"] in BUILTIN_TOOLS})
    return builtin_toolbox([n.strip() for n in spec.split(",") if n.strip()])
