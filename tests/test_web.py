"""The browser chat page of scripts/serve_openai_api.py, end to end in headless Chromium driven by Playwright.

The browser tests start the server on a free loopback port with two tiny random models, slowed down per token so
that a reply visibly streams, and use the page as a person would: type, press Enter, read the bubbles. They skip
with a reason where the `playwright` package or a Chromium binary is missing (`.ci/run` installs Debian's
`chromium`; CHROMIUM_PATH points at another binary). Screenshots are kept in tests/artifacts/ (git-ignored) for CI
to collect."""
import json
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from transformers import AutoTokenizer

from conftest import ROOT, skip_unless_required, tiny_config
from model import TOKENIZER_DIR, MiniMindForCausalLM
from inference.chat_format import parse_assistant
from inference.generation import generate
from inference.openai_api import ServedModel, ServerTools
from inference.server import make_server

ARTIFACTS = ROOT / "tests" / "artifacts"
MAX_TOKENS = 24
TOKEN_DELAY = 0.04  # seconds per generated token in the browser tests: ~1 s per reply, plenty of partial states
TIMEOUT_MS = 20_000


class RecordingModel(ServedModel):
    """A served tiny model that remembers the messages of every request and can be slowed down per token."""

    def __init__(self, model_id, seed, tokenizer):
        torch.manual_seed(seed)
        model = MiniMindForCausalLM(tiny_config(initializer_range=0.3)).eval()  # large weights: varied answers
        super().__init__(model_id, model, tokenizer)
        self.requests, self.thinking, self.delay = [], [], 0.0
        model.register_forward_pre_hook(lambda module, args: time.sleep(self.delay))

    def prompt(self, messages, tools=None, open_thinking=False):
        self.requests.append(messages)
        self.thinking.append(open_thinking)
        return super().prompt(messages, tools, open_thinking)

    def greedy(self, messages, max_tokens=MAX_TOKENS):
        """The answer's content the server gives at temperature 0, computed in-process (without the delay)."""
        delay, self.delay = self.delay, 0.0
        try:
            return parse_assistant(generate(self.model, self.tokenizer, super().prompt(messages),
                                            max_new_tokens=max_tokens, temperature=0)).content
        finally:
            self.delay = delay


class Server:
    def __init__(self, models, **kwargs):
        self.models = {m.id: m for m in models}
        self.httpd = make_server(models, "127.0.0.1", 0, quiet=True, **kwargs)
        self.url = f"http://127.0.0.1:{self.httpd.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def server(tokenizer):
    server = Server([RecordingModel("tiny-a", 0, tokenizer), RecordingModel("tiny-b", 1, tokenizer)],
                    temperature=0.7, top_p=0.9, max_tokens=77)
    yield server
    server.stop()


def get(url):
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, dict(response.headers), response.read().decode()


# ---------------------------------------------------------------- the page as served (no browser needed)

def test_page_is_served_at_root_self_contained_with_strict_csp(server):
    status, headers, html = get(server.url + "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<title>MiniMind chat</title>" in html
    # the server's sampling defaults are filled in for the page's controls
    defaults = re.search(r'<script type="application/json" id="defaults">(.*?)</script>', html, re.S).group(1)
    assert json.loads(defaults) == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 77}
    # nothing is loaded from another host: the page works offline
    assert "://" not in html and not re.search(r"""(src|href)\s*=\s*["']//""", html)
    csp = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert "unsafe" not in headers["Content-Security-Policy"]
    assert csp["script-src"].startswith("'sha256-") and csp["style-src"].startswith("'sha256-")
    assert headers["X-Content-Type-Options"] == "nosniff"
    head = urllib.request.urlopen(urllib.request.Request(server.url + "/", method="HEAD"), timeout=30)
    assert head.status == 200 and head.headers["Content-Length"] == str(len(html.encode())) and head.read() == b""
    # the API and the health check are unchanged
    assert json.loads(get(server.url + "/health")[2])["status"] == "ok"
    assert [m["id"] for m in json.loads(get(server.url + "/v1/models")[2])["data"]] == ["tiny-a", "tiny-b"]


def test_web_false_leaves_the_page_out(tokenizer):
    server = Server([ServedModel("tiny", MiniMindForCausalLM(tiny_config()).eval(), tokenizer)], web=False)
    try:
        status, headers, body = get(server.url + "/")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert json.loads(body) == {"status": "ok", "models": ["tiny"]}
    finally:
        server.stop()


# ---------------------------------------------------------------- in the browser

@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_unless_required("needs the playwright package (pip install -r requirements-dev.txt)", "REQUIRE_BROWSER")
    chromium = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        skip_unless_required("needs a Chromium binary: apt-get install chromium (or set CHROMIUM_PATH)", "REQUIRE_BROWSER")
    with sync_playwright() as playwright:
        # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


class Page:
    """A page on the chat UI that records what it requested and any script error or console error."""

    def __init__(self, browser, url, **context_options):
        self.context = browser.new_context(**context_options)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.requests, self.errors = [], []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.goto(url + "/")
        self.page.wait_for_function("() => document.querySelector('#model option').value !== ''")  # models listed
        self.prompt = self.page.get_by_label("Message")

    def send(self, text):
        """Type a message and press Enter; returns once the reply is complete (no bubble is busy)."""
        self.prompt.fill(text)
        self.prompt.press("Enter")
        self.wait_idle()

    def wait_idle(self):
        self.page.wait_for_function("() => !document.querySelector('[aria-busy=true]') "
                                    "&& document.getElementById('stop').hidden")

    def replies(self):
        return self.page.locator(".message.assistant .text").all_text_contents()

    def error(self):
        return self.page.locator("#error").text_content()

    def close(self):
        self.context.close()


@pytest.fixture
def page(browser, server):
    for model in server.models.values():
        model.requests.clear()
        model.delay = TOKEN_DELAY
    page = Page(browser, server.url)
    yield page
    page.close()


def watch_streaming(page):
    """Record, on every change of the conversation, the last reply's text length and whether it is still busy."""
    page.page.evaluate("""() => {
        window.seen = [];
        new MutationObserver(() => {
            const replies = document.querySelectorAll('.message.assistant');
            const last = replies[replies.length - 1];
            if (last) window.seen.push([last.querySelector('.text').textContent.length,
                                        last.getAttribute('aria-busy') === 'true' && last.classList.contains('streaming')]);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
    }""")


def partial_lengths(page):
    return sorted({length for length, busy in page.page.evaluate("window.seen") if busy and length > 0})


def test_two_turn_chat_streams_keeps_history_and_screenshot(page, server):
    p = page.page
    model = server.models["tiny-b"]
    assert p.locator("#model option").all_text_contents() == ["tiny-a", "tiny-b"]
    assert p.get_by_label("Max tokens").input_value() == "77"  # the server's defaults
    p.get_by_label("Model").select_option("tiny-b")
    p.get_by_label("Temperature").fill("0")
    p.get_by_label("Max tokens").fill(str(MAX_TOKENS))

    first = [{"role": "user", "content": "hi"}]
    answer1 = model.greedy(first)
    assert answer1.strip() and not any(tag in answer1 for tag in ("<think>", "</think>", "<answer>"))
    watch_streaming(page)
    page.send("hi")
    partial = partial_lengths(page)
    assert len(partial) >= 3, f"the reply did not appear piece by piece: {p.evaluate('window.seen')}"
    assert sum(length < len(answer1.strip()) for length in partial) >= 2  # seen before it was complete
    assert page.replies() == [answer1.strip()]
    assert model.requests[-1] == first
    assert p.locator(".message.user .text").all_text_contents() == ["hi"]
    assert p.evaluate("document.activeElement.id") == "prompt"  # focus stays in the message box

    second = first + [{"role": "assistant", "content": answer1}, {"role": "user", "content": "你好，再说一次？"}]
    answer2 = model.greedy(second)
    page.send("你好，再说一次？")
    assert model.requests[-1] == second  # the second turn carried the whole conversation
    assert page.replies() == [answer1.strip(), answer2.strip()]
    assert not server.models["tiny-a"].requests  # the picker chose the model

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web_chat.png"
    shot.unlink(missing_ok=True)
    p.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 1000
    print(f"screenshot: {shot}")
    assert all(url.startswith(server.url + "/") for url in page.requests), page.requests  # nothing from elsewhere
    assert not page.errors


def test_keyboard_stop_and_clear(page, server):
    p = page.page
    model = server.models["tiny-a"]
    assert p.evaluate("document.activeElement.id") == "prompt"  # focused on load: type right away
    p.get_by_label("Max tokens").fill("12")
    page.prompt.focus()
    page.prompt.type("line one")
    page.prompt.press("Shift+Enter")
    page.prompt.type("line two")
    assert page.prompt.input_value() == "line one\nline two" and not model.requests  # Shift+Enter is a new line
    page.prompt.press("Enter")
    page.wait_idle()
    assert model.requests[-1] == [{"role": "user", "content": "line one\nline two"}]
    assert page.prompt.input_value() == ""

    # Escape stops a reply mid-way; what was said so far stays in the conversation
    model.delay = 0.3
    page.prompt.fill("tell me more")
    page.prompt.press("Enter")
    p.wait_for_function("() => document.querySelector('.message.assistant:last-of-type .text').textContent.length > 0")
    page.prompt.press("Escape")
    page.wait_idle()
    assert p.locator(".message.assistant .note").last.text_content() == "Stopped."
    assert p.get_by_role("button", name="Send").is_visible()
    model.delay = TOKEN_DELAY

    p.get_by_role("button", name="New chat").click()
    assert p.locator(".message").count() == 0 and not page.error()
    assert p.evaluate("document.activeElement.id") == "prompt"  # focus back in the message box
    page.send("again")
    assert model.requests[-1] == [{"role": "user", "content": "again"}]  # history was cleared
    assert not page.errors


def sse(*events):
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)


def delta(text):
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


def test_think_part_is_collapsed_and_model_text_is_never_html(page):
    p = page.page
    bodies = [
        sse(delta("<thi"), delta("nk>step <b>1</b>\n"), delta("</think>\n<answer>"),
            delta('<img src=x onerror="window.pwned=1">42'), delta("</answer>"), "[DONE]"),
        sse(delta("already thinking"), delta("</think>the answer"), "[DONE]"),  # the template opened <think>
    ]
    p.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"}, body=bodies.pop(0)))
    page.send("2*21?")
    reply = p.locator(".message.assistant").last
    think = reply.locator("details.think")
    assert think.is_visible() and not think.evaluate("d => d.open")  # shown, collapsed
    assert think.locator("summary").text_content() == "Reasoning"
    assert think.locator(".think-text").text_content() == "step <b>1</b>"
    assert reply.locator(".text").text_content() == '<img src=x onerror="window.pwned=1">42'  # as text, apart
    assert p.locator("img, b").count() == 0 and p.evaluate("window.pwned") is None
    think.locator("summary").focus()
    p.keyboard.press("Enter")  # the reasoning opens from the keyboard
    assert think.evaluate("d => d.open") and think.locator(".think-text").is_visible()

    page.send("and?")
    reply = p.locator(".message.assistant").last
    assert reply.locator(".think-text").text_content() == "already thinking"
    assert reply.locator(".text").text_content() == "the answer"
    assert not page.errors


def test_request_errors_are_shown_readably(page, server):
    p = page.page
    # the server refuses the request (the model's context is too small for max_tokens)
    p.get_by_label("Max tokens").fill("100000")
    page.send("hi")
    assert re.fullmatch(r"The server answered 400: this model's context is \d+ tokens.*", page.error())
    assert p.locator(".message.user.failed").count() == 1 and p.locator(".message.assistant").count() == 0
    assert page.prompt.input_value() == "hi"  # the text is back, Enter tries again
    assert p.get_by_role("alert").text_content() == page.error()
    # a field the server would refuse anyway is caught in the page, and focused
    p.get_by_label("Temperature").fill("5")
    page.prompt.press("Enter")
    assert page.error() == "Temperature must be a number from 0 to 2."
    assert p.evaluate("document.activeElement.id") == "temperature"
    p.get_by_label("Temperature").fill("0")
    p.get_by_label("Max tokens").fill("8")
    page.send("hi")  # a good request clears the error, and the failed turn is not part of the history
    assert page.error() == "" and server.models["tiny-a"].requests[-1] == [{"role": "user", "content": "hi"}]

    # the stream reports an error half-way
    p.route("**/v1/chat/completions", lambda route: route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"},
        body=sse(delta("partial"), {"error": {"message": "generation failed: RuntimeError: boom"}}, "[DONE]")))
    page.send("hello")
    assert page.error() == "The reply failed: generation failed: RuntimeError: boom"
    assert p.locator(".message.assistant .note").last.text_content() == "Incomplete reply."
    assert not [e for e in page.errors if e.startswith("page error")]  # the 400 above is logged, no script broke


def test_server_down_is_reported(browser, tokenizer):
    server = Server([ServedModel("tiny", MiniMindForCausalLM(tiny_config()).eval(), tokenizer)])
    page = Page(browser, server.url)
    try:
        assert page.page.locator("#model option").all_text_contents() == ["tiny"]
        server.stop()
        page.send("anyone there?")
        assert page.error().startswith(f"Cannot reach the MiniMind server at {server.url.split('//')[1]}")
        assert page.page.locator(".message.user.failed").count() == 1
        assert page.prompt.input_value() == "anyone there?"
    finally:
        page.close()


def test_phone_width(browser, server):
    for model in server.models.values():
        model.delay = 0.0
    page = Page(browser, server.url, viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True)
    p = page.page
    try:
        assert not p.get_by_label("Temperature").is_visible()  # the settings are folded away on a phone
        assert p.get_by_label("Message").bounding_box()["y"] > 740 - 150  # the message box sits at the bottom
        p.locator("summary", has_text="Settings").tap()
        p.get_by_label("Max tokens").fill("8")
        page.send("hello from a phone")
        assert len(page.replies()) == 1 and page.replies()[0]
        assert p.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling
        for label in ("Model", "Temperature", "Top-p", "Max tokens", "Message"):
            box = p.get_by_label(label).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360, (label, box)
        for name in ("Send", "New chat"):
            box = p.get_by_role("button", name=name).bounding_box()
            assert box and box["x"] + box["width"] <= 360 and box["y"] + box["height"] <= 740 and box["height"] >= 36
        ARTIFACTS.mkdir(exist_ok=True)
        p.screenshot(path=str(ARTIFACTS / "web_chat_phone.png"))
        assert not page.errors
    finally:
        page.close()


# ---------------------------------------------------------------- thinking switch, reasoning and tool calls

def test_thinking_switch_is_sent_and_reasoning_is_shown_apart(page, server):
    p = page.page
    model = server.models["tiny-a"]
    p.get_by_label("Max tokens").fill("6")
    bodies = []

    def through(route):  # to the real server, noting what the page asked for
        bodies.append(route.request.post_data_json)
        route.continue_()

    p.route("**/v1/chat/completions", through)
    page.send("hi")
    assert bodies[-1]["chat_template_kwargs"] == {"open_thinking": False} and model.thinking[-1] is False
    p.get_by_label("Think").check()
    page.send("think first")
    assert bodies[-1]["chat_template_kwargs"] == {"open_thinking": True} and model.thinking[-1] is True

    # a reply whose reasoning comes apart, as reasoning_content deltas
    p.unroute("**/v1/chat/completions")
    reasoning = [{"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"reasoning_content": text},
                                                                   "finish_reason": None}]} for text in ("6*7 ", "is 42")]
    p.route("**/v1/chat/completions", lambda route: (bodies.append(route.request.post_data_json), route.fulfill(
        status=200, headers={"Content-Type": "text/event-stream"},
        body=sse(*reasoning, delta("The answer is "), delta("42."), "[DONE]"))))
    page.send("6*7?")
    reply = p.locator(".message.assistant").last
    think = reply.locator("details.think")
    assert think.is_visible() and not think.evaluate("d => d.open")
    assert think.locator("summary").text_content() == "Reasoning"
    assert think.locator(".think-text").text_content() == "6*7 is 42"
    assert reply.locator(".text").text_content() == "The answer is 42."
    page.send("and again?")  # the reasoning goes back with the reply, apart from its content
    assert bodies[-1]["messages"][-2] == {"role": "assistant", "content": "The answer is 42.",
                                          "reasoning_content": "6*7 is 42"}
    assert not page.errors


@pytest.fixture
def tool_server(tokenizer):
    from scripted_model import TOOLS, ScriptedModel
    ran = []

    def run(name, arguments):
        ran.append((name, arguments))
        if name == "add":
            raise ValueError("add is broken today")
        return "23 °C, sunny"

    server = Server([ServedModel("scripted", ScriptedModel(tokenizer), tokenizer)], tools=ServerTools(TOOLS, run))
    server.ran = ran
    yield server
    server.stop()


def test_server_tools_routes(tool_server):
    from scripted_model import TOOLS
    assert json.loads(get(tool_server.url + "/v1/tools")[2])["data"] == TOOLS

    def call(body):
        request = urllib.request.Request(tool_server.url + "/v1/tools/call", data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert call({"name": "get_weather", "arguments": '{"city": "Paris"}'}) == (
        200, {"name": "get_weather", "content": "23 °C, sunny"})
    assert call({"name": "add", "arguments": {"a": 1}}) == (
        200, {"name": "add", "content": "error: ValueError: add is broken today"})  # the model reads the failure
    status, body = call({"name": "rm", "arguments": {}})
    assert status == 404 and body["error"]["param"] == "name"
    status, body = call({"name": "add", "arguments": "{oops"})
    assert status == 400 and body["error"]["param"] == "arguments"
    assert tool_server.ran == [("get_weather", {"city": "Paris"}), ("add", {"a": 1})]


def test_tool_calls_run_and_show_folded_with_their_results(browser, tool_server):
    from scripted_model import ANSWER, PREAMBLE, RESULT, USER
    page = Page(browser, tool_server.url)
    p = page.page
    try:
        tools_switch = p.get_by_label("Tools")
        assert tools_switch.is_visible() and tools_switch.is_checked()  # the server runs tools: offered by default
        page.send(USER[0]["content"])
        first, second = p.locator(".message.assistant").all()
        assert first.locator(".text").text_content() == PREAMBLE
        call = first.locator("details.tool")
        assert call.count() == 1 and not call.evaluate("d => d.open")  # folded
        assert call.locator("summary").text_content() == "Tool call: get_weather → done"
        call.locator("summary").click()
        assert json.loads(call.locator(".tool-args").text_content()) == {"city": "Paris"}
        assert call.locator(".tool-result").text_content() == RESULT and call.locator(".tool-result").is_visible()
        assert second.locator(".text").text_content() == ANSWER  # the model answered from the result
        assert tool_server.ran == [("get_weather", {"city": "Paris"})]
        history = tool_server.models["scripted"].model.prompts
        assert len(history) == 2 and RESULT in history[1] and RESULT not in history[0]
        ARTIFACTS.mkdir(exist_ok=True)
        p.screenshot(path=str(ARTIFACTS / "web_chat_tools.png"), full_page=True)
        assert not page.errors
    finally:
        page.close()
