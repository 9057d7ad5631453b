#!/usr/bin/python3
"""template_ref.py: the independent reference for kiln's chat templates.

Builds the golden conversation contexts, writes each as JSON (OUT/contexts/<name>.json), and
renders every template of TEMPLATES_DIR with Python's jinja2 configured exactly as Hugging Face
transformers does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, the
{% generation %} tag, raise_exception, strftime_now and transformers' tojson). For each
(template, context) it writes OUT/expected/<template>/<context>.out (the text) or .err (the
message of the exception jinja2 raised). strftime_now() uses $KILN_TEMPLATE_NOW
("YYYY-MM-DD HH:MM:SS"), the same test hook kiln honours.

usage: /usr/bin/python3 template_ref.py TEMPLATES_DIR OUT
"""
import datetime
import json
import os
import sys

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment


class AssistantTracker(jinja2.ext.Extension):
    # transformers' {% generation %} tag: renders its body unchanged when not tracking masks
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        fixed = os.environ.get("KILN_TEMPLATE_NOW")
        now = (datetime.datetime.strptime(fixed, "%Y-%m-%d %H:%M:%S") if fixed
               else datetime.datetime.now())
        return now.strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[AssistantTracker, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                         "description": "Temperature unit"},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for"},
                "max_results": {"type": "integer", "description": "How many results",
                                "default": 5},
            },
            "required": ["query"],
        },
    },
}


def tool_call(id_, name, args):
    return {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}


def contexts():
    base = {"bos_token": "<s>", "eos_token": "</s>"}
    sys_msg = {"role": "system", "content": "You are a helpful assistant."}
    c = {}
    c["system_user"] = {"messages": [sys_msg, {"role": "user", "content": "Hello! Who are you?"}],
                        "add_generation_prompt": True}
    c["user_only_nogen"] = {"messages": [{"role": "user", "content": "What is 2+2?"}],
                            "add_generation_prompt": False}
    c["multi_turn"] = {"messages": [
        sys_msg,
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Tell me a joke about cats."},
    ], "add_generation_prompt": True}
    c["multi_turn_nogen"] = {"messages": [
        {"role": "user", "content": "Name a color."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Green."},
    ], "add_generation_prompt": False}
    c["tools_list"] = {"messages": [
        sys_msg, {"role": "user", "content": "What's the weather in Paris?"}],
        "tools": [WEATHER_TOOL, SEARCH_TOOL], "add_generation_prompt": True}
    c["tool_call_result"] = {"messages": [
        {"role": "user", "content": "What's the weather in Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [tool_call("call_1", "get_weather", {"city": "Paris", "unit": "celsius"})]},
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather",
         "content": "{\"temperature\": 21.5, \"condition\": \"sunny\"}"},
    ], "tools": [WEATHER_TOOL], "add_generation_prompt": True}
    c["parallel_tool_calls"] = {"messages": [
        sys_msg,
        {"role": "user", "content": "Weather in Paris and news about Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            tool_call("call_a", "get_weather", {"city": "Paris"}),
            tool_call("call_b", "search", {"query": "Rome news", "max_results": 3})]},
        {"role": "tool", "tool_call_id": "call_a", "name": "get_weather", "content": "18 C, cloudy"},
        {"role": "tool", "tool_call_id": "call_b", "name": "search", "content": "No news."},
        {"role": "assistant", "content": "Paris is 18 C and cloudy; nothing new in Rome."},
        {"role": "user", "content": "Thanks!"},
    ], "tools": [WEATHER_TOOL, SEARCH_TOOL], "add_generation_prompt": True}
    c["enable_thinking_false"] = {"messages": [
        {"role": "user", "content": "Give me a one-word answer: capital of Japan?"}],
        "add_generation_prompt": True, "enable_thinking": False}
    c["reasoning_content"] = {"messages": [
        {"role": "user", "content": "Is 17 prime?"},
        {"role": "assistant", "content": "Yes, 17 is prime.",
         "reasoning_content": "17 is not divisible by 2, 3 or 5, and 5*5 > 17."},
        {"role": "user", "content": "And 21?"},
    ], "add_generation_prompt": True, "enable_thinking": True}
    c["non_ascii"] = {"messages": [
        {"role": "system", "content": "Réponds en français, s'il te plaît. 你好"},
        {"role": "user", "content": "Ça va? Ünïcödé — 日本語 🙂 \"quotes\" and \\ backslash\ttab"},
        {"role": "assistant", "content": "Très bien, merci ! 😀"},
        {"role": "user", "content": "Écris « bonjour » en chinois."},
    ], "add_generation_prompt": True}
    c["empty_system"] = {"messages": [
        {"role": "system", "content": ""}, {"role": "user", "content": "Hi"}],
        "add_generation_prompt": True}
    c["think_in_content"] = {"messages": [
        {"role": "user", "content": "What is 3*4?"},
        {"role": "assistant", "content": "<think>\n3 times 4 is 12.\n</think>\n\n12"},
        {"role": "user", "content": "And 5*6?"},
    ], "add_generation_prompt": True}
    c["tool_call_string_args"] = {"messages": [
        {"role": "user", "content": "Search for kiln."},
        {"role": "assistant", "content": "Let me search.",
         "tool_calls": [tool_call("call_9", "search", "{\"query\": \"kiln\"}")]},
        {"role": "tool", "tool_call_id": "call_9", "content": "kiln: a furnace."},
    ], "tools": [SEARCH_TOOL], "add_generation_prompt": False}
    out = {}
    for name, ctx in c.items():
        d = dict(base)
        d.update(ctx)
        out[name] = d
    return out


def error_message(e):
    msg = getattr(e, "message", None)
    if msg is None:
        msg = str(e)
    return str(msg)


def main():
    tdir, out = sys.argv[1], sys.argv[2]
    env = make_env()
    ctxs = contexts()
    os.makedirs(os.path.join(out, "contexts"), exist_ok=True)
    for name, ctx in ctxs.items():
        with open(os.path.join(out, "contexts", name + ".json"), "w", encoding="utf-8") as f:
            json.dump(ctx, f, ensure_ascii=False, indent=1)
    for fname in sorted(os.listdir(tdir)):
        if not fname.endswith(".jinja"):
            continue
        tname = fname[:-len(".jinja")]
        edir = os.path.join(out, "expected", tname)
        os.makedirs(edir, exist_ok=True)
        with open(os.path.join(tdir, fname), encoding="utf-8", newline="") as f:
            src = f.read()
        try:
            tpl = env.from_string(src)
        except Exception as e:  # a syntax error: every context gets it
            tpl, parse_err = None, error_message(e)
        for cname in ctxs:
            # the context as kiln will see it: re-read from the JSON file
            with open(os.path.join(out, "contexts", cname + ".json"), encoding="utf-8") as f:
                ctx = json.load(f)
            try:
                if tpl is None:
                    raise RuntimeError(parse_err)
                text, ext = tpl.render(**ctx), ".out"
            except Exception as e:
                text, ext = error_message(e), ".err"
            with open(os.path.join(edir, cname + ext), "w", encoding="utf-8", newline="") as f:
                f.write(text)


if __name__ == "__main__":
    main()
