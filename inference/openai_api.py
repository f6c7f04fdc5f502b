"""The OpenAI chat-completions schema, apart from HTTP: the served models, request validation (APIError in
OpenAI's error shape for anything wrong) and the response and stream-chunk bodies. inference/server.py adapts it
to HTTP."""
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field

import torch

from .batching import BatchedStream, Batcher
from .chat_format import THINK_OPEN, TOOL_CALL_OPEN, AssistantReply, FormatError, normalize_call, parse_assistant
from .checkpoints import ModelNotFound, chats, resolve_lora_path, resolve_model_path
from .generation import build_prompt
from .loading import describe, load_model, pick_device, pick_dtype
from .reply_stream import ReplySplitter, split_reply

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_STOP_SEQUENCES = 4
MAX_TOOLS = 128  # OpenAI's limit
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
THINKING_KWARGS = ("open_thinking", "enable_thinking")  # MiniMind-3's name, vLLM's name


class ServedModel:
    """A loaded model with its tokenizer, its id, and the Batcher that decodes its concurrent requests together
    (at most `max_batch` at a time; more wait for a free row). `compile`: the batcher runs the model through
    torch.compile (dynamic shapes): on this project's CPU ~1.3x faster decode steps, after ~2-5 minutes of
    compiling during the first requests, so it pays for a long-running server only."""

    def __init__(self, model_id: str, model, tokenizer, chat: bool = True, max_batch: int = 32, compile: bool = False):
        self.id, self.model, self.tokenizer, self.chat = model_id, model, tokenizer, chat
        runner = torch.compile(model, dynamic=True) if compile else model
        self.batcher = Batcher(runner, tokenizer, max_rows=max_batch)
        self.created = int(time.time())
        self.context = getattr(model.config, "max_position_embeddings", None) or 32768

    def stream(self, req: "ChatRequest", prompt: str) -> BatchedStream:
        """Start generating the answer to a request (decoded in the batch with the others)."""
        return BatchedStream(self.batcher, self.tokenizer, prompt, max_new_tokens=req.max_tokens,
                             temperature=req.temperature, top_p=req.top_p, repetition_penalty=req.repetition_penalty,
                             stop=req.stop, seed=req.seed)

    def prompt(self, messages, tools=None, open_thinking: bool = False) -> str:
        """The generation prompt: the chat template with `tools` listed and the think block opened (or closed empty)
        as the thinking switch says; a pretrained model continues the last message as plain text."""
        if not self.chat or not self.tokenizer.chat_template:
            return build_prompt(self.tokenizer, messages, chat=self.chat)
        return self.tokenizer.apply_chat_template(messages, tools=tools or None, open_thinking=open_thinking,
                                                  tokenize=False, add_generation_prompt=True)

    def card(self) -> dict:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "minimind"}


def load_served_models(model_paths=None, model_mode: int = 1, lora_name=None, out_dir="out", dim: int = 512,
                       use_moe: bool = False, device="auto", dtype="auto", log=None, max_batch: int = 32,
                       compile: bool = False) -> dict:
    """Several model folders, or the --model_mode/--lora_name lookup: {id: ServedModel}. A model's id is its
    folder name (+ the adapter's); `log` gets one line per loaded model."""
    paths = [resolve_model_path(p) for p in model_paths] if model_paths else \
        [resolve_model_path(None, model_mode, out_dir, dim, use_moe)]
    lora = resolve_lora_path(lora_name, out_dir, dim, use_moe)
    if lora is not None and len(paths) > 1:
        raise ModelNotFound("--lora_name applies to one base model; give a single --model_path")
    device = pick_device(device)
    models = {}
    for path in paths:
        model_id = path.resolve().name + (f"+{lora.resolve().name}" if lora else "")
        if model_id in models:
            raise ModelNotFound(f"two models would share the id {model_id!r}; serve folders with different names")
        model, tokenizer = load_model(path, lora, device, pick_dtype(dtype, device))
        if log:
            log(describe(model, path, lora))
        models[model_id] = ServedModel(model_id, model, tokenizer, chat=chats(model_mode), max_batch=max_batch,
                                       compile=compile)
    return models


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param=None, code=None, type_="invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    served: ServedModel
    messages: list  # in MiniMind-3's shape: what the chat template renders
    temperature: float
    top_p: float
    max_tokens: int
    repetition_penalty: float = 1.0
    stream: bool = False
    include_usage: bool = False
    stop: list = field(default_factory=list)
    seed: int | None = None
    tools: list | None = None  # [{"type": "function", "function": {...}}]
    tool_choice: str | dict = "none"  # "auto" | "none" | "required" | {"name": ...}
    open_thinking: bool = False
    thinking: bool = False  # set by prompt(): the prompt ends inside an open <think> block

    @property
    def reads_tool_calls(self) -> bool:
        """The model is offered the tools and its <tool_call> blocks come back as `tool_calls`."""
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def prefill(self) -> str:
        """The start of the reply written into the prompt. A small model may not call a tool when told to, so
        "required" opens the call (the model picks the function) and a named choice writes the name too; the model
        continues with the arguments. Such a reply skips the reasoning (the think block is closed empty)."""
        if self.tool_choice == "required":
            return TOOL_CALL_OPEN + '\n{"name": "'
        if isinstance(self.tool_choice, dict):
            return TOOL_CALL_OPEN + '\n{"name": ' + json.dumps(self.tool_choice["name"]) + ', "arguments": '
        return ""

    def prompt(self) -> str:
        """The text the model continues (the chat template's generation prompt + the prefill)."""
        prefill = self.prefill
        prompt = self.served.prompt(self.messages, self.tools if self.reads_tool_calls else None,
                                    self.open_thinking and not prefill)
        self.thinking = prompt.rstrip().endswith(THINK_OPEN)  # whatever the template did with the switch
        return prompt + prefill

    def reply(self, generated: str) -> AssistantReply:
        """The whole reply split into reasoning, content and tool calls."""
        text = self.prefill + generated
        if self.reads_tool_calls:
            return parse_assistant(text, self.thinking)
        return split_reply(text, self.thinking, tool_calls=False)  # <tool_call> text stays content

    def splitter(self) -> ReplySplitter:
        return ReplySplitter(self.thinking, tool_calls=self.reads_tool_calls)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(body, name, default, low, high, low_open=False):
    value = body.get(name)
    if value is None:
        return default
    if not _is_number(value):
        raise APIError(400, f"'{name}' must be a number, got {json.dumps(value)}", param=name, code="invalid_type")
    if value < low or value > high or (low_open and value == low):
        bound = f"{'>' if low_open else '>='} {low} and <= {high}"
        raise APIError(400, f"'{name}' must be {bound}, got {value}", param=name, code="invalid_value")
    return float(value)


def _message_text(content, index):
    param = f"messages[{index}].content"
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: only text is understood
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, f"{param}: only text content parts ({{'type': 'text', 'text': ...}}) are supported",
                               param=param, code="invalid_value")
            texts.append(part["text"])
        return "".join(texts)
    raise APIError(400, f"{param} must be a string or a list of text parts", param=param, code="invalid_type")


def _fail(param, message, code="invalid_value"):
    raise APIError(400, f"{param}: {message}", param=param, code=code)


def _assistant_message(message, i) -> tuple[dict, dict]:
    """(the assistant turn in MiniMind-3's shape, {call id: position} of its tool calls)."""
    turn = {"role": "assistant", "content": _message_text(message.get("content"), i)}
    reasoning = message.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        _fail(f"messages[{i}].reasoning_content", "must be a string", "invalid_type")
    if reasoning:
        turn["reasoning_content"] = reasoning
    calls = message.get("tool_calls")
    if calls is None or calls == []:
        return turn, {}
    if not isinstance(calls, list):
        _fail(f"messages[{i}].tool_calls", "must be an array of tool calls", "invalid_type")
    ids, normalized = {}, []
    for j, call in enumerate(calls):
        param = f"messages[{i}].tool_calls[{j}]"
        if not isinstance(call, dict):
            _fail(param, "must be an object like {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}",
                  "invalid_type")
        if call.get("type", "function") != "function":
            _fail(f"{param}.type", f"only 'function' calls are supported, got {json.dumps(call.get('type'))}")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            _fail(f"{param}.id", "a tool call needs an id (its tool message refers to it)", "missing_required_parameter")
        if call_id in ids:
            _fail(f"{param}.id", f"duplicate tool call id {call_id!r}")
        if not isinstance(call.get("function"), dict):
            _fail(f"{param}.function", "must be an object with a name and arguments", "invalid_type")
        try:
            normalized.append(normalize_call(call["function"], f"{param}.function"))
        except FormatError as e:
            raise APIError(400, str(e), param=f"{param}.function", code="invalid_value") from None
        ids[call_id] = j
    turn["tool_calls"] = normalized
    return turn, ids


def parse_messages(messages) -> list:
    """OpenAI messages as MiniMind-3's conversation turns: `developer` is a system turn; an assistant turn keeps its
    reasoning_content and its tool_calls as {"name", "arguments": dict}; `tool` turns (the results, which MiniMind-3's
    template writes into one user turn as <tool_response> blocks) must answer the calls of the assistant turn before
    them, one result per call id, and are put in the order of the calls, which is how the model matches them up."""
    if messages is None:
        raise APIError(400, "missing required parameter: 'messages'", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array of {role, content} objects", param="messages",
                       code="invalid_type" if not isinstance(messages, list) else "empty_array")
    parsed = []
    calls, caller, answered = {}, None, {}  # the open assistant turn's {call id: position}, its index, the results

    def close_results():
        missing = [call_id for call_id in calls if call_id not in answered]
        if missing:
            _fail(f"messages[{caller}].tool_calls", f"no tool message answers the call{'s' if len(missing) > 1 else ''} "
                  f"{', '.join(missing)}; each call needs a message with role 'tool' and its tool_call_id")
        parsed.extend(answered[call_id] for call_id in sorted(calls, key=calls.get))
        calls.clear()
        answered.clear()

    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise APIError(400, f"messages[{i}] must be an object", param=f"messages[{i}]", code="invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise APIError(400, f"messages[{i}].role: unknown role {json.dumps(role)} (expected one of {', '.join(ROLES)})",
                           param=f"messages[{i}].role", code="invalid_value")
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                _fail(f"messages[{i}].tool_call_id", "a tool message needs the tool_call_id of the call it answers",
                      "missing_required_parameter")
            if not calls and not answered:
                _fail(f"messages[{i}].role", "a 'tool' message must answer a call of the assistant message before it")
            if call_id not in calls:
                _fail(f"messages[{i}].tool_call_id", f"no call with id {call_id!r} in messages[{caller}].tool_calls")
            if call_id in answered:
                _fail(f"messages[{i}].tool_call_id", f"the call {call_id!r} is answered twice")
            answered[call_id] = {"role": "tool", "content": _message_text(message.get("content"), i)}
            continue
        close_results()
        if role == "assistant":
            turn, ids = _assistant_message(message, i)
            calls.update(ids)
            caller = i
            parsed.append(turn)
        else:
            parsed.append({"role": "system" if role == "developer" else role,
                           "content": _message_text(message.get("content"), i)})
    close_results()
    return parsed


def parse_tools(value) -> list | None:
    """OpenAI's `tools`: function schemas, checked the way OpenAI checks them."""
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise APIError(400, "'tools' must be an array of {\"type\": \"function\", \"function\": {...}} objects",
                       param="tools", code="invalid_type")
    if len(value) > MAX_TOOLS:
        raise APIError(400, f"'tools' holds {len(value)} functions; at most {MAX_TOOLS}", param="tools")
    tools, names = [], set()
    for i, tool in enumerate(value):
        param = f"tools[{i}]"
        if not isinstance(tool, dict):
            _fail(param, "must be an object like {\"type\": \"function\", \"function\": {\"name\": ...}}", "invalid_type")
        if tool.get("type") != "function":
            _fail(f"{param}.type", f"only 'function' tools are supported, got {json.dumps(tool.get('type'))}")
        spec = tool.get("function")
        if not isinstance(spec, dict):
            _fail(f"{param}.function", "must be an object with a name (and a description and parameters)", "invalid_type")
        name = spec.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME.match(name):
            _fail(f"{param}.function.name", f"must be 1-64 letters, digits, '_' or '-', got {json.dumps(name)}")
        if name in names:
            _fail(f"{param}.function.name", f"the function {name!r} is listed twice")
        names.add(name)
        if spec.get("description") is not None and not isinstance(spec["description"], str):
            _fail(f"{param}.function.description", "must be a string", "invalid_type")
        parameters = spec.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
                _fail(f"{param}.function.parameters", "must be a JSON schema of type 'object'", "invalid_type")
            required = parameters.get("required", [])
            if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
                _fail(f"{param}.function.parameters.required", "must be an array of argument names", "invalid_type")
        tools.append({"type": "function", "function": spec})
    return tools


def parse_tool_choice(value, tools):
    """"auto" (the default with tools), "none" (the default without: the tools are left out of the prompt and
    <tool_call> text stays content), "required" or {"type": "function", "function": {"name": ...}} (the call is
    opened in the prompt, see ChatRequest.prefill) -> "auto" | "none" | "required" | {"name": ...}."""
    if value is None:
        return "auto" if tools else "none"
    if isinstance(value, str) and value in ("auto", "none", "required"):
        if value != "none" and not tools:
            raise APIError(400, f"tool_choice {value!r} needs 'tools'", param="tool_choice")
        return value
    function = value.get("function") if isinstance(value, dict) else None
    if not (isinstance(value, dict) and value.get("type") == "function" and isinstance(function, dict)
            and isinstance(function.get("name"), str)):
        raise APIError(400, "'tool_choice' must be \"auto\", \"none\", \"required\" or "
                            "{\"type\": \"function\", \"function\": {\"name\": ...}}", param="tool_choice",
                       code="invalid_type")
    offered = [t["function"]["name"] for t in tools or []]
    if function["name"] not in offered:
        raise APIError(400, f"tool_choice names the function {function['name']!r}, which is not in 'tools' "
                            f"(offered: {', '.join(offered) or 'none'})", param="tool_choice")
    return {"name": function["name"]}


def parse_thinking(value) -> bool:
    """chat_template_kwargs: {"open_thinking": bool} (MiniMind-3's switch) or {"enable_thinking": bool} (vLLM's
    name for it); thinking is off when neither is given."""
    if value is None:
        return False
    if not isinstance(value, dict):
        raise APIError(400, "'chat_template_kwargs' must be an object like {\"open_thinking\": true}",
                       param="chat_template_kwargs", code="invalid_type")
    for key, switch in value.items():
        if key not in THINKING_KWARGS:
            raise APIError(400, f"chat_template_kwargs: unknown key {key!r} (this server understands "
                                f"{' and '.join(THINKING_KWARGS)})", param=f"chat_template_kwargs.{key}")
        if switch is not None and not isinstance(switch, bool):
            raise APIError(400, f"chat_template_kwargs.{key} must be true or false, got {json.dumps(switch)}",
                           param=f"chat_template_kwargs.{key}", code="invalid_type")
    switches = {value[k] for k in THINKING_KWARGS if value.get(k) is not None}
    if len(switches) > 1:
        raise APIError(400, "chat_template_kwargs: open_thinking and enable_thinking disagree",
                       param="chat_template_kwargs")
    return switches == {True}


def parse_chat_request(raw: bytes, models: dict, defaults: dict) -> ChatRequest:
    """Validate a /v1/chat/completions body; APIError (4xx) for anything wrong."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")

    name = body.get("model")
    if name is None or name == "":
        served = next(iter(models.values()))  # the first served model is the default
    elif not isinstance(name, str):
        raise APIError(400, "'model' must be a string", param="model", code="invalid_type")
    elif name in models:
        served = models[name]
    else:
        raise APIError(404, f"The model '{name}' does not exist; served: {', '.join(models)}", param="model",
                       code="model_not_found")

    messages = parse_messages(body.get("messages"))
    temperature = _number(body, "temperature", defaults["temperature"], 0, 2)
    top_p = _number(body, "top_p", defaults["top_p"], 0, 1)
    repetition_penalty = _number(body, "repetition_penalty", 1.0, 0, 10, low_open=True)
    for ignored in ("frequency_penalty", "presence_penalty"):
        _number(body, ignored, 0.0, -2, 2)

    max_tokens, param = None, None
    for key in ("max_completion_tokens", "max_tokens"):
        if body.get(key) is not None:
            max_tokens, param = body[key], key
    if max_tokens is None:
        max_tokens = defaults["max_tokens"]
    elif not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise APIError(400, f"'{param}' must be a positive integer, got {json.dumps(max_tokens)}", param=param,
                       code="invalid_value")

    n = body.get("n")
    if n is not None and n != 1:
        raise APIError(400, "only n=1 is supported", param="n", code="invalid_value")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise APIError(400, "'stream' must be a boolean", param="stream", code="invalid_type")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool)):
        raise APIError(400, "'stream_options' must be an object like {\"include_usage\": true}", param="stream_options",
                       code="invalid_type")
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) for s in stop):
        raise APIError(400, f"'stop' must be a string or an array of at most {MAX_STOP_SEQUENCES} strings", param="stop",
                       code="invalid_type")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise APIError(400, "'seed' must be an integer", param="seed", code="invalid_type")

    tools = parse_tools(body.get("tools"))
    tool_choice = parse_tool_choice(body.get("tool_choice"), tools)
    if body.get("parallel_tool_calls") is not None and not isinstance(body["parallel_tool_calls"], bool):
        raise APIError(400, "'parallel_tool_calls' must be a boolean", param="parallel_tool_calls", code="invalid_type")
    open_thinking = parse_thinking(body.get("chat_template_kwargs"))

    return ChatRequest(served, messages, temperature, top_p, max_tokens, repetition_penalty, bool(stream),
                       bool(options and options.get("include_usage")), stop, seed, tools, tool_choice, open_thinking)


class ServerTools:
    """Functions this server runs itself, for its chat page's tool loop: GET /v1/tools lists their schemas, POST
    /v1/tools/call runs one. (An API client runs its own tools; the OpenAI API has no such routes.) `run(name,
    arguments: dict) -> str` gives the result text; an exception becomes an error result the model can read."""

    def __init__(self, schemas, run):
        self.schemas = parse_tools(schemas) or []
        self.names = {t["function"]["name"] for t in self.schemas}
        self._run = run

    def call(self, raw: bytes) -> dict:
        """Run the call in a POST /v1/tools/call body {"name", "arguments": object or JSON string}: {"content"}."""
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
        try:
            call = normalize_call(body, "call")
        except FormatError as e:
            raise APIError(400, str(e), param="arguments" if isinstance(body, dict) and body.get("name") else "name") from None
        if call["name"] not in self.names:
            raise APIError(404, f"no tool {call['name']!r} on this server (offered: {', '.join(sorted(self.names)) or 'none'})",
                           param="name", code="tool_not_found")
        try:
            content = self._run(call["name"], call["arguments"])
        except Exception as e:  # a tool's failure is a result the model can read, not a server error
            content = f"error: {type(e).__name__}: {e}"
        return {"name": call["name"], "content": content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_call_body(call: dict, call_id: str, index: int | None = None) -> dict:
    """A call in OpenAI's shape: the arguments as a JSON string."""
    body = {"id": call_id, "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
    return body if index is None else {"index": index, **body}


def finish_reason(stream: BatchedStream, called: bool) -> str:
    """"tool_calls" when the reply ended after calling tools; else the generation's own ("stop" | "length")."""
    return "tool_calls" if called and stream.finish_reason == "stop" else stream.finish_reason


def completion_body(cid, created, req: ChatRequest, stream: BatchedStream) -> dict:
    reply = req.reply(stream.text)
    message = {"role": "assistant", "content": reply.content or (None if reply.tool_calls else ""),
               "reasoning_content": reply.reasoning_content}
    if reply.tool_calls:
        message["tool_calls"] = [tool_call_body(call, new_call_id()) for call in reply.tool_calls]
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": req.served.id,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(stream, bool(reply.tool_calls))}],
        "usage": usage(stream),
    }


class StreamDeltas:
    """The pieces of a streamed reply as OpenAI deltas: {"reasoning_content": ...}, {"content": ...} and, when a
    <tool_call> block closes, {"tool_calls": [{"index", "id", "type", "function": {"name", "arguments"}}]} with the
    whole call in one delta. The prefill (the call a request forced open) is the reply's first piece."""

    def __init__(self, req: ChatRequest):
        self.splitter = req.splitter()
        self.first = req.prefill
        self.calls = 0

    def _deltas(self, events) -> list[dict]:
        deltas = []
        for kind, value in events:
            if kind == "tool_call":
                deltas.append({"tool_calls": [tool_call_body(value, new_call_id(), self.calls)]})
                self.calls += 1
            else:
                deltas.append({"reasoning_content" if kind == "reasoning" else "content": value})
        return deltas

    def feed(self, piece: str) -> list[dict]:
        piece, self.first = self.first + piece, ""
        return self._deltas(self.splitter.feed(piece))

    def finish(self) -> list[dict]:
        return self._deltas(self.splitter.feed(self.first) + self.splitter.finish())


def chunk_body(cid, created, served, delta: dict, finish_reason=None, include_usage=False) -> dict:
    chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": served.id,
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if include_usage:
        chunk["usage"] = None  # OpenAI's convention: null on every chunk but the last
    return chunk


def usage(stream: BatchedStream) -> dict:
    return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.completion_tokens,
            "total_tokens": stream.prompt_tokens + stream.completion_tokens}
