#!/usr/bin/python3
"""template_ref.py: the independent reference for kiln's chat templates.

Builds the golden conversation contexts, writes each as JSON (OUT/contexts/<name>.json), and
renders every template of TEMPLATES_DIR with Python's jinja2 configured exactly as Hugging Face
transformers does (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, the
{% generation %} tag, raise_exception, strftime_now and transformers' tojson). For each
(template, context) it writes OUT/expected/<template>/<context>.out (the text) or .err (the
message of the exception jinja2 raised). strftime_now() uses $KILN_TEMPLATE_NOW
("YYYY-MM-DD HH:MM:SS"), the same test hook kiln honours.

Extra template sources may follow: a GGUF file (its tokenizer.chat_template, which kiln reads
with `-m`) or a tokenizer_config.json (its chat_template). OUT/sources/<template> holds the kiln
arguments that select each template.

usage: /usr/bin/python3 template_ref.py TEMPLATES_DIR OUT [MODEL.gguf | tokenizer_config.json]...
"""
import datetime
import json
import os
import random
import struct
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
    c["content_parts"] = {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "Describe this:"},
                                     {"type": "text", "text": "a red apple"}]},
    ], "add_generation_prompt": True}
    c["tool_nested_args"] = {"messages": [
        {"role": "user", "content": "Plan a trip."},
        {"role": "assistant", "tool_calls": [tool_call("call_x", "plan", {
            "city": "Zürich", "days": 3, "budget": 1250.75, "flexible": True, "notes": None,
            "stops": [{"name": "Café Odeon", "hours": [9, 17]}], "tags": []})]},
        {"role": "tool", "tool_call_id": "call_x", "content": "{\"ok\": true}"},
        {"role": "assistant", "content": "Done: 3 days in Zürich."},
    ], "tools": [WEATHER_TOOL], "add_generation_prompt": False}
    c["system_only"] = {"messages": [{"role": "system", "content": "You are terse."}],
                        "add_generation_prompt": True}
    c["tools_thinking"] = {"messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Need the tool.",
         "tool_calls": [tool_call("call_o", "get_weather", {"city": "Oslo"})]},
        {"role": "tool", "tool_call_id": "call_o", "content": "-2 C, snow"},
    ], "tools": [WEATHER_TOOL], "add_generation_prompt": True, "enable_thinking": True}
    c["user_name_field"] = {"messages": [
        {"role": "user", "name": "alice", "content": "Hi, I am Alice."},
        {"role": "assistant", "content": " Hello Alice! "},
        {"role": "user", "content": "  spaces around  "},
    ], "add_generation_prompt": True}
    long_msgs = [{"role": "system", "content": "Long session."}]
    for i in range(40):
        long_msgs.append({"role": "user", "content": "Step %d: continue." % i})
        if i % 3 == 0:
            long_msgs.append({"role": "assistant", "content": "",
                              "tool_calls": [tool_call("call_%d" % i, "search", {"query": "step %d" % i})]})
            long_msgs.append({"role": "tool", "tool_call_id": "call_%d" % i, "content": "found %d" % i})
        long_msgs.append({"role": "assistant", "content": "Done with step %d." % i})
    c["long_conversation"] = {"messages": long_msgs, "tools": [SEARCH_TOOL], "add_generation_prompt": False}
    out = {}
    for name, ctx in c.items():
        d = dict(base)
        if name != "user_only_nogen":
            # as transformers' apply_chat_template (and vLLM) call render(): tools and documents
            # are always passed, None when absent; one context keeps them undefined instead
            d.update({"tools": None, "documents": None})
        d.update(ctx)
        out[name] = d
    return out


# Small templates exercising one behaviour each (whitespace control, scoping, Python repr and
# arithmetic, filters, tests, methods, errors), rendered with SNIPPET_CONTEXT.
SNIPPET_CONTEXT = {
    "s": "  Hello, World  ", "n": 7, "f": 2.5, "neg": -3, "b": True, "none": None,
    "l": [3, 1, 2], "words": ["b", "A", "c"], "d": {"z": 1, "a": [1, 2], "m": {"k": "v"}},
    "msgs": [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "yo", "tool_calls": [{"name": "f"}]}],
    "uni": "héllo wörld 日本 🙂", "big": 12345678901234, "tiny": 1e-07, "e16": 1e16,
    "q": "it's \"quoted\"", "nl": "a\nb\r\nc",
}
SNIPPETS = [
    "{{ s }}|{{ n }}|{{ f }}|{{ neg }}|{{ b }}|{{ none }}|{{ l }}|{{ d }}|{{ msgs[2] }}",
    "{{ [1, 'a', None, True, 1.5, (1,), (1, 2), {'k': (1, 2)}] }}|{{ q }}|{{ [q] }}|{{ ['a\nb'] }}",
    "{{ 7 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 10 / 5 }}",
    "{{ 0.1 + 0.2 }} {{ 1e20 }} {{ e16 }} {{ tiny }} {{ 1.0 }} {{ 100.0 }} {{ 1/3 }} {{ big * 1000 }} {{ 3.0 * 2 }} {{ f // 1 }}",
    "{{ 'ab' * 3 }}{{ 2 * 'x' }}{{ [1] * 2 }}{{ 'a' ~ 1 ~ none ~ b }}{{ 'a' + 'b' }}{{ [1] + [2] }}",
    "{{ 1 < 2 < 3 }} {{ 1 < 3 < 2 }} {{ 'a' in 'cat' }} {{ 1 in l }} {{ 'z' in d }} {{ 'q' not in d }} {{ 1 == 1.0 }} {{ true == 1 }}",
    "{{ n and 'x' }}|{{ 0 or 'y' }}|{{ none or [] }}|{{ not n }}|{{ 'yes' if b else 'no' }}|{{ 'yes' if none }}|",
    "{% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ x }};{% endfor %}",
    "{% for x in l if x > 1 %}{{ loop.index }}:{{ x }} {% else %}empty{% endfor %}{% for x in [] %}x{% else %}empty{% endfor %}",
    "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}",
    "{% for x in l %}{% if x == 1 %}{% continue %}{% endif %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% endfor %}",
    "{% for m in msgs %}{{ loop.previtem.role if loop.previtem is defined else '-' }}>{{ loop.nextitem.role if loop.nextitem is defined else '-' }} {% endfor %}",
    "{% for x in 'abc' %}{{ loop.cycle('o', 'e') }}{{ x }}{% endfor %}",
    "{% set x = 1 %}{% for i in l %}{{ x }}{% set x = 2 %}{{ x }}{% endfor %}{{ x }}",
    "{% set ns = namespace(c=0, items=[]) %}{% for i in l %}{% set ns.c = ns.c + i %}{% set ns.items = ns.items + [i] %}{% endfor %}{{ ns.c }}{{ ns.items }}",
    "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t = (1, 2) %}{{ t }}{% set c = [a, b] %}{{ c }}",
    "{% set blk %}  inner {{ n }}  {% endset %}[{{ blk }}]{% set up | upper %}shout{% endset %}{{ up }}",
    "{% macro m(a, b=2, c='x') %}{{ a }}-{{ b }}-{{ c }}{% endmacro %}{{ m(1) }} {{ m(1, 3) }} {{ m(1, c='z') }} {{ m(a=5) }}",
    "{% macro m(a) %}{{ a }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, k=4) }}",
    "{% macro outer() %}<{{ caller() }}>{% endmacro %}{% call outer() %}body {{ n }}{% endcall %}",
    "{% macro f(n) %}{% if n > 0 %}{{ n }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(5) }}",
    "{% filter upper %}abc {{ s }}{% endfilter %}",
    "a\n  {% if true %}\n    x\n  {% endif %}\nb\n{# comment #}\nc {{- ' d ' -}} e\n  {%- if true %} f {% endif -%}\n g",
    "  {% if true %}yes{% endif %}\n\n  {%+ if true %}keep{% endif %}\n  {% if true +%}\nnotrim{% endif %}\n{% raw %}{{ not parsed }}{% endraw %}",
    "{{ s | trim }}|{{ s | upper }}|{{ s | lower }}|{{ s | length }}|{{ uni | length }}|{{ uni | upper }}|{{ 'hello world' | title }}|{{ 'hELLO' | capitalize }}",
    "{{ l | sort }}|{{ l | sort(reverse=true) }}|{{ words | sort }}|{{ words | sort(case_sensitive=true) }}|{{ l | max }}|{{ l | min }}|{{ l | sum }}|{{ l | first }}|{{ l | last }}",
    "{{ d | dictsort }}|{{ d | items | list }}|{{ d | list }}|{{ l | join(',') }}|{{ words | join }}|{{ l | reverse | list }}|{{ [1, 1, 2, 1] | unique | list }}",
    "{{ msgs | selectattr('role', 'equalto', 'user') | list }}|{{ msgs | rejectattr('role', 'in', ['user', 'system']) | map(attribute='content') | list }}|{{ msgs | map(attribute='role') | join('/') }}",
    "{{ l | select('odd') | list }}{{ l | reject('odd') | list }}{{ [0, 1, '', 'a', none] | select | list }}{{ msgs | selectattr('tool_calls') | list | length }}",
    "{{ d | tojson }}|{{ msgs | tojson(indent=2) }}|{{ uni | tojson }}|{{ q | tojson }}|{{ nl | tojson }}|{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}|{{ [1.5, none, true] | tojson }}",
    "{{ d | tojson(separators=(',', ':')) }}|{{ 'x' | tojson(ensure_ascii=true) }}|{{ uni | tojson(ensure_ascii=true) }}",
    "{{ '3' | int + 1 }}|{{ '3.7' | int }}|{{ 'x' | int }}|{{ 'x' | int(5) }}|{{ 3.9 | int }}|{{ '2.5' | float }}|{{ n | float }}|{{ -2.5 | abs }}|{{ 2.567 | round(2) }}|{{ 2.5 | round }}|{{ 3.5 | round }}",
    "{{ undefined_var | default('dflt') }}|{{ none | default('dflt') }}|{{ '' | default('dflt', true) }}|{{ undefined_var }}|{{ undefined_var | length }}|{{ n | string ~ '!' }}",
    "{{ 'line1\nline2\n\nline4' | indent(2) }}|{{ 'a\nb' | indent(2, true) }}|{{ 'a\n\nb' | indent(width='> ', blank=true) }}",
    "{{ 'a,b,,c'.split(',') }}{{ '  a  b '.split() }}{{ 'a b c'.split(' ', 1) }}{{ 'a,b,c'.rsplit(',', 1) }}{{ s.strip() }}{{ 'xxaxx'.strip('x') }}{{ s.lstrip() }}|{{ s.rstrip() }}|",
    "{{ 'abc'.startswith('a') }}{{ 'abc'.endswith(('x', 'c')) }}{{ 'aXa'.replace('a', 'b') }}{{ 'abcabc'.find('c') }}{{ 'abc'.upper() }}{{ 'a-b'.title() }}{{ '12'.isdigit() }}{{ 'abcabc'.count('b') }}",
    "{{ uni[0] }}{{ uni[-1] }}{{ uni[1:4] }}{{ uni[::-1] }}{{ l[1:] }}{{ l[:-1] }}{{ l[::2] }}{{ l[-1] }}{{ 'abc'[5:] }}|{{ l[10] }}|",
    "{{ d.get('z') }}{{ d.get('nope') }}{{ d.get('nope', 'dv') }}{{ d.keys() | list }}{{ d.values() | list }}{{ d['m']['k'] }}{{ d.m.k }}{{ msgs[0].role }}{{ d.nope }}|",
    "{{ n is defined }}{{ nope is defined }}{{ nope is undefined }}{{ none is none }}{{ s is string }}{{ d is mapping }}{{ l is iterable }}{{ l is sequence }}{{ n is number }}{{ n is integer }}{{ f is float }}{{ b is boolean }}",
    "{{ n is odd }}{{ n is even }}{{ 9 is divisibleby 3 }}{{ b is true }}{{ b is false }}{{ 'abc' is lower }}{{ 'ABC' is upper }}{{ n is eq 7 }}{{ n is gt 3 }}{{ n is in l }}{{ m is callable }}",
    "{{ range(3) | list }}{{ range(1, 7, 2) | list }}{{ range(5, 0, -2) | list }}{% for i in range(3) %}{{ i }}{% endfor %}",
    "{{ strftime_now('%Y-%m-%d %H:%M %A %b') }}",
    "{{ '%s and %d' % ('x', 3) }}|{{ '%05.1f' % f }}|{{ '{} {}'.format('a', 1) }}|{{ '%s' | format(l) }}",
    "{{ 'a' ~ ('b' | safe) }}|{{ ('<b>' | safe) + '<i>' }}|{{ '<&>' | e }}|{{ ('x' | safe) + 1 if false else 'ok' }}",
    "{{ raise_exception('Custom error: ' ~ n) }}",
    "{% if msgs[0].role != 'user' %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}",
    "{{ nope.attr }}",
    "{{ d.nope.deeper }}",
    "{{ l[10].x }}",
    "{{ 1 + 'a' }}",
    "{{ 'a' + 1 }}",
    "{{ 1 / 0 }}",
    "{{ l.append(4) }}",
    "{{ d.update({}) }}",
    "{{ none | length }}",
    "{{ 'a' < 1 }}",
    "{{ nope + 1 }}",
    "{% for x in none %}{% endfor %}",
    "{% for x in 5 %}{% endfor %}",
    "{{ l | selectattr('x') | length }}",
    "{{ l | map('upper') | tojson }}",
    "{% if x %}{{ x | no_such_filter }}{% endif %}ok",
    "{{ x | no_such_filter }}",
    "{{ x is no_such_test }}",
    "{% for %}",
    "{% if true %}",
    "{% endif %}",
    "{{ 1 + }}",
    "{% set x = [1, 2 %}",
    "{{ 'unterminated }}",
    "{% frobnicate %}",
    "{% for x messages %}{% endfor %}",
    "{{ (1, 2) | tojson }}{{ {'a': (1, 2)} | tojson }}{{ d.items() | list | tojson }}",
    "{{ messages is defined }}{{ msgs | length > 2 }}{{ (msgs | last).content }}{{ msgs[-1]['content'] | trim }}",
    "{% set x = {'a': 1, 'b': none} %}{{ x }}{{ x | tojson }}{{ x.a }}{% for k, v in x | dictsort %}{{ k }}{{ v }}{% endfor %}",
    "{% with a = 1, b = 2 %}{{ a + b }}{% endwith %}{{ a }}",
    "{%- for m in msgs -%}\n  {{- m.role -}}\n  {%- if not loop.last %}, {% endif -%}\n{%- endfor %}\n",
    "{{ '%-5s|' % 'ab' }}{{ 'ab' | center(6) }}|{{ 'one two  three' | wordcount }}{{ [[1, 2], [3]] | map('length') | list }}{{ [1, 2, 3, 4, 5] | batch(2) | list }}",
    "{% for a, b in [[1, 2], [3, 4]] %}{{ a * b }}{% endfor %}{% for a, b in d.items() if a != 'm' %}{{ a }}{% endfor %}",
    "{% for item in [1, [2, [3]]] recursive %}{% if item is iterable %}[{{ loop(item) }}]{% else %}{{ item }}@{{ loop.depth }}{% endif %}{% endfor %}",
    "{% set x = 1 %}{% macro m() %}{{ x }}{% set x = 2 %}{{ x }}{% endmacro %}{{ m() }}{{ x }}",
    "{% set x = 1 %}{% for i in [1, 2] %}{{ x }}{% if i == 2 %}{% set x = 5 %}{% endif %}{{ x }}{% endfor %}{{ x }}",
    "{% filter upper %}{% set y = 3 %}{{ y }}{% endfilter %}{{ y }}|{% set z %}{% set y = 3 %}{% endset %}{{ y }}|{% generation %}{% set g = 1 %}{{ g }}{% endgeneration %}{{ g }}",
    "{% if true %}{% set q = 1 %}{% endif %}{{ q }}{% macro m() %}{{ later }}{% endmacro %}{% set later = 5 %}{{ m() }}{% for i in l %}{% set inner = 1 %}{% endfor %}{{ inner }}",
    "{% for i in l %}{% for j in l %}{{ loop.index }}{% endfor %}{{ loop.index }}{% endfor %}{% set x = 1 %}{% macro m() %}{% set x = x + 1 %}{{ x }}{% endmacro %}{{ m() }}{{ x }}",
    "{% for i in l %}{% set x = (x | default(0)) + i %}{{ x }}{% endfor %}",
    "{% set g = l | select('odd') %}{% for x in g %}{{ x }}{% endfor %}|{% for x in g %}{{ x }}{% endfor %}|{% set h = l | map('string') %}{{ h | first }}{{ h | list }}{% set k = l | reject('none') %}{{ 1 in k }}{{ k | list }}",
    "{% for a, (b, c) in [(1, (2, 3)), (4, (5, 6))] %}{{ a }}{{ b }}{{ c }}{% endfor %}{% set (p, q), r = (1, 2), 3 %}{{ p }}{{ q }}{{ r }}",
    "{{ '{:>8}|{:<6}|{:^7}|{:*^9}|{:08.3f}|{:+d}|{:,}|{:x}|{:#X}|{:.2%}|{!r}|{:.3}|{:e}|{:g}|{}|{:5}|{:05d}'.format('r', 'l', 'c', 'st', f, n, big, 255, 255, 0.256, s, 'abcdef', 1234.5, 0.0001, f, n, neg) }}",
    "{{ '{0}{1}{0}'.format('a', 'b') }}{{ '{name} is {age:d}'.format(name='x', age=3) }}{{ '{{}} {}'.format(1) }}{{ '{:.1f}'.format(2) }}{{ '{:,.2f}'.format(1234567.891) }}{{ '{:=+8d}'.format(-42) }}",
    "{% set j = joiner(' | ') %}{% for x in l %}{{ j() }}{{ x }}{% endfor %}{% set c = cycler('odd', 'even') %}{% for x in l %}{{ c.next() }}{% endfor %}{{ c.current }}{{ c.reset() }}{{ c.next() }}",
    "{{ 0x1F }} {{ 0o17 }} {{ 0b101 }} {{ 1_000 }} {{ 1_000.5 }} {{ 2e3 }} {{ 1E-2 }} {{ 10 ** 18 }} {{ 2 ** 62 }} {{ -9223372036854775807 - 1 }}",
    "{% for x in [1, 1, 2, 2, 1] %}{% if loop.changed(x) %}[{{ x }}]{% endif %}{% endfor %}{% for m in msgs %}{{ loop.changed(m.role) }}{% endfor %}",
    "{{ nope is sequence }}{{ nope is iterable }}{{ nope is mapping }}{{ nope is string }}{{ nope is number }}{{ nope is callable }}{{ nope is none }}{{ (l | select) is sequence }}{{ (l | select) is iterable }}",
    "{% for x in l %}{% break %}{% else %}E1{% endfor %}|{% for x in l %}{% continue %}{% else %}E2{% endfor %}|{% for x in l %}{% if x == 2 %}{% break %}{% endif %}{{ x }}{% else %}E3{% endfor %}|{% for x in l %}{% if x == 3 %}{% continue %}{% endif %}{{ x }}{% else %}E4{% endfor %}",
    "{{ 'Hello world, this is long' | truncate(12) }}|{{ 'Hello world, this is long' | truncate(12, true) }}|{{ 'short' | truncate(3, false, '!', 0) }}|{{ uni | truncate(9, true, '…') }}|{{ s | truncate(255) }}",
    "{% for g in msgs | groupby('role') %}{{ g.grouper }}:{{ g.list | map(attribute='content') | join(',') }};{% endfor %}{% for k, items in [{'t': 'B'}, {'t': 'a'}, {'t': 'b'}, {}] | groupby('t', default='z') %}{{ k }}{{ items | length }}{% endfor %}{{ words | groupby('0') | list }}",
    "{{ [1, 2, 3, 4, 5] | slice(3) | list }}{{ [1, 2, 3, 4] | slice(3, 0) | list }}{{ 1000 | filesizeformat }} {{ 1 | filesizeformat }} {{ 1536 | filesizeformat(true) }} {{ 12345678 | filesizeformat }} {{ 10 | filesizeformat }}",
    "{{ '<p>Hello <b>World</b></p> <!-- x -->  &amp;  more\\n text' | striptags }}",
    "{% print n %}|{% print 1, 'a' %}|{% if b %}{% print s | trim %}{% endif %}",
    "{% for i in l %}{% with j = i * 10 %}{% macro f() %}{{ i }}/{{ j }}{% endmacro %}{{ f() }};{% endwith %}{% macro g(k) %}{{ i + k }}{% endmacro %}{{ g(1) }},{% endfor %}",
    "{% set x = 1 %}{% block b %}[{{ x }}]{% set y = 2 %}{% endblock %}{{ y }}|{% for i in l %}{% block c %}{{ i }}{% endblock %}{% endfor %}|{% for i in l %}{% block e scoped %}{{ i }}{% endblock e %}{% endfor %}",
    "{% if false %}{% include 'x' %}{% import 'x' as y %}{% from 'x' import a, b as c %}{% endif %}ok",
    "a{% include 'x.jinja' ignore missing with context %}b",
    "{% extends 'base.jinja' %}z",
    "{{ 'a b/c?d=é&x' | urlencode }}|{{ {'q': 'a b', 'n': 1, 'u': 'ü/'} | urlencode }}|{{ [('k', 'v w'), ('z', 2)] | urlencode }}|{{ 42 | urlencode }}",
    "<a{{ {'href': 'x?a=1&b=\"2\"', 'n': none, 'id': 3} | xmlattr }}>|{{ {'a': 1} | xmlattr(false) }}|{{ {} | xmlattr }}|",
    "{% set g = n | select('odd') %}{{ g is iterable }}{{ g is sequence }}{{ g is string }}{{ (not g) }}{{ (5 | map('string')) is defined }}{{ ('x' | items) is none }}|{% set a, b = l | select('odd') %}{{ a }}{{ b }}",
    "{% set g = n | select('odd') %}{% for x in g %}{{ x }}{% endfor %}",
    "{{ 3 in ('abc' | select('odd')) }}",
    "{{ d | tojson(indent='\t') }}|{{ [1, [2]] | tojson(indent='--') }}|{{ {} | tojson(indent=2) }}|{{ [[]] | tojson(indent=1) }}",
]


def whitespace_templates(seed, n):
    """Random nests of text, if/for/set/macro/raw tags, comments and prints with every mix of
    `-`/`+` markers and surrounding whitespace (\\n, \\r\\n, \\r, tabs): the lexer's whitespace
    rules, checked against jinja2 on a fixed seed."""
    rng = random.Random(seed)
    pieces = ["", " ", "  ", "\n", "\n\n", " \n", "\n ", "\t", " \t\n  ", "\r\n", "text", "a b",
              "\n  indent", "\r"]

    def ws():
        return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 3)))

    def sign():
        return rng.choice(["", "", "-", "+"])

    def tag(inner):
        return "{%" + sign() + " " + inner + " " + sign() + "%}"

    def node(d):
        r = rng.random()
        if d > 2 or r < 0.3:
            return ws() + rng.choice(["X", "{{" + rng.choice(["", "-"]) + " n " + rng.choice(["", "-"]) + "}}",
                                      "{#" + sign() + " c " + sign() + "#}", ""]) + ws()
        if r < 0.55:
            return (tag("if " + rng.choice(["b", "none"])) + body(d) +
                    (tag("else") + body(d) if rng.random() < 0.4 else "") + tag("endif"))
        if r < 0.75:
            return tag("for x in l") + body(d) + tag("endfor")
        if r < 0.85:
            return tag("set y = 1")
        if r < 0.9:
            return ("{%" + sign() + " raw " + rng.choice(["", "-"]) + "%}" + ws() + "{{ r }}" + ws() +
                    "{%" + sign() + " endraw " + sign() + "%}")
        return tag("macro m()") + body(d) + tag("endmacro") + ws() + "{{ m() }}"

    def body(d):
        return "".join(node(d + 1) for _ in range(rng.randint(1, 3)))

    return [ws() + body(0) + ws() for _ in range(n)]


def gguf_chat_template(path):
    """tokenizer.chat_template of a GGUF (v2/v3) file: walks the metadata key/values."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"GGUF":
        raise ValueError(path + ": not a GGUF file")
    version, = struct.unpack_from("<I", data, 4)
    n_kv, = struct.unpack_from("<Q", data, 16)
    pos = 24
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def read_str(pos):
        n, = struct.unpack_from("<Q", data, pos)
        return data[pos + 8:pos + 8 + n], pos + 8 + n

    def skip_value(t, pos):
        if t == 8:
            return read_str(pos)[1]
        if t == 9:
            et, n = struct.unpack_from("<IQ", data, pos)
            pos += 12
            for _ in range(n):
                pos = skip_value(et, pos)
            return pos
        return pos + sizes[t]

    assert version in (2, 3)
    for _ in range(n_kv):
        key, pos = read_str(pos)
        t, = struct.unpack_from("<I", data, pos)
        pos += 4
        if key == b"tokenizer.chat_template" and t == 8:
            return read_str(pos)[0].decode("utf-8")
        pos = skip_value(t, pos)
    raise KeyError(path + ": no tokenizer.chat_template")


STATEMENT_CONTEXT = {
    "msgs": [{"role": "system", "content": " sys "}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": None, "tool_calls": [
                 {"function": {"name": "f", "arguments": {"a": 1, "b": [1, 2]}}},
                 {"function": {"name": "g", "arguments": "{}"}}]},
             {"role": "tool", "content": "res"},
             {"role": "assistant", "content": "ok", "reasoning_content": "think"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}}}}}],
    "flag": True, "nothing": None,
}


def statement_templates(seed, n):
    """Random chat-template-like programs over STATEMENT_CONTEXT: a loop over messages (with loop
    filters and else), nested if/elif/else, namespace counters and lists, loop-local sets,
    break/continue, nested loops over tool calls and dict items, macro calls with defaults."""
    rng = random.Random(seed)
    exprs = ["m.role", "m.content", "m.content | trim", "loop.index", "loop.first", "loop.last",
             "ns.c", "x", "m.tool_calls | length", "m.tool_calls is defined", "(m.content or '') ~ '!'",
             "loop.previtem.role if loop.previtem is defined else 'none'",
             "m.reasoning_content | default('-')", "ns.items", "tools | tojson", "m | tojson",
             "loop.revindex", "m.get('content')", "m['role'] == 'user'", "ns.c * 2", "msgs | length",
             "(ns.items | join(','))", "m.content is string", "m.keys() | list"]
    conds = ["m.role == 'user'", "m.role == 'assistant'", "loop.first", "loop.last", "m.content",
             "m.tool_calls is defined", "ns.c > 1", "flag", "nothing", "not m.content",
             "m.role in ['system', 'tool']", "loop.index is even", "x is defined"]

    def stmt(d):
        r = rng.random()
        if d > 3 or r < 0.35:
            return "{{ " + rng.choice(exprs) + " }}" + rng.choice(["", "\n", " | "])
        if r < 0.5:
            return ("{%- if " + rng.choice(conds) + " %}" + block(d) +
                    ("{%- elif " + rng.choice(conds) + " %}" + block(d) if rng.random() < 0.3 else "") +
                    ("{%- else %}" + block(d) if rng.random() < 0.4 else "") + "{%- endif %}")
        if r < 0.6:
            return "{%- set ns.c = ns.c + 1 %}"
        if r < 0.65:
            return "{%- set ns.items = ns.items + [" + rng.choice(["m.role", "loop.index", "'z'"]) + "] %}"
        if r < 0.72:
            return "{%- set x = " + rng.choice(exprs) + " %}"
        if r < 0.77:
            return "{%- if " + rng.choice(conds) + " %}{% " + rng.choice(["break", "continue"]) + " %}{% endif %}"
        if r < 0.85:
            return ("{%- for tc in (m.tool_calls or []) %}{{ tc.function.name }}({{ tc.function.arguments"
                    " | tojson }}){{ loop.index }}{% if not loop.last %},{% endif %}{% endfor %}")
        if r < 0.9:
            return "{{ show(m" + rng.choice(["", ", 'p'", ", sep='/'"]) + ") }}"
        return "{%- for k, v in m.items() %}{{ k }}={{ v }};{% endfor %}"

    def block(d):
        return "".join(stmt(d + 1) for _ in range(rng.randint(1, 3)))

    head = ("{%- macro show(m, pre='>', sep=':') %}{{ pre }}{{ m.role }}{{ sep }}{{ m.content }}"
            "{% endmacro %}{%- set ns = namespace(c=0, items=[]) %}")
    return [head + "{%- for m in msgs" + rng.choice(["", " if m.role != 'tool'", " if m.content"]) +
            " %}" + block(0) + "{%- else %}empty{% endfor %}{{ ns.c }}{{ ns.items }}{{ x }}"
            for _ in range(n)]


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
    sdir, sexp = os.path.join(out, "snippets"), os.path.join(out, "expected_snippets")
    os.makedirs(sdir, exist_ok=True)
    os.makedirs(sexp, exist_ok=True)
    with open(os.path.join(out, "contexts", "snippet.json"), "w", encoding="utf-8") as f:
        json.dump(SNIPPET_CONTEXT, f, ensure_ascii=False)
    with open(os.path.join(out, "contexts", "statement.json"), "w", encoding="utf-8") as f:
        json.dump(STATEMENT_CONTEXT, f, ensure_ascii=False)
    generated = [("w%03d" % i, src) for i, src in enumerate(whitespace_templates(2024, 250))]
    generated += [("p%03d" % i, src) for i, src in enumerate(statement_templates(7, 150))]
    for name, src in [("s%03d" % i, src) for i, src in enumerate(SNIPPETS)] + generated:
        ctx = STATEMENT_CONTEXT if name.startswith("p") else SNIPPET_CONTEXT
        with open(os.path.join(sdir, name + ".jinja"), "w", encoding="utf-8", newline="") as f:
            f.write(src)
        try:
            text, ext = env.from_string(src).render(**ctx), ".out"
        except Exception as e:
            text, ext = error_message(e), ".err"
        with open(os.path.join(sexp, name + ext), "w", encoding="utf-8", newline="") as f:
            f.write(text)
    sources = []  # (name, source text, kiln arguments)
    for fname in sorted(os.listdir(tdir)):
        if fname.endswith(".jinja"):
            path = os.path.join(tdir, fname)
            with open(path, encoding="utf-8", newline="") as f:
                sources.append((fname[:-len(".jinja")], f.read(), "--template " + path))
    os.makedirs(os.path.join(out, "extra"), exist_ok=True)
    for path in sys.argv[3:]:
        if path.endswith(".gguf"):
            name = "gguf-" + os.path.basename(path)[:-len(".gguf")]
            sources.append((name, gguf_chat_template(path), "-m " + path))
        else:
            with open(path, encoding="utf-8") as f:
                src = json.load(f)["chat_template"]
            name = "config-" + os.path.basename(os.path.dirname(os.path.dirname(path)))
            tpath = os.path.join(out, "extra", name + ".jinja")
            with open(tpath, "w", encoding="utf-8", newline="") as f:
                f.write(src)
            sources.append((name, src, "--template " + tpath))
    os.makedirs(os.path.join(out, "sources"), exist_ok=True)
    for tname, src, args in sources:
        with open(os.path.join(out, "sources", tname), "w", encoding="utf-8") as f:
            f.write(args + "\n")
        edir = os.path.join(out, "expected", tname)
        os.makedirs(edir, exist_ok=True)
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
