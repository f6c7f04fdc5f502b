"""The OpenAI chat-completions schema, apart from HTTP: the served models, request validation (APIError in
OpenAI's error shape for anything wrong) and the response and stream-chunk bodies. inference/server.py adapts it
to HTTP."""
import json
import math
import threading
import time
from dataclasses import dataclass, field

from .checkpoints import ModelNotFound, chats, resolve_lora_path, resolve_model_path
from .generation import GenerationStream, build_prompt
from .loading import describe, load_model, pick_device, pick_dtype

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP_SEQUENCES = 4


class ServedModel:
    """A loaded model with its tokenizer, its id, and the lock that makes its requests take turns."""

    def __init__(self, model_id: str, model, tokenizer, chat: bool = True):
        self.id, self.model, self.tokenizer, self.chat = model_id, model, tokenizer, chat
        self.lock = threading.Lock()
        self.created = int(time.time())
        self.context = getattr(model.config, "max_position_embeddings", None) or 32768

    def prompt(self, messages) -> str:
        return build_prompt(self.tokenizer, messages, chat=self.chat)

    def card(self) -> dict:
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": "minimind"}


def load_served_models(model_paths=None, model_mode: int = 1, lora_name=None, out_dir="out", dim: int = 512,
                       use_moe: bool = False, device="auto", dtype="auto", log=None) -> dict:
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
        models[model_id] = ServedModel(model_id, model, tokenizer, chat=chats(model_mode))
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
    messages: list
    temperature: float
    top_p: float
    max_tokens: int
    repetition_penalty: float = 1.0
    stream: bool = False
    include_usage: bool = False
    stop: list = field(default_factory=list)
    seed: int | None = None


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


def parse_messages(messages) -> list:
    if messages is None:
        raise APIError(400, "missing required parameter: 'messages'", param="messages", code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "'messages' must be a non-empty array of {role, content} objects", param="messages",
                       code="invalid_type" if not isinstance(messages, list) else "empty_array")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise APIError(400, f"messages[{i}] must be an object", param=f"messages[{i}]", code="invalid_type")
        role = message.get("role")
        if role not in ROLES:
            raise APIError(400, f"messages[{i}].role: unknown role {json.dumps(role)} (expected one of {', '.join(ROLES)})",
                           param=f"messages[{i}].role", code="invalid_value")
        parsed.append({"role": "system" if role == "developer" else role, "content": _message_text(message.get("content"), i)})
    return parsed


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

    return ChatRequest(served, messages, temperature, top_p, max_tokens, repetition_penalty, bool(stream),
                       bool(options and options.get("include_usage")), stop, seed)


def completion_body(cid, created, served, stream: GenerationStream) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": created, "model": served.id,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": stream.text},
                     "logprobs": None, "finish_reason": stream.finish_reason}],
        "usage": usage(stream),
    }


def chunk_body(cid, created, served, delta: dict, finish_reason=None, include_usage=False) -> dict:
    chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": served.id,
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
    if include_usage:
        chunk["usage"] = None  # OpenAI's convention: null on every chunk but the last
    return chunk


def usage(stream: GenerationStream) -> dict:
    return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.completion_tokens,
            "total_tokens": stream.prompt_tokens + stream.completion_tokens}
