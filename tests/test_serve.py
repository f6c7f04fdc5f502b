"""scripts/serve_openai_api.py driven by the official `openai` client: model list, plain and streamed
completions, OpenAI-shaped 4xx errors, and concurrent requests that each get their own answer."""
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from transformers import AutoTokenizer

from conftest import ROOT, tiny_config
from model import TOKENIZER_DIR, MiniMindForCausalLM
from inference.chat_format import parse_assistant
from inference.generation import build_prompt, generate
from inference.openai_api import ServedModel
from inference.server import make_server

openai = pytest.importorskip("openai")

MAX_TOKENS = 12


def tiny_random_model(seed):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(tiny_config(initializer_range=0.3)).eval()  # large weights: varied greedy answers


@pytest.fixture(scope="module")
def served():
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    models = [ServedModel("tiny-a", tiny_random_model(0), tokenizer), ServedModel("tiny-b", tiny_random_model(1), tokenizer)]
    server = make_server(models, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {m.id: m for m in models}, server.port
    server.shutdown()
    server.server_close()  # also ends keep-alive connections and joins their threads
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(served):
    with openai.OpenAI(base_url=f"http://127.0.0.1:{served[1]}/v1", api_key="x", max_retries=0, timeout=60) as client:
        yield client


def expected(served_model, text, max_tokens=MAX_TOKENS):
    """The greedy answer computed in-process, without the server: the content part of the generated text."""
    prompt = build_prompt(served_model.tokenizer, [{"role": "user", "content": text}])
    generated = generate(served_model.model, served_model.tokenizer, prompt, max_new_tokens=max_tokens, temperature=0)
    return parse_assistant(generated).content


def ask(client, text, model="tiny-a", **kwargs):
    kwargs = {"max_tokens": MAX_TOKENS, "temperature": 0, **kwargs}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kwargs)


def streamed_text(client, text, model="tiny-a", **kwargs):
    chunks = list(ask(client, text, model, stream=True, **kwargs))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def post_raw(port, body: bytes, path="/v1/chat/completions"):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_models_list(client):
    assert sorted(m.id for m in client.models.list().data) == ["tiny-a", "tiny-b"]
    assert client.models.retrieve("tiny-b").id == "tiny-b"


def test_completion_matches_greedy_generation_and_counts_tokens(client, served):
    models, _ = served
    response = ask(client, "hi")
    answer = response.choices[0].message.content
    assert response.object == "chat.completion" and response.model == "tiny-a"
    assert answer == expected(models["tiny-a"], "hi") and answer.strip()
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason in ("stop", "length")
    prompt_ids = models["tiny-a"].tokenizer(build_prompt(models["tiny-a"].tokenizer, [{"role": "user", "content": "hi"}]),
                                            add_special_tokens=False)["input_ids"]
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert 0 < response.usage.completion_tokens <= MAX_TOKENS
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    # the request's `model` picks the model
    assert ask(client, "hi", model="tiny-b").choices[0].message.content == expected(models["tiny-b"], "hi")


def test_streaming_equals_non_streaming(client):
    for text in ("hi", "你好，请介绍一下你自己。"):
        full = ask(client, text).choices[0].message.content
        streamed, chunks = streamed_text(client, text)
        assert streamed == full
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert len(chunks) > 3  # really streamed, not one lump


def test_stream_usage_and_done_marker(client, served):
    _, chunks = streamed_text(client, "hi", stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    status, body = post_raw(served[1], json.dumps({"model": "tiny-a", "stream": True, "max_tokens": 3,
                                                   "messages": [{"role": "user", "content": "hi"}]}).encode())
    events = [line for line in body.split("\n\n") if line]
    assert status == 200 and all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_stop_sequence_cuts_the_answer(client, served):
    full = ask(client, "hi").choices[0].message.content
    stop = full[3:5]
    cut = full[:full.index(stop)].strip()
    response = ask(client, "hi", stop=[stop])
    assert response.choices[0].message.content == cut and response.choices[0].finish_reason == "stop"
    assert streamed_text(client, "hi", stop=stop)[0] == cut


HI = [{"role": "user", "content": "hi"}]
F = {"type": "function", "function": {"name": "f"}}
CALLS = {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"model": "tiny-a"}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": "hi"}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}, 400, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10 ** 9}, 400, "messages"),
    ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    # tools, tool_choice, tool turns and the thinking switch
    ({"messages": HI, "tools": {"name": "f"}}, 400, "tools"),
    ({"messages": HI, "tools": [{"type": "retrieval"}]}, 400, "tools[0].type"),
    ({"messages": HI, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, 400, "tools[0].function.name"),
    ({"messages": HI, "tools": [F, F]}, 400, "tools[1].function.name"),
    ({"messages": HI, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     400, "tools[0].function.parameters"),
    ({"messages": HI, "tools": [F], "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400, "tool_choice"),
    ({"messages": HI, "tools": [F], "tool_choice": "sometimes"}, 400, "tool_choice"),
    ({"messages": HI, "tool_choice": "required"}, 400, "tool_choice"),
    ({"messages": HI, "tools": [F], "parallel_tool_calls": "yes"}, 400, "parallel_tool_calls"),
    ({"messages": HI + [CALLS, {"role": "tool", "content": "2"}]}, 400, "messages[2].tool_call_id"),
    ({"messages": HI + [CALLS, {"role": "tool", "tool_call_id": "c9", "content": "2"}]}, 400, "messages[2].tool_call_id"),
    ({"messages": HI + [{"role": "tool", "tool_call_id": "c1", "content": "2"}]}, 400, "messages[1].role"),
    ({"messages": HI + [CALLS, HI[0]]}, 400, "messages[1].tool_calls"),
    ({"messages": HI + [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}]},
     400, "messages[1].tool_calls[0].id"),
    ({"messages": HI + [{"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     400, "messages[1].tool_calls[0].function"),
    ({"messages": HI, "chat_template_kwargs": True}, 400, "chat_template_kwargs"),
    ({"messages": HI, "chat_template_kwargs": {"open_thinking": "yes"}}, 400, "chat_template_kwargs.open_thinking"),
    ({"messages": HI, "chat_template_kwargs": {"thinking": True}}, 400, "chat_template_kwargs.thinking"),
    ({"messages": HI, "chat_template_kwargs": {"open_thinking": True, "enable_thinking": False}}, 400,
     "chat_template_kwargs"),
])
def test_bad_requests_get_openai_shaped_errors(served, body, status, param):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    code, text = post_raw(served[1], raw)
    assert code == status
    error = json.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error" and error["param"] == param


def test_client_sees_errors_and_server_keeps_serving(client, served):
    with pytest.raises(openai.NotFoundError):
        ask(client, "hi", model="no-such-model")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny-a", messages=[{"role": "tool", "content": "hi"}])
    assert post_raw(served[1], b"{}", path="/v1/nowhere")[0] == 404
    assert ask(client, "hi").choices[0].message.content == expected(served[0]["tiny-a"], "hi")


def test_concurrent_requests_each_get_their_own_answer(client, served):
    models, _ = served
    jobs = [("hi", "tiny-a", False), ("你是谁？", "tiny-a", True), ("tell me a story", "tiny-a", False),
            ("1+1=?", "tiny-b", True)]
    wanted = [expected(models[model], text) for text, model, _ in jobs]
    assert len(set(wanted)) == len(wanted)  # distinct answers, so a mix-up would show
    results, errors = [None] * len(jobs), []
    start = threading.Barrier(len(jobs))

    def worker(i, text, model, stream):
        try:
            start.wait()
            results[i] = streamed_text(client, text, model)[0] if stream else ask(client, text, model).choices[0].message.content
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and results == wanted


def test_client_leaving_mid_stream_cancels_generation(client, served):
    models, port = served
    body = json.dumps({"model": "tiny-a", "stream": True, "max_tokens": 30000, "temperature": 0,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:  # ~30 s of generation if not cancelled
        conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 10
        while not models["tiny-a"].batcher.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert models["tiny-a"].batcher.active == 1
    deadline = time.monotonic() + 10
    while models["tiny-a"].batcher.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not models["tiny-a"].batcher.active, "generation went on after the client left"
    assert ask(client, "hi").choices[0].message.content == expected(models["tiny-a"], "hi")


def test_concurrent_streams_are_batched_and_one_leaving_spares_the_others(client, served):
    """Eight streaming clients at once: each gets its greedy answer as if alone (computed in-process by transformers'
    generate), they share the model's batch, and a ninth client that hangs up mid-stream leaves them unharmed."""
    models, port = served
    texts = [f"question {i}: {'why ' * i}" for i in range(8)]
    wanted = [expected(models["tiny-a"], text, max_tokens=24) for text in texts]
    rows = []
    hook = models["tiny-a"].model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
    results, errors = [None] * len(texts), []
    start = threading.Barrier(len(texts) + 1)

    def worker(i):
        try:
            start.wait()
            results[i] = streamed_text(client, texts[i], max_tokens=24)[0]
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    body = json.dumps({"model": "tiny-a", "stream": True, "max_tokens": 30000, "temperature": 0,
                       "messages": [{"role": "user", "content": "leaving"}]}).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            start.wait()
            conn.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
        for t in threads:
            t.join(timeout=60)
    finally:
        hook.remove()
    assert not errors and results == wanted
    assert max(rows) >= 4  # decoded together, not one after another
    deadline = time.monotonic() + 10
    while models["tiny-a"].batcher.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not models["tiny-a"].batcher.active


def test_cli_missing_checkpoint_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "serve_openai_api.py"), "--out_dir", str(tmp_path),
                           "--dim", "64"], cwd=ROOT, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'full_sft_64'} not found — produce it with: python train_full_sft.py --dim 64 --out_dir {tmp_path}"]
