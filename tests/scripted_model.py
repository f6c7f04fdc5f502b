"""A tiny MiniMind that writes scripted replies (tool calls, reasoning, answers) through transformers' real
generate(), for tests of the server and the chat page: a random tiny model never calls a tool on its own."""
import json

import pytest
import torch
from transformers import AutoTokenizer

from conftest import ROOT, tiny_config
from model import TOKENIZER_DIR, MiniMindForCausalLM
from inference.chat_format import THINK_OPEN

REFERENCE_TEMPLATE = ROOT.parent / "shared" / "reference" / "minimind3" / "tokenizer_config.json"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}}}]
RESULT = "23 °C, sunny"
REASONING = "The user asks about the weather; I should look it up."
PREAMBLE = "Let me look that up."
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ANSWER = f"It is {RESULT} in Paris."
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def script(prompt: str) -> str:
    """The reply the scripted model writes after `prompt`."""
    if prompt.endswith('"arguments": '):  # tool_choice named the function: the call is open, arguments next
        return '{"city": "Paris"}}\n</tool_call>'
    if prompt.endswith('{"name": "'):  # tool_choice "required": the model picks the function
        return 'add", "arguments": {"a": 2, "b": 3}}\n</tool_call>'
    reply = ANSWER if RESULT in prompt else f"{PREAMBLE}\n{CALL_TEXT}"
    if prompt.rstrip().endswith(THINK_OPEN):
        reply = f"{REASONING}\n</think>\n\n{reply}"
    return reply


class ScriptedModel(MiniMindForCausalLM):
    """A tiny MiniMind whose every step's logits put all the probability on the next token of script(prompt),
    then on the end of turn; `prompts` records the prompts it was given."""

    def __init__(self, tokenizer):
        torch.manual_seed(0)
        super().__init__(tiny_config(vocab_size=len(tokenizer)))
        self.tokenizer, self.plan, self.step, self.prompts = tokenizer, [], 0, []
        self.eval()

    def forward(self, input_ids, *args, **kwargs):
        out = super().forward(input_ids, *args, **kwargs)
        if input_ids.shape[1] > 1:  # the prompt (prefill): a new reply begins
            prompt = self.tokenizer.decode(input_ids[0])
            self.prompts.append(prompt)
            self.plan = self.tokenizer.encode(script(prompt), add_special_tokens=False) + [self.tokenizer.eos_token_id]
            self.step = 0
        logits = torch.full_like(out.logits, -1e4)
        logits[:, -1, self.plan[min(self.step, len(self.plan) - 1)]] = 0.0
        self.step += 1
        out.logits = logits
        return out


def tokenizer_variant(name):
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    if name in ("single-token-tags", "minimind3-template"):
        tokenizer.add_tokens(["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"])
    if name == "minimind3-template":
        if not REFERENCE_TEMPLATE.exists():
            pytest.skip(f"needs MiniMind-3's template at {REFERENCE_TEMPLATE}")
        tokenizer.chat_template = json.loads(REFERENCE_TEMPLATE.read_text(encoding="utf-8"))["chat_template"]
    return tokenizer
