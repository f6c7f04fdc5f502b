"""Serve trained MiniMind models behind an OpenAI-compatible HTTP API (standard library only).

  POST /v1/chat/completions   messages, model, temperature, top_p, max_tokens (or max_completion_tokens),
                              stream (server-sent events), stream_options.include_usage, stop, seed, n=1;
                              tools, tool_choice ("auto" | "none" | "required" | a named function),
                              parallel_tool_calls (accepted), messages with role "tool" + tool_call_id and
                              assistant messages with tool_calls; chat_template_kwargs {"open_thinking": bool}
                              (or vLLM's "enable_thinking"); also repetition_penalty (not in OpenAI's API).
                              frequency/presence penalties are accepted and ignored.
                              Answers carry message.reasoning_content (the think part) apart from content,
                              message.tool_calls with finish_reason "tool_calls"; streamed: delta.reasoning_content,
                              delta.content and delta.tool_calls (each call whole, once its block is complete).
  GET  /v1/models             the served model ids (a model's id is its folder name)
  GET  /v1/tools              the tools this server runs for its chat page (--tools); not an OpenAI route
  POST /v1/tools/call         {"name", "arguments"} -> {"name", "content"}: runs one of them (for the page)
  GET  /health                {"status": "ok"}
  GET  /                      a chat page for the browser (inference/web/chat.html; --no_web turns it off)

  python scripts/serve_openai_api.py                                  # out/full_sft_512 on 127.0.0.1:8998
  python scripts/serve_openai_api.py --model_mode 2 --lora_name lora_identity
  python scripts/serve_openai_api.py --model_path out/full_sft_512 --model_path out/reason_512
  then open http://127.0.0.1:8998/ in a browser to chat (streamed replies, model picker, sampling controls)

  from openai import OpenAI
  client = OpenAI(base_url="http://127.0.0.1:8998/v1", api_key="none")
  client.chat.completions.create(model="full_sft_512", messages=[{"role": "user", "content": "你好"}])

Sampling settings a request leaves out take this server's --temperature/--top_p/--max_new_tokens;
temperature 0 means greedy decoding. Each model decodes its concurrent requests together (continuous batching,
inference/batching.py: a request joins the running batch between two tokens and leaves it when it ends or its
client hangs up; up to --max_batch at once, later ones wait for a free row), each with its own sampling settings;
a request's greedy answer is normally the same as when it is served alone (padding and batch size change the
float reductions, which can flip a near-tie). A pretrained model (--model_mode 0) continues the last
message as plain text. The think part of a reply (<think>…</think>, also MiniMind2's <think>…</think><answer>…
</answer>) comes back as reasoning_content; <tool_call> blocks come back as tool_calls when the request offers
tools, else stay in the content as written. tool_choice "required" or a named function opens the call in the
prompt (a small model may not call on its own when told to), and such a reply skips the reasoning.

The chat page is one self-contained file (HTML, CSS and JavaScript; nothing fetched from elsewhere, so it works
offline). It is served with this server's sampling defaults filled in and a Content-Security-Policy that lets
only its own inline script and style run and lets it talk only to this server.
"""
import argparse
import signal
import sys

from inference.checkpoints import ModelNotFound, modes_table
from inference.cli import HelpFormatter, add_model_arguments, add_sampling_arguments
from inference.loading import quiet_libraries
from inference.openai_api import ServerTools, load_served_models
from inference.server import make_server
from inference.tools import load_toolbox


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, epilog=modes_table(), formatter_class=HelpFormatter)
    add_model_arguments(parser, multiple_paths=True)
    g = add_sampling_arguments(parser, max_new_tokens=512)
    g.title = "sampling defaults (for requests that leave them out)"
    g = parser.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the server to the network")
    g.add_argument("--port", type=int, default=8998, help="port to listen on (0: any free port)")
    g.add_argument("--quiet", action="store_true", help="do not log each request")
    g.add_argument("--max_batch", type=int, default=32,
                   help="requests a model decodes at once (more wait for a free row); 1 serves them one at a time")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the model for decoding: ~1.3x faster steps on a CPU once compiled, but the "
                        "first requests wait minutes for the compile; worth it for a long-running server only")
    g.add_argument("--no_web", action="store_true", help="do not serve the browser chat page at / (the API only)")
    g.add_argument("--tools", default=None, metavar="SPEC",
                   help="tools the server runs for its chat page, which offers them to the model and shows the calls "
                        "and results: `all` built-in demo tools, names separated by commas, or a JSON file of schemas "
                        "(API clients always run their own tools; this does not change the API)")
    args = parser.parse_args(argv)
    if args.max_batch < 1:
        parser.error("--max_batch must be >= 1")
    if args.max_new_tokens < 1 or not 0 <= args.temperature <= 2 or not 0 <= args.top_p <= 1:
        parser.error("need --max_new_tokens >= 1, 0 <= --temperature <= 2 and 0 <= --top_p <= 1")
    return args


def page_tools(spec: str) -> ServerTools:
    """The --tools toolbox as the server's page tools."""
    toolbox = load_toolbox(spec)
    return ServerTools(toolbox.schemas, lambda name, arguments: toolbox.run({"name": name, "arguments": arguments}).content)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    try:
        models = load_served_models(args.model_path, args.model_mode, args.lora_name, args.out_dir, args.dim,
                                    args.use_moe, args.device, args.dtype, log=lambda line: print(line, file=sys.stderr),
                                    max_batch=args.max_batch, compile=args.compile)
    except ModelNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        tools = page_tools(args.tools) if args.tools else None
    except ValueError as e:
        print(f"error: --tools: {e}", file=sys.stderr)
        return 2
    try:
        server = make_server(models, args.host, args.port, temperature=args.temperature, top_p=args.top_p,
                             max_tokens=args.max_new_tokens, quiet=args.quiet, web=not args.no_web, tools=tools)
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
