"""Serve trained MiniMind models behind an OpenAI-compatible HTTP API (standard library only).

  POST /v1/chat/completions   messages, model, temperature, top_p, max_tokens (or max_completion_tokens),
                              stream (server-sent events), stream_options.include_usage, stop, seed, n=1;
                              also repetition_penalty (not in OpenAI's API). frequency/presence penalties
                              are accepted and ignored.
  GET  /v1/models             the served model ids (a model's id is its folder name)
  GET  /health                {"status": "ok"}
  GET  /                      a chat page for the browser (scripts/web/chat.html; --no_web turns it off)

  python scripts/serve_openai_api.py                                  # out/full_sft_512 on 127.0.0.1:8998
  python scripts/serve_openai_api.py --model_mode 2 --lora_name lora_identity
  python scripts/serve_openai_api.py --model_path out/full_sft_512 --model_path out/reason_512
  then open http://127.0.0.1:8998/ in a browser to chat (streamed replies, model picker, sampling controls)

  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:8998/v1", api_key="none")
  client.chat.completions.create(model="full_sft_512", messages=[{"role": "user", "content": "你好"}])

Sampling settings a request leaves out take this server's --temperature/--top_p/--max_new_tokens;
temperature 0 means greedy decoding. Each model answers one request at a time (a lock per model; other
requests wait their turn), so answers never mix. A pretrained model (--model_mode 0) continues the last
message as plain text. Reasoning models' <think>/<answer> tags are returned as generated.

The chat page is one self-contained file (HTML, CSS and JavaScript; nothing fetched from elsewhere, so it works
offline). It is served with this server's sampling defaults filled in and a Content-Security-Policy that lets
only its own inline script and style run and lets it talk only to this server.
"""
import argparse
import base64
import hashlib
import json
import math
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from scripts.chat_common import (PRETRAIN_MODE, GenerationStream, HelpFormatter, ModelNotFound,  # noqa: E402
                                 add_model_arguments, add_sampling_arguments, build_prompt, describe, load_model,
                                 modes_table, pick_device, pick_dtype, quiet_libraries, resolve_lora_path,
                                 resolve_model_path)

ROLES = ("system", "developer", "user", "assistant")
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_STOP_SEQUENCES = 4
WEB_PAGE = Path(__file__).resolve().parent / "web" / "chat.html"


# ---------------------------------------------------------------- models

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


def load_served_models(args) -> dict:
    """--model_path folders (several allowed), or the --model_mode/--lora_name lookup: {id: ServedModel}."""
    paths = [resolve_model_path(p) for p in args.model_path] if args.model_path else \
        [resolve_model_path(None, args.model_mode, args.out_dir, args.dim, args.use_moe)]
    lora = resolve_lora_path(args.lora_name, args.out_dir, args.dim, args.use_moe)
    if lora is not None and len(paths) > 1:
        raise ModelNotFound("--lora_name applies to one base model; give a single --model_path")
    device = pick_device(args.device)
    models = {}
    for path in paths:
        model_id = path.resolve().name + (f"+{lora.resolve().name}" if lora else "")
        if model_id in models:
            raise ModelNotFound(f"two models would share the id {model_id!r}; serve folders with different names")
        model, tokenizer = load_model(path, lora, device, pick_dtype(args.dtype, device))
        print(describe(model, path, lora), file=sys.stderr)
        models[model_id] = ServedModel(model_id, model, tokenizer, chat=args.model_mode != PRETRAIN_MODE)
    return models


# ---------------------------------------------------------------- requests

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


# ---------------------------------------------------------------- the chat page

def _csp_hashes(html: str, tag: str) -> str:
    """CSP source expressions for the contents of the page's bare <script>/<style> elements (data blocks such
    as <script type="application/json"> carry attributes, are not run, and need none)."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks) or "'none'"


def chat_page(defaults: dict) -> tuple[bytes, str]:
    """(the chat page with `defaults` filled in, its Content-Security-Policy header)."""
    html = WEB_PAGE.read_text(encoding="utf-8")
    config = json.dumps({k: defaults[k] for k in ("temperature", "top_p", "max_tokens")}).replace("<", "\\u003c")
    html = html.replace("{{DEFAULTS}}", config)
    csp = (f"default-src 'none'; script-src {_csp_hashes(html, 'script')}; style-src {_csp_hashes(html, 'style')}; "
           "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html.encode(), csp


# ---------------------------------------------------------------- responses

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


class ClientGone(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    server_version = "MiniMindAPI/1.0"
    protocol_version = "HTTP/1.1"  # keep-alive; streamed answers use chunked transfer encoding
    timeout = 300  # seconds an idle keep-alive connection is held
    head_only = False  # answering HEAD: the headers of GET without the body

    # -- plumbing
    def log_message(self, format, *args):
        if not self.server.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def send_json(self, status: int, body: dict):
        data = json.dumps(body, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        try:
            self.end_headers()
            if not self.head_only:
                self.wfile.write(data)
        except OSError as e:  # BrokenPipeError, ConnectionResetError, a socket timeout, ...
            raise ClientGone() from e

    def send_page(self):
        data, csp = self.server.page
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Security-Policy", csp)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-cache")
        try:
            self.end_headers()
            if not self.head_only:
                self.wfile.write(data)
        except OSError as e:
            raise ClientGone() from e

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (malformed request line, unsupported method, ...) in OpenAI's JSON shape."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        if getattr(self, "request_version", None) is None:
            self.request_version = "HTTP/1.0"
        try:
            self.send_json(code, APIError(code, message or phrase, code=phrase.lower().replace(" ", "_")).body())
        except ClientGone:
            pass

    def write_chunk(self, data: bytes):
        try:
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        except OSError as e:
            raise ClientGone() from e

    def send_event(self, body):
        self.write_chunk(b"data: " + (body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()) + b"\n\n")

    def read_body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            self.close_connection = True
            raise APIError(411, "chunked request bodies are not supported; send Content-Length", code="length_required")
        try:
            length = int(length) if length is not None else 0
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise APIError(413 if length > 0 else 400, f"request body must be 0..{MAX_BODY_BYTES} bytes",
                           code="invalid_content_length")
        return self.rfile.read(length)

    # -- routes
    def do_HEAD(self):
        self.head_only = True
        try:
            self.do_GET()
        finally:
            self.head_only = False

    def do_GET(self):
        path = self.path.split("?", 1)[0].rstrip("/")
        models = self.server.models
        if path in ("/v1/models", "/models"):
            self.send_json(200, {"object": "list", "data": [m.card() for m in models.values()]})
        elif path.startswith(("/v1/models/", "/models/")):
            name = urllib.parse.unquote(path.split("/models/", 1)[1])
            if name in models:
                self.send_json(200, models[name].card())
            else:
                self.send_json(404, APIError(404, f"The model '{name}' does not exist", param="model",
                                             code="model_not_found").body())
        elif path == "" and self.server.page is not None:
            self.send_page()
        elif path in ("", "/health"):
            self.send_json(200, {"status": "ok", "models": list(models)})
        else:
            self.send_json(404, APIError(404, f"no route GET {path}", code="not_found").body())

    def do_POST(self):
        path = self.path.split("?", 1)[0].rstrip("/")
        self.streaming = False
        try:
            try:
                raw = self.read_body()
                if path not in ("/v1/chat/completions", "/chat/completions"):
                    raise APIError(404, f"no route POST {path} (this server offers /v1/chat/completions)", code="not_found")
                self.chat_completion(parse_chat_request(raw, self.server.models, self.server.defaults))
            except (APIError, ClientGone):
                raise
            except Exception as e:  # a bug or an unexpected failure: answer 500 and keep serving
                self.log_error("request failed: %r", e)
                self.close_connection = True
                if self.streaming:  # the event stream has begun: all that is left is to close it
                    return
                raise APIError(500, f"internal error: {type(e).__name__}: {e}", type_="server_error") from e
        except APIError as e:
            try:
                self.send_json(e.status, e.body())
            except ClientGone:
                self.close_connection = True
        except ClientGone:
            self.close_connection = True

    def do_PUT(self):
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)

    do_DELETE = do_PATCH = do_PUT

    # -- chat
    def chat_completion(self, req: ChatRequest):
        served = req.served
        prompt = served.prompt(req.messages)
        prompt_tokens = len(served.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if prompt_tokens + req.max_tokens > served.context:
            raise APIError(400, f"this model's context is {served.context} tokens; the messages take {prompt_tokens} "
                                f"and max_tokens asks for {req.max_tokens}", param="messages",
                           code="context_length_exceeded")
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        with served.lock:  # one generation per model at a time; other requests queue here
            if req.seed is not None:
                torch.manual_seed(req.seed)
            stream = GenerationStream(served.model, served.tokenizer, prompt, max_new_tokens=req.max_tokens,
                                      temperature=req.temperature, top_p=req.top_p,
                                      repetition_penalty=req.repetition_penalty, stop=req.stop)
            try:
                if req.stream:
                    self.stream_events(cid, created, req, stream)
                else:
                    stream.run()
                    self.send_json(200, completion_body(cid, created, served, stream))
            except ClientGone:
                raise
            except Exception as e:  # a failure inside generation: report it, keep serving
                self.log_error("generation failed: %r", e)
                error = APIError(500, f"generation failed: {type(e).__name__}: {e}", type_="server_error")
                if req.stream:
                    self.send_event(error.body())
                    self.send_event(b"[DONE]")
                    self.write_chunk(b"")
                else:
                    self.send_json(500, error.body())
            finally:
                stream.close()  # the generation thread is done before the next request takes the model

    def stream_events(self, cid, created, req: ChatRequest, stream: GenerationStream):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.streaming = True
        self.end_headers()
        served, usage_flag = req.served, req.include_usage
        self.send_event(chunk_body(cid, created, served, {"role": "assistant", "content": ""}, include_usage=usage_flag))
        for piece in stream:
            self.send_event(chunk_body(cid, created, served, {"content": piece}, include_usage=usage_flag))
        self.send_event(chunk_body(cid, created, served, {}, stream.finish_reason, include_usage=usage_flag))
        if usage_flag:
            self.send_event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": served.id,
                             "choices": [], "usage": usage(stream)})
        self.send_event(b"[DONE]")
        self.write_chunk(b"")  # end of the chunked body


class APIServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its models and, on server_close(), also closes the open (keep-alive)
    connections and waits for their handler threads, so no thread outlives the server holding a model."""

    daemon_threads = True

    def __init__(self, address, models: dict, defaults: dict, quiet: bool = False, web: bool = True):
        self.page = chat_page(defaults) if web else None  # read before binding: a missing file fails early
        super().__init__(address, Handler)
        self.models, self.defaults, self.quiet = models, defaults, quiet
        self._connections, self._connections_lock = set(), threading.Lock()

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address):
        """A client that hung up is routine, not worth a traceback."""
        if isinstance(sys.exc_info()[1], (ClientGone, ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)

    def process_request(self, request, client_address):
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def server_close(self):
        """Stop listening, end every connection (a running generation is cancelled as its client 'leaves'),
        and wait for the handler threads. Call shutdown() first when serve_forever() runs in another thread."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().server_close()  # ThreadingMixIn joins the handler threads here


def make_server(models, host: str = "127.0.0.1", port: int = 8998, *, temperature: float = 0.85, top_p: float = 0.85,
                max_tokens: int = 512, quiet: bool = False, web: bool = True) -> APIServer:
    """A bound server, not yet running: call serve_forever() (e.g. in a thread); shutdown() then server_close()
    stop it. `models` is {id: ServedModel} or a list of ServedModel; port 0 picks a free port (server.port).
    web=False leaves out the chat page (GET / then answers like /health)."""
    if not isinstance(models, dict):
        models = {m.id: m for m in models}
    if not models:
        raise ValueError("make_server needs at least one model")
    return APIServer((host, port), models, dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens), quiet,
                     web)


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, epilog=modes_table(), formatter_class=HelpFormatter)
    add_model_arguments(parser, multiple_paths=True)
    g = add_sampling_arguments(parser, max_new_tokens=512)
    g.title = "sampling defaults (for requests that leave them out)"
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the server to the network")
    g.add_argument("--port", type=int, default=8998, help="port to listen on (0: any free port)")
    g.add_argument("--quiet", action="store_true", help="do not log each request")
    g.add_argument("--no_web", action="store_true", help="do not serve the browser chat page at / (the API only)")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1 or not 0 <= args.temperature <= 2 or not 0 <= args.top_p <= 1:
        parser.error("need --max_new_tokens >= 1, 0 <= --temperature <= 2 and 0 <= --top_p <= 1")
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    try:
        models = load_served_models(args)
    except ModelNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        server = make_server(models, args.host, args.port, temperature=args.temperature, top_p=args.top_p,
                             max_tokens=args.max_new_tokens, quiet=args.quiet, web=not args.no_web)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    base = f"http://{args.host}:{server.port}"
    page = "" if args.no_web else f"; chat page at {base}/"
    print(f"serving {', '.join(models)} at {base}/v1 (OpenAI-compatible){page}; Ctrl-C stops", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
