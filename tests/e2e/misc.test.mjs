// misc.test.mjs: against the third server of e2e.sh (--chat-template Qwen2.5's template,
// --max-num-seqs 1, --request-timeout 2, --sse-keepalive 1): chat prompts rendered with the given
// Jinja template equal Python jinja2's rendering (transformers' settings), keep-alive comments on a
// stream waiting in the queue, and request timeouts: `data: {"error":...}` then [DONE] on a stream
// that already started, 504 on a non-streaming request.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import OpenAI from 'openai';
import { client, MODEL, KEY, assertErrorShape, raw, waitMetrics } from './common.mjs';

const BASE = process.env.KILN_URL_T2;
const ai = client(BASE);

const PY_RENDER = `
import json, sys, jinja2, jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False)
t = env.from_string(open(sys.argv[1]).read())
ctx = json.loads(sys.argv[2])
sys.stdout.write(t.render(**ctx))
`;

function pyRender(messages, addGen) {
  const ctx = { messages, add_generation_prompt: addGen, bos_token: '<s>', eos_token: '</s>' };
  return execFileSync(process.env.PYTHON || '/usr/bin/python3',
    ['-c', PY_RENDER, process.env.KILN_TEMPLATE_FILE, JSON.stringify(ctx)], { encoding: 'utf8' });
}

test('--chat-template: prompts rendered as Python jinja2 renders the template', async () => {
  const messages = [
    { role: 'system', content: 'You tell stories.' },
    { role: 'user', content: 'Tell me about Lily.' },
    { role: 'assistant', content: 'Lily was a girl.' },
    { role: 'user', content: 'And then?' },
  ];
  for (const addGen of [true, false]) {
    const text = pyRender(messages, addGen);
    assert.match(text, /<\|im_start\|>system\nYou tell stories\.<\|im_end\|>/);
    const want = await raw('/tokenize', { base: BASE, body: JSON.stringify({ prompt: text, add_special_tokens: false }) });
    const got = await raw('/tokenize', { base: BASE, body: JSON.stringify({ messages, add_generation_prompt: addGen }) });
    assert.equal(want.status, 200, want.text);
    assert.equal(got.status, 200, got.text);
    assert.deepEqual(got.json.tokens, want.json.tokens);
  }
  const chat = await ai.chat.completions.create({ model: MODEL, messages, max_tokens: 3, temperature: 0 });
  const tok = await raw('/tokenize', { base: BASE, body: JSON.stringify({ prompt: pyRender(messages, true), add_special_tokens: false }) });
  assert.equal(chat.usage.prompt_tokens, tok.json.count);
  const cmpl = await ai.completions.create({ model: MODEL, prompt: tok.json.tokens, max_tokens: 3, temperature: 0 });
  assert.equal(chat.choices[0].message.content, cmpl.choices[0].text);
});

async function openStream(body) {
  const ac = new AbortController();
  const res = await fetch(`${BASE}/v1/completions`, {
    method: 'POST', signal: ac.signal,
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ ...body, stream: true }),
  });
  return { res, ac, reader: res.body.getReader() };
}

test('a stream waiting in the queue receives ": keep-alive" comments', async () => {
  await waitMetrics((m) => m.kiln_num_requests_active === 0, BASE);
  // A holds the only sequence slot for a while (32 choices one after the other, cut by the 2 s
  // request timeout) ...
  const a = await openStream({ model: MODEL, prompt: 'Once upon a time', max_tokens: 500, ignore_eos: true, n: 32 });
  // ... B waits behind it: its headers come at once, then only comments
  const b = await openStream({ model: MODEL, prompt: 'Once upon a time', max_tokens: 5 });
  assert.equal(b.res.status, 200);
  assert.match(b.res.headers.get('content-type'), /^text\/event-stream/);
  const dec = new TextDecoder();
  let seen = '';
  const t0 = Date.now();
  while (!seen.includes(': keep-alive\n\n') && Date.now() - t0 < 5000) {
    const { value, done } = await b.reader.read();
    if (done) break;
    seen += dec.decode(value);
  }
  a.ac.abort();
  b.ac.abort();
  assert.ok(seen.startsWith(': keep-alive\n\n'), `first bytes of the queued stream: ${JSON.stringify(seen.slice(0, 200))}`);
  await waitMetrics((m) => m.kiln_num_requests_active === 0 && m.kiln_kv_blocks_free === m.kiln_kv_blocks_total, BASE);
});

test('request timeout: error event then [DONE] mid-stream; 504 when not streaming', async () => {
  await waitMetrics((m) => m.kiln_num_requests_active === 0, BASE);
  // 128 choices of 500 tokens one after the other: far more than the 2 s request timeout (32 x 500
  // finished inside it once decode of the tiny test model passed ~8000 tok/s)
  const long = { model: MODEL, prompt: 'Once upon a time', max_tokens: 500, ignore_eos: true, n: 128 };
  const s = await openStream(long);
  const dec = new TextDecoder();
  let streamed = '';
  for (;;) {
    const { value, done } = await s.reader.read();
    if (done) break;
    streamed += dec.decode(value);
  }
  await waitMetrics((m) => m.kiln_num_requests_active === 0, BASE);
  const whole = await raw('/v1/completions', { base: BASE, body: JSON.stringify(long) });
  const events = streamed.split('\n\n').filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));
  assert.ok(events.length >= 3, streamed.slice(0, 300));
  assert.equal(events[events.length - 1], '[DONE]');
  const err = JSON.parse(events[events.length - 2]);
  assert.deepEqual(Object.keys(err.error).sort(), ['code', 'message', 'param', 'type']);
  assert.match(err.error.message, /timed out/);
  assert.ok(JSON.parse(events[0]).choices, 'the stream had started with normal chunks');
  const e = assertErrorShape(whole, 504);
  assert.match(e.message, /timed out/);
  // the SDK turns the in-stream error into an APIError
  const sdk = await ai.completions.create({ ...long, stream: true });
  await assert.rejects((async () => { for await (const _ of sdk) { /* drain */ } })(),
    (x) => x instanceof OpenAI.APIError && /timed out/.test(x.message));
  await waitMetrics((m) => m.kiln_num_requests_active === 0 && m.kiln_kv_blocks_free === m.kiln_kv_blocks_total, BASE);
});
