"""The HTTP side of the OpenAI-compatible server: routes, keep-alive, streaming as server-sent events, client
disconnects, the chat page and its Content-Security-Policy. Requests are validated and answered by
inference/openai_api.py; generation is inference/batching.py's (each model's concurrent requests decoded in one
batch by one worker thread; the handler threads only wait for their tokens and write them out)."""
import base64
import hashlib
import json
import re
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .batching import BatchedStream
from .openai_api import (APIError, ChatRequest, ServerTools, StreamDeltas, chunk_body, completion_body, finish_reason,
                         parse_chat_request, usage)

MAX_BODY_BYTES = 8 * 1024 * 1024
WEB_PAGE = Path(__file__).resolve().parent / "web" / "chat.html"


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


# ---------------------------------------------------------------- HTTP

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
        elif path in ("/v1/tools", "/tools"):  # the tools this server runs for its chat page
            tools = self.server.tools
            self.send_json(200, {"object": "list", "data": tools.schemas if tools else []})
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
                if path in ("/v1/tools/call", "/tools/call") and self.server.tools is not None:
                    self.send_json(200, self.server.tools.call(raw))
                    return
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
        prompt = req.prompt()
        prompt_tokens = len(served.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if prompt_tokens + req.max_tokens > served.context:
            raise APIError(400, f"this model's context is {served.context} tokens; the messages take {prompt_tokens} "
                                f"and max_tokens asks for {req.max_tokens}", param="messages",
                           code="context_length_exceeded")
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        stream = served.stream(req, prompt)  # decoded in one batch with the model's other requests
        try:
            if req.stream:
                self.stream_events(cid, created, req, stream)
            else:
                stream.run()
                self.send_json(200, completion_body(cid, created, req, stream))
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
            stream.close()  # a client that left (or a stop string) frees its row in the batch

    def stream_events(self, cid, created, req: ChatRequest, stream: BatchedStream):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.streaming = True
        self.end_headers()
        served, usage_flag = req.served, req.include_usage
        self.send_event(chunk_body(cid, created, served, {"role": "assistant", "content": ""}, include_usage=usage_flag))
        deltas = StreamDeltas(req)
        for piece in stream:
            for delta in deltas.feed(piece):
                self.send_event(chunk_body(cid, created, served, delta, include_usage=usage_flag))
        for delta in deltas.finish():
            self.send_event(chunk_body(cid, created, served, delta, include_usage=usage_flag))
        self.send_event(chunk_body(cid, created, served, {}, finish_reason(stream, deltas.calls > 0),
                                   include_usage=usage_flag))
        if usage_flag:
            self.send_event({"id": cid, "object": "chat.completion.chunk", "created": created, "model": served.id,
                             "choices": [], "usage": usage(stream)})
        self.send_event(b"[DONE]")
        self.write_chunk(b"")  # end of the chunked body


class APIServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its models and, on server_close(), also closes the open (keep-alive)
    connections and waits for their handler threads, so no thread outlives the server holding a model."""

    daemon_threads = True
    # connections the kernel holds before accept(): socketserver's 5 made a burst of 16 clients wait for TCP's
    # 1 s SYN retry (or be reset) while the accept loop was busy
    request_queue_size = 128

    def __init__(self, address, models: dict, defaults: dict, quiet: bool = False, web: bool = True,
                 tools: ServerTools | None = None):
        self.page = chat_page(defaults) if web else None  # read before binding: a missing file fails early
        super().__init__(address, Handler)
        self.models, self.defaults, self.quiet, self.tools = models, defaults, quiet, tools
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
        for served in self.models.values():
            served.batcher.stop()  # its worker thread ends; a later request would start a new one


def make_server(models, host: str = "127.0.0.1", port: int = 8998, *, temperature: float = 0.85, top_p: float = 0.85,
                max_tokens: int = 512, quiet: bool = False, web: bool = True,
                tools: ServerTools | None = None) -> APIServer:
    """A bound server, not yet running: call serve_forever() (e.g. in a thread); shutdown() then server_close()
    stop it. `models` is {id: ServedModel} or a list of ServedModel; port 0 picks a free port (server.port).
    web=False leaves out the chat page (GET / then answers like /health). `tools` (a ServerTools) are functions the
    server runs for its chat page, which then offers them to the model and shows the calls and their results."""
    if not isinstance(models, dict):
        models = {m.id: m for m in models}
    if not models:
        raise ValueError("make_server needs at least one model")
    return APIServer((host, port), models, dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens), quiet,
                     web, tools)
