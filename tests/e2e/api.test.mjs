// api.test.mjs: the OpenAI API of `kiln serve` through the official SDK on the real stories260K
// model: models, chat and completions (streaming and not), n, seeds, stop strings across
// tokens, echo, logprobs layouts, include_usage, max_tokens -> length, extra_body, and greedy
// text equal to `kiln run` and to llama.cpp's reference continuation.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { client, raw, MODEL, REF_TEXT, kilnRun, URL_MAIN } from './common.mjs';

const ai = client();
const PROMPT = 'Once upon a time';

// The token counts of a usage object (prompt_tokens_details.cached_tokens, when present, depends
// on what the prefix cache holds and is only checked for its type).
function assertUsage(got, want) {
  for (const k of ['prompt_tokens', 'completion_tokens', 'total_tokens']) assert.equal(got[k], want[k], k);
  if (got.prompt_tokens_details) assert.equal(typeof got.prompt_tokens_details.cached_tokens, 'number');
}

test('GET /v1/models lists the served model (no auth needed)', async () => {
  const r = await raw('/v1/models', { method: 'GET', auth: false });
  assert.equal(r.status, 200);
  assert.equal(r.json.object, 'list');
  assert.equal(r.json.data.length, 1);
  const m = r.json.data[0];
  assert.equal(m.id, MODEL);
  assert.equal(m.object, 'model');
  assert.equal(typeof m.created, 'number');
  assert.equal(m.max_model_len, 512);
  const list = await ai.models.list();
  assert.deepEqual(list.data.map((x) => x.id), [MODEL]);
  const one = await ai.models.retrieve(MODEL);
  assert.equal(one.id, MODEL);
});

test('GET /health and /version', async () => {
  const h = await fetch(`${URL_MAIN}/health`);
  assert.equal(h.status, 200);
  const v = await raw('/version', { method: 'GET', auth: false });
  assert.equal(v.status, 200);
  assert.match(v.json.version, /^\d+\.\d+\.\d+$/);
});

test('completions: greedy 252 tokens equal llama.cpp reference text and kiln run', async () => {
  const r = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 252, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.match(r.id, /^cmpl-/);
  assert.equal(r.model, MODEL);
  assert.equal(r.choices.length, 1);
  assert.equal(r.choices[0].text, REF_TEXT);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.choices[0].index, 0);
  assert.equal(r.usage.prompt_tokens, 5); // [1, 403, 407, 261, 378] per the test data README
  assert.equal(r.usage.completion_tokens, 252);
  assert.equal(r.usage.total_tokens, 257);
  const cli = kilnRun(PROMPT, 40);
  const r40 = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 40, temperature: 0 });
  assert.equal(r40.choices[0].text, cli);
});

test('completions: token-id prompt, several prompts, max_tokens default 16', async () => {
  const byIds = await ai.completions.create({ model: MODEL, prompt: [1, 403, 407, 261, 378], max_tokens: 20, temperature: 0 });
  assert.equal(byIds.choices[0].text, REF_TEXT.slice(0, byIds.choices[0].text.length));
  assert.ok(byIds.choices[0].text.length > 20);
  const two = await ai.completions.create({ model: MODEL, prompt: [PROMPT, 'The cat'], temperature: 0 });
  assert.equal(two.choices.length, 2);
  assert.deepEqual(two.choices.map((c) => c.index), [0, 1]);
  assert.equal(two.usage.completion_tokens, 32);
  assert.equal(two.choices[0].text, REF_TEXT.slice(0, two.choices[0].text.length));
});

test('completions streaming: concatenated deltas equal the non-streaming text, usage chunk, [DONE]', async () => {
  const stream = await ai.completions.create({
    model: MODEL, prompt: PROMPT, max_tokens: 60, temperature: 0, stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let finish = null;
  let usage = null;
  let n = 0;
  for await (const chunk of stream) {
    n++;
    assert.equal(chunk.object, 'text_completion');
    if (chunk.usage) {
      assert.deepEqual(chunk.choices, []);
      usage = chunk.usage;
      continue;
    }
    assert.equal(chunk.usage, null); // include_usage: null on every other chunk
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.ok(n > 3);
  assert.equal(text, REF_TEXT.slice(0, text.length));
  assert.equal(finish, 'length');
  assertUsage(usage, { prompt_tokens: 5, completion_tokens: 60, total_tokens: 65 });
});

test('chat: fallback prompt format, greedy equals completions on the same rendered prompt', async () => {
  const messages = [{ role: 'system', content: 'Tell a story.' }, { role: 'user', content: 'Once upon a time' }];
  const chat = await ai.chat.completions.create({ model: MODEL, messages, max_tokens: 30, temperature: 0 });
  assert.equal(chat.object, 'chat.completion');
  assert.match(chat.id, /^chatcmpl-/);
  assert.equal(typeof chat.created, 'number');
  assert.equal(typeof chat.system_fingerprint, 'string');
  const c = chat.choices[0];
  assert.equal(c.message.role, 'assistant');
  assert.equal(c.finish_reason, 'length');
  assert.equal(c.logprobs, null);
  // README "## API": no template -> "<role>: <content>\n" per message, then "assistant:"
  const rendered = 'system: Tell a story.\nuser: Once upon a time\nassistant:';
  const cmpl = await ai.completions.create({ model: MODEL, prompt: rendered, max_tokens: 30, temperature: 0 });
  assert.equal(c.message.content, cmpl.choices[0].text);
  assert.equal(chat.usage.prompt_tokens, cmpl.usage.prompt_tokens);
  const tok = await raw('/tokenize', { body: JSON.stringify({ messages }) });
  assert.equal(tok.status, 200);
  assert.equal(tok.json.count, chat.usage.prompt_tokens);
  // content as an array of text parts is the same prompt (parts joined with "\n")
  const parts = await ai.chat.completions.create({
    model: MODEL, max_tokens: 30, temperature: 0,
    messages: [{ role: 'developer', content: [{ type: 'text', text: 'Tell a' }, { type: 'text', text: 'story.' }] },
      { role: 'user', content: 'Once upon a time' }],
  });
  const rendered2 = 'system: Tell a\nstory.\nuser: Once upon a time\nassistant:';
  const cmpl2 = await ai.completions.create({ model: MODEL, prompt: rendered2, max_tokens: 30, temperature: 0 });
  assert.equal(parts.choices[0].message.content, cmpl2.choices[0].text);
});

test('chat streaming: role first, content deltas, finish chunk, usage chunk with choices []', async () => {
  const messages = [{ role: 'user', content: 'Tell me about Lily.' }];
  const whole = await ai.chat.completions.create({ model: MODEL, messages, max_tokens: 40, temperature: 0 });
  const stream = await ai.chat.completions.create({
    model: MODEL, messages, max_tokens: 40, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const ch of stream) chunks.push(ch);
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  let text = '';
  for (const ch of chunks) {
    assert.equal(ch.object, 'chat.completion.chunk');
    assert.equal(ch.id, chunks[0].id);
    for (const c of ch.choices) text += c.delta.content ?? '';
  }
  const withFinish = chunks.filter((ch) => ch.choices.length && ch.choices[0].finish_reason);
  assert.equal(withFinish.length, 1);
  assert.equal(withFinish[0].choices[0].finish_reason, 'length');
  assert.deepEqual(withFinish[0].choices[0].delta, {}); // as OpenAI: the finish chunk carries no content
  const last = chunks[chunks.length - 1];
  assert.deepEqual(last.choices, []);
  assertUsage(last.usage, whole.usage);
  assert.equal(text, whole.choices[0].message.content);
  // without include_usage: no usage chunk
  const s2 = await ai.chat.completions.create({ model: MODEL, messages, max_tokens: 5, temperature: 0, stream: true });
  for await (const ch of s2) {
    assert.ok(ch.choices.length === 1);
    assert.equal(ch.usage, undefined);
  }
});

test('n=3: three choices; seed reproducible; different seeds differ', async () => {
  const req = { model: MODEL, prompt: PROMPT, max_tokens: 24, temperature: 1.0, n: 3, seed: 1234 };
  const a = await ai.completions.create(req);
  const b = await ai.completions.create(req);
  assert.equal(a.choices.length, 3);
  assert.deepEqual(a.choices.map((c) => c.index).sort(), [0, 1, 2]);
  assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
  assert.equal(a.usage.completion_tokens, 72);
  assert.equal(a.usage.prompt_tokens, 5);
  const texts = new Set(a.choices.map((c) => c.text));
  assert.ok(texts.size >= 2, 'seeded choices use seed + i and should differ');
  const c = await ai.completions.create({ ...req, seed: 99 });
  assert.notDeepEqual(c.choices.map((x) => x.text), a.choices.map((x) => x.text));
  // chat n=3 streamed: every index gets its role chunk and its finish chunk
  const s = await ai.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 8, n: 3, seed: 7, stream: true,
  });
  const roles = new Set();
  const fins = new Set();
  for await (const ch of s) {
    for (const cc of ch.choices) {
      if (cc.delta.role) roles.add(cc.index);
      if (cc.finish_reason) fins.add(cc.index);
    }
  }
  assert.deepEqual([...roles].sort(), [0, 1, 2]);
  assert.deepEqual([...fins].sort(), [0, 1, 2]);
});

test('stop strings spanning tokens are cut and never sent; include_stop_str_in_output', async () => {
  const stop = 'girl nam'; // inside " girl" + " named": spans a token boundary
  const cut = REF_TEXT.indexOf(stop);
  assert.ok(cut > 0);
  const r = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 60, temperature: 0, stop: [stop, 'zzzz'] });
  assert.equal(r.choices[0].text, REF_TEXT.slice(0, cut));
  assert.equal(r.choices[0].finish_reason, 'stop');
  // streamed: the held-back text never leaks
  const s = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 60, temperature: 0, stop, stream: true });
  let text = '';
  for await (const ch of s) for (const c of ch.choices) text += c.text;
  assert.equal(text, REF_TEXT.slice(0, cut));
  // vLLM's include_stop_str_in_output, sent through extra_body as a platform would
  const inc = await raw('/v1/completions', {
    body: JSON.stringify({ model: MODEL, prompt: PROMPT, max_tokens: 60, temperature: 0, stop: [stop],
      extra_body: { include_stop_str_in_output: true } }),
  });
  assert.equal(inc.status, 200, inc.text);
  assert.equal(inc.json.choices[0].text, REF_TEXT.slice(0, cut + stop.length));
  // chat stop
  const chat = await ai.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 40, temperature: 0,
  });
  const full = chat.choices[0].message.content;
  const mid = full.slice(10, 14);
  const cchat = await ai.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 40, temperature: 0, stop: mid,
  });
  assert.equal(cchat.choices[0].message.content, full.slice(0, full.indexOf(mid)));
  assert.equal(cchat.choices[0].finish_reason, 'stop');
});

test('max_tokens -> finish_reason length with exactly max_tokens tokens', async () => {
  for (const n of [1, 7]) {
    const r = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: n, temperature: 0 });
    assert.equal(r.choices[0].finish_reason, 'length');
    assert.equal(r.usage.completion_tokens, n);
    const c = await ai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'a' }], max_completion_tokens: n });
    assert.equal(c.choices[0].finish_reason, 'length');
    assert.equal(c.usage.completion_tokens, n);
  }
});

test('echo: the prompt is prepended (string and token-id prompts)', async () => {
  const r = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 10, temperature: 0, echo: true });
  assert.equal(r.choices[0].text, PROMPT + REF_TEXT.slice(0, r.choices[0].text.length - PROMPT.length));
  assert.ok(r.choices[0].text.length > PROMPT.length);
  const s = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 10, temperature: 0, echo: true, stream: true });
  let text = '';
  for await (const ch of s) for (const c of ch.choices) text += c.text;
  assert.equal(text, r.choices[0].text);
  const ids = await ai.completions.create({ model: MODEL, prompt: [1, 403, 407, 261, 378], max_tokens: 10, temperature: 0, echo: true });
  assert.equal(ids.choices[0].text, r.choices[0].text);
});

test('logprobs: legacy completions layout', async () => {
  const r = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 12, temperature: 0, logprobs: 3 });
  const c = r.choices[0];
  const lp = c.logprobs;
  assert.deepEqual(Object.keys(lp).sort(), ['text_offset', 'token_logprobs', 'tokens', 'top_logprobs']);
  assert.equal(lp.tokens.length, 12);
  assert.equal(lp.token_logprobs.length, 12);
  assert.equal(lp.top_logprobs.length, 12);
  assert.equal(lp.text_offset.length, 12);
  assert.equal(lp.tokens.join(''), c.text);
  for (let i = 0; i < 12; i++) {
    assert.ok(lp.token_logprobs[i] <= 0);
    const tops = lp.top_logprobs[i];
    assert.ok(Object.keys(tops).length >= 1 && Object.keys(tops).length <= 3);
    // greedy: the chosen token is the most likely one
    const best = Math.max(...Object.values(tops));
    assert.ok(Math.abs(best - lp.token_logprobs[i]) < 1e-5, `token ${i}: ${lp.token_logprobs[i]} vs ${best}`);
    if (i > 0) assert.equal(lp.text_offset[i], lp.text_offset[i - 1] + lp.tokens[i - 1].length);
  }
  // streamed logprobs carry the same tokens
  const s = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 12, temperature: 0, logprobs: 3, stream: true });
  const toks = [];
  const offs = [];
  for await (const ch of s) for (const cc of ch.choices) if (cc.logprobs) { toks.push(...cc.logprobs.tokens); offs.push(...cc.logprobs.text_offset); }
  assert.deepEqual(toks, lp.tokens);
  assert.deepEqual(offs, lp.text_offset);
});

test('logprobs: chat layout with top_logprobs', async () => {
  const r = await ai.chat.completions.create({
    model: MODEL, messages: [{ role: 'user', content: 'hello' }], max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 2,
  });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, 8);
  let text = '';
  for (const t of content) {
    assert.deepEqual(Object.keys(t).sort(), ['bytes', 'logprob', 'token', 'top_logprobs']);
    assert.equal(typeof t.token, 'string');
    assert.ok(t.logprob <= 0);
    assert.deepEqual(t.bytes, [...Buffer.from(t.token, 'utf8')]);
    assert.equal(t.top_logprobs.length, 2);
    assert.ok(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob);
    assert.ok(Math.abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5);
    text += t.token;
  }
  assert.equal(text, r.choices[0].message.content);
  const none = await ai.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hello' }], max_tokens: 2, logprobs: true });
  assert.equal(none.choices[0].logprobs.content[0].top_logprobs.length, 0);
});

test('extra_body fields are honoured (vLLM sampling extensions)', async () => {
  const greedy = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 30, temperature: 0 });
  // top_k 1 at a high temperature is greedy (the SDK sends unknown params as body fields)
  const viaSdk = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 30, temperature: 1.5, seed: 3, top_k: 1 });
  assert.equal(viaSdk.choices[0].text, greedy.choices[0].text);
  // a literal "extra_body" object (a gateway in front of vLLM forwards it) is merged too
  const lit = await raw('/v1/completions', {
    body: JSON.stringify({ model: MODEL, prompt: PROMPT, max_tokens: 30, temperature: 1.5, seed: 3, extra_body: { top_k: 1 } }),
  });
  assert.equal(lit.status, 200, lit.text);
  assert.equal(lit.json.choices[0].text, greedy.choices[0].text);
  // min_tokens + ignore_eos: exactly max_tokens tokens
  const ig = await raw('/v1/completions', {
    body: JSON.stringify({ model: MODEL, prompt: PROMPT, max_tokens: 300, temperature: 0, extra_body: { ignore_eos: true } }),
  });
  assert.equal(ig.status, 200, ig.text);
  assert.equal(ig.json.usage.completion_tokens, 300);
  // logit_bias (OpenAI field): banning the greedy first token changes the first token
  const first = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 1, temperature: 0, logprobs: 1 });
  const tok = await raw('/tokenize', { body: JSON.stringify({ prompt: PROMPT + first.choices[0].text }) });
  assert.equal(tok.status, 200);
  assert.deepEqual(tok.json.tokens.slice(0, 5), [1, 403, 407, 261, 378]);
  const banned = await ai.completions.create({
    model: MODEL, prompt: PROMPT, max_tokens: 1, temperature: 0, logit_bias: { [String(tok.json.tokens[5])]: -100 },
  });
  assert.notEqual(banned.choices[0].text, first.choices[0].text);
});

test('/tokenize and /detokenize round trip', async () => {
  const t = await raw('/tokenize', { body: JSON.stringify({ prompt: PROMPT }) });
  assert.equal(t.status, 200);
  assert.deepEqual(t.json.tokens, [1, 403, 407, 261, 378]);
  assert.equal(t.json.count, 5);
  assert.equal(t.json.max_model_len, 512);
  const d = await raw('/detokenize', { body: JSON.stringify({ tokens: t.json.tokens }) });
  assert.equal(d.status, 200);
  assert.equal(d.json.prompt, PROMPT);
});

test('echo with logprobs: prompt tokens first, the first one without a logprob', async () => {
  const r = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 5, temperature: 0, echo: true, logprobs: 2 });
  const lp = r.choices[0].logprobs;
  assert.equal(lp.tokens.length, 5 + 5); // BOS + 4 prompt tokens, then 5 generated
  assert.equal(lp.tokens[1], ' Once');
  assert.equal(lp.token_logprobs[0], null);
  assert.equal(lp.top_logprobs[0], null);
  for (let i = 1; i < 10; i++) {
    assert.equal(typeof lp.token_logprobs[i], 'number');
    assert.ok(lp.token_logprobs[i] <= 0);
    assert.ok(Object.keys(lp.top_logprobs[i]).length >= 1);
  }
  assert.ok(r.choices[0].text.startsWith(PROMPT));
  const plain = await ai.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 5, temperature: 0, logprobs: 2 });
  assert.deepEqual(lp.tokens.slice(5), plain.choices[0].logprobs.tokens);
  assert.deepEqual(lp.token_logprobs.slice(5), plain.choices[0].logprobs.token_logprobs);
});
