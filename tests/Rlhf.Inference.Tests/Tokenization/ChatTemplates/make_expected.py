#!/usr/bin/env python3
"""One-off fixture generator (tests do not run it): renders each template here with jinja2 exactly as transformers'
apply_chat_template(tokenize=False) does -- ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True),
tojson = json.dumps(ensure_ascii=False, ...), raise_exception, strftime_now, tools=None when absent, and the special
tokens of the model's tokenizer_config.json -- and writes expected.json. A case the template rejects through
raise_exception records its message as "error" instead of "expected". strftime_now returns the marker {{DATE}} for
"%d %b %Y"; the test puts the day's date there. Run: python3 make_expected.py (needs python3-jinja2)."""
import json
from pathlib import Path
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = Path(__file__).parent
MODELS = {  # template file -> special tokens as the model's tokenizer_config.json names them (None: not set)
    "Qwen2.5-Instruct.jinja": {"bos_token": None, "eos_token": "<|im_end|>"},
    "Llama-3.2-Instruct.jinja": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "Phi-3.5-mini-instruct.jinja": {"bos_token": "<s>", "eos_token": "<|endoftext|>"},
    "Llama-3.1-8B-Instruct.jinja": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "Mistral-7B-Instruct-v0.3.jinja": {"bos_token": "<s>", "eos_token": "</s>"},
    "SmolLM2-Instruct.jinja": {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"},
    "Phi-3-mini-4k-instruct.jinja": {"bos_token": "<s>", "eos_token": "<|endoftext|>"},
    "Whitespace-blocks.jinja": {"bos_token": "<s>", "eos_token": "</s>"},
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city (°C)",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CASES = {
    "single": ([{"role": "user", "content": "What is 2+2?"}], None, True),
    "system": ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"}], None, True),
    "multi-turn": ([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Héllo \"friend\" ✓"},
                    {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "  Tell me a joke.\n"}], None, True),
    "no-generation-prompt": ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}], None, False),
    "tools": ([{"role": "user", "content": "Weather in Paris?"}], TOOLS, True),
    "tools-multi-turn": ([{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather in Paris?"},
                          {"role": "assistant", "content": "It is sunny."}, {"role": "user", "content": "And in Oslo?"}], TOOLS, True),
    # Templates that check the order of roles raise here (Mistral v0.3); the others render it.
    "user-after-user": ([{"role": "user", "content": "One."}, {"role": "user", "content": "Two."}], None, True),
    # Llama 3.1 puts tools in the first user message and raises when there is none.
    "tools-without-user": ([{"role": "system", "content": "Use tools."}], TOOLS, True),
}

def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

def raise_exception(message):
    raise ValueError(message)

def strftime_now(fmt):
    assert fmt == "%d %b %Y", fmt
    return "{{DATE}}"

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now

out = {}
for name, special in MODELS.items():
    template = env.from_string((HERE / name).read_text(encoding="utf-8"))
    kwargs = {k: v for k, v in special.items() if v is not None}
    out[name] = {"special_tokens": special, "cases": {}}
    for case, (messages, tools, gen) in CASES.items():
        if tools is not None and "tools" not in (HERE / name).read_text(encoding="utf-8"):
            continue
        entry = {"messages": messages, "tools": tools, "add_generation_prompt": gen}
        try:
            entry["expected"] = template.render(messages=messages, tools=tools, documents=None, add_generation_prompt=gen, **kwargs)
        except ValueError as e:  # raise_exception: the test expects a ChatTemplateException that starts with this message
            entry["error"] = str(e)
        out[name]["cases"][case] = entry
(HERE / "expected.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
