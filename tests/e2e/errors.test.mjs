// errors.test.mjs: every error status of the API with OpenAI's error body shape, through raw HTTP
// and through the official SDK's error classes: 400 (malformed JSON, invalid UTF-8, wrong types,
// out-of-range and huge numbers, unknown and not-yet-supported fields, context overflow), 401,
// 404, 405, 413, 415; never a 500, and the server stays healthy. e2e.sh runs this file against
// the release binary and again against the ASan/UBSan one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { client, raw, assertErrorShape, MODEL, URL_MAIN, KEY } from './common.mjs';

const ai = client();
const msgs = [{ role: 'user', content: 'hi' }];
const chat = (o) => raw('/v1/chat/completions', { body: JSON.stringify({ model: MODEL, messages: msgs, max_tokens: 2, ...o }) });

test('400: malformed JSON, empty body, non-object, duplicate keys', async () => {
  for (const body of ['{"messages": [', '', '[1,2]', '"x"', 'null', '{"a":1,"a":2}', '{"messages":[{"role":"user","content":"hi"}],}']) {
    const r = await raw('/v1/chat/completions', { body });
    const e = assertErrorShape(r, 400);
    assert.equal(e.type, 'invalid_request_error');
  }
});

test('400: invalid UTF-8 bytes and lone surrogate escapes in strings', async () => {
  const bad = Buffer.concat([Buffer.from('{"messages":[{"role":"user","content":"a'), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('"}]}')]);
  assertErrorShape(await raw('/v1/chat/completions', { body: bad }), 400);
  const overlong = Buffer.concat([Buffer.from('{"prompt":"'), Buffer.from([0xc0, 0xaf]), Buffer.from('"}')]);
  assertErrorShape(await raw('/v1/completions', { body: overlong }), 400);
  assertErrorShape(await raw('/v1/completions', { body: '{"prompt":"\\ud800"}' }), 400);
  assertErrorShape(await raw('/v1/completions', { body: '{"prompt":"a\\u0000b"}' }), 400);
});

test('400: wrong types name the field in param', async () => {
  const cases = [
    ['temperature', 'hot'], ['top_p', [1]], ['top_k', 1.5], ['n', '2'], ['max_tokens', true],
    ['stop', 5], ['stream', 'yes'], ['logprobs', 3], ['top_logprobs', 'x'], ['logit_bias', [1]],
    ['seed', 'abc'], ['presence_penalty', {}], ['user', 3], ['model', 7], ['stream_options', 1],
    ['stop_token_ids', 'x'], ['ignore_eos', 1], ['min_p', 'x'],
  ];
  for (const [field, value] of cases) {
    const r = await chat({ [field]: value });
    const e = assertErrorShape(r, 400, field);
    assert.match(e.message, new RegExp(field));
  }
  assertErrorShape(await raw('/v1/chat/completions', { body: JSON.stringify({ messages: 'hi' }) }), 400, 'messages');
  assertErrorShape(await raw('/v1/chat/completions', { body: JSON.stringify({ messages: [{ role: 'robot', content: 'x' }] }) }), 400, 'messages[0].role');
  assertErrorShape(await raw('/v1/chat/completions', { body: JSON.stringify({ messages: [{ role: 'user', content: 5 }] }) }), 400, 'messages[0].content');
  assertErrorShape(await raw('/v1/completions', { body: JSON.stringify({ prompt: { a: 1 } }) }), 400, 'prompt');
  assertErrorShape(await raw('/v1/completions', { body: JSON.stringify({ prompt: [1, 'x'] }) }), 400, 'prompt[1]');
  assertErrorShape(await raw('/v1/completions', { body: JSON.stringify({}) }), 400, 'prompt');
  assertErrorShape(await raw('/v1/chat/completions', { body: JSON.stringify({}) }), 400, 'messages');
});

test('400: negative, out-of-range and huge numbers', async () => {
  const cases = [
    ['n', -1], ['n', 0], ['n', 1e300], ['n', 100000], ['max_tokens', -5], ['max_tokens', 0],
    ['max_tokens', 1e12], ['temperature', -1], ['top_p', 0], ['top_p', 2], ['top_logprobs', 50],
    ['presence_penalty', 9], ['frequency_penalty', -9], ['repetition_penalty', -1], ['min_p', 1.5],
    ['min_tokens', -1], ['temperature', 1e39], ['top_k', 2 ** 40], ['seed', 2 ** 70],
  ];
  for (const [field, value] of cases) {
    const r = await chat({ [field]: value, logprobs: field === 'top_logprobs' ? true : undefined });
    assertErrorShape(r, 400, field);
  }
  // integers beyond 64 bits do not even parse
  assertErrorShape(await raw('/v1/completions', { body: '{"prompt":"a","n":123456789012345678901234567890}' }), 400);
  // token ids outside the vocabulary
  assertErrorShape(await raw('/v1/completions', { body: JSON.stringify({ prompt: [1, 512] }) }), 400, 'prompt[1]');
  assertErrorShape(await raw('/v1/completions', { body: JSON.stringify({ prompt: [-1] }) }), 400, 'prompt[0]');
  assertErrorShape(await chat({ logit_bias: { 100000: 1 } }), 400, 'logit_bias');
  assertErrorShape(await chat({ stop_token_ids: [99999] }), 400, 'stop_token_ids[0]');
  assertErrorShape(await raw('/detokenize', { body: JSON.stringify({ tokens: [1, 1e9] }) }), 400, 'tokens[1]');
});

test('400: unknown fields and fields of later issues are never silently ignored', async () => {
  let e = assertErrorShape(await chat({ frobnicate: true }), 400, 'frobnicate');
  assert.match(e.message, /frobnicate/);
  e = assertErrorShape(await chat({ extra_body: { also_unknown: 1 } }), 400, 'also_unknown');
  for (const field of ['tools', 'tool_choice', 'response_format', 'guided_json', 'guided_choice']) {
    e = assertErrorShape(await chat({ [field]: field === 'guided_choice' ? ['a'] : { type: 'json_object' } }), 400, field);
    assert.match(e.message, /not supported yet/);
  }
  e = assertErrorShape(await chat({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }), 400,
    'messages[0].content[0].type');
  assert.match(e.message, /not supported yet/);
  // the SDK surfaces the same as BadRequestError with param
  await assert.rejects(ai.chat.completions.create({ model: MODEL, messages: msgs, tools: [{ type: 'function', function: { name: 'f' } }] }),
    (err) => err instanceof OpenAI.BadRequestError && err.status === 400 && err.param === 'tools');
  await assert.rejects(ai.completions.create({ model: MODEL, prompt: 'x', n: 0 }),
    (err) => err instanceof OpenAI.BadRequestError && err.param === 'n');
});

test('400 context_length_exceeded with the numbers', async () => {
  const r = await raw('/v1/completions', { body: JSON.stringify({ model: MODEL, prompt: 'Once upon a time', max_tokens: 600 }) });
  const e = assertErrorShape(r, 400);
  assert.equal(e.code, 'context_length_exceeded');
  assert.match(e.message, /512/);
  assert.match(e.message, /600/);
  const long = Array(700).fill(403);
  const r2 = await raw('/v1/completions', { body: JSON.stringify({ prompt: long, max_tokens: 1 }) });
  assert.equal(assertErrorShape(r2, 400).code, 'context_length_exceeded');
  await assert.rejects(ai.chat.completions.create({ model: MODEL, messages: msgs, max_tokens: 100000 }),
    (err) => err instanceof OpenAI.BadRequestError && err.code === 'context_length_exceeded');
});

test('401: missing or wrong bearer key; /v1/models and /health need none', async () => {
  const body = JSON.stringify({ messages: msgs, max_tokens: 1 });
  let r = await raw('/v1/chat/completions', { body, auth: false });
  let e = assertErrorShape(r, 401);
  assert.equal(e.type, 'authentication_error');
  r = await raw('/v1/chat/completions', { body, headers: { Authorization: `Bearer ${KEY}x` } });
  assertErrorShape(r, 401);
  r = await raw('/v1/chat/completions', { body, headers: { Authorization: `Bearer ${KEY.slice(0, -1)}` } });
  assertErrorShape(r, 401);
  r = await raw('/v1/completions', { body: JSON.stringify({ prompt: 'x' }), headers: { Authorization: KEY } });
  assertErrorShape(r, 401);
  r = await raw('/tokenize', { body: JSON.stringify({ prompt: 'x' }), auth: false });
  assertErrorShape(r, 401);
  const bad = client(URL_MAIN, 'wrong-key');
  await assert.rejects(bad.chat.completions.create({ model: MODEL, messages: msgs }),
    (err) => err instanceof OpenAI.AuthenticationError && err.status === 401);
  assert.equal((await raw('/v1/models', { method: 'GET', auth: false })).status, 200);
  assert.equal((await fetch(`${URL_MAIN}/health`)).status, 200);
});

test('404: unknown route, unknown model', async () => {
  assertErrorShape(await raw('/v2/nothing', { method: 'GET' }), 404);
  assertErrorShape(await raw('/v1/chat/completion', { body: '{}' }), 404);
  let e = assertErrorShape(await chat({ model: 'no-such-model' }), 404, 'model');
  assert.equal(e.code, 'model_not_found');
  e = assertErrorShape(await raw('/v1/models/no-such-model', { method: 'GET' }), 404);
  await assert.rejects(ai.completions.create({ model: 'gpt-4', prompt: 'x' }),
    (err) => err instanceof OpenAI.NotFoundError && err.status === 404);
});

test('405: known path, wrong method, with Allow', async () => {
  let r = await raw('/v1/chat/completions', { method: 'GET' });
  assertErrorShape(r, 405);
  assert.equal(r.headers.get('allow'), 'POST');
  r = await raw('/v1/models', { method: 'POST', body: '{}' });
  assertErrorShape(r, 405);
  assert.equal(r.headers.get('allow'), 'GET');
  r = await raw('/v1/completions', { method: 'DELETE' });
  assertErrorShape(r, 405);
});

test('413: body over --max-request-body-bytes (64 KiB here)', async () => {
  const big = JSON.stringify({ model: MODEL, prompt: 'a'.repeat(70000) });
  const e = assertErrorShape(await raw('/v1/completions', { body: big }), 413);
  assert.match(e.message, /65536/);
  // just under the limit is accepted by the HTTP layer (then 400 for the context)
  const fits = JSON.stringify({ prompt: 'a '.repeat(30000), max_tokens: 1 });
  const r = await raw('/v1/completions', { body: fits });
  assert.notEqual(r.status, 413);
  assert.ok(r.status < 500, r.text);
});

test('415: a body that is not declared as JSON', async () => {
  const r = await raw('/v1/chat/completions', { body: JSON.stringify({ messages: msgs }), headers: { 'Content-Type': 'text/plain' } });
  assertErrorShape(r, 415);
  const f = await raw('/v1/completions', { body: 'prompt=x', headers: { 'Content-Type': 'application/x-www-form-urlencoded' } });
  assertErrorShape(f, 415);
  // parameters of the media type are fine
  const ok = await raw('/v1/completions', { body: JSON.stringify({ prompt: 'x', max_tokens: 1 }), headers: { 'Content-Type': 'application/json; charset=utf-8' } });
  assert.equal(ok.status, 200, ok.text);
});

test('oversize headers and garbage are refused without a 5xx; the server stays healthy', async () => {
  const r = await fetch(`${URL_MAIN}/v1/models`, { headers: { 'X-Big': 'x'.repeat(40000) } }).catch(() => null);
  if (r) assert.ok(r.status >= 400 && r.status < 500, `status ${r.status}`);
  // a raw socket sending nonsense, then one closing mid-body
  const net = await import('node:net');
  const u = new URL(URL_MAIN);
  for (const payload of ['GARBAGE\r\n\r\n', `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"pro`]) {
    await new Promise((resolve) => {
      const s = net.connect(Number(u.port), u.hostname, () => { s.write(payload); setTimeout(() => { s.destroy(); resolve(); }, 100); });
      s.on('error', resolve);
    });
  }
  assert.equal((await fetch(`${URL_MAIN}/health`)).status, 200);
  const c = await ai.completions.create({ model: MODEL, prompt: 'x', max_tokens: 2 });
  assert.equal(c.choices.length, 1);
});
