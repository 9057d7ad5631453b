// serving.test.mjs: serving at scale against the kiln servers started by tests/suites/serving.sh
// (env KILN_URL_MAIN, _NOCACHE, _TINY, _TIGHT, _FAIR; model stories260K, context 512): prefix
// caching (cached_tokens and the same greedy text as with caching off), n > 1 sharing the prompt's
// blocks (seeded choices equal separate requests), no cross-talk between 64 concurrent requests,
// preemption and eviction in a 128-token KV cache with exact greedy texts, admission control
// (503 + Retry-After charging nothing, 400 for a prompt over the queued-token limit), fair share
// between clients, and the /metrics exposition. The references are the same requests served
// alone, one at a time, by a server without prefix caching.
import { test } from 'node:test';
import assert from 'node:assert/strict';

const MAIN = process.env.KILN_URL_MAIN;
const NOCACHE = process.env.KILN_URL_NOCACHE;
const TINY = process.env.KILN_URL_TINY;
const TIGHT = process.env.KILN_URL_TIGHT;
const FAIR = process.env.KILN_URL_FAIR;
const MODEL = 'stories260K';

async function post(base, path, body, headers = {}) {
  const res = await fetch(`${base}${path}`, {
    method: 'POST', headers: { 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}

// A non-streaming completion that must succeed: {text, usage}.
async function complete(base, prompt, extra = {}, headers = {}) {
  const r = await post(base, '/v1/completions',
    { model: MODEL, prompt, max_tokens: 32, temperature: 0, ...extra }, headers);
  assert.equal(r.status, 200, r.text);
  return { text: r.json.choices[0].text, choices: r.json.choices, usage: r.json.usage };
}

// A streaming completion: resolves {text, usage} at [DONE]; `first` resolves at the first token.
function stream(base, prompt, extra = {}, headers = {}) {
  const ctl = new AbortController();
  let onFirst;
  const first = new Promise((res) => { onFirst = res; });
  const done = (async () => {
    const res = await fetch(`${base}/v1/completions`, {
      method: 'POST', signal: ctl.signal,
      headers: { 'Content-Type': 'application/json', ...headers },
      body: JSON.stringify({ model: MODEL, prompt, max_tokens: 32, temperature: 0, stream: true,
        stream_options: { include_usage: true }, ...extra }),
    });
    assert.equal(res.status, 200);
    const dec = new TextDecoder();
    let buf = '', text = '', usage = null;
    for await (const chunk of res.body) {
      buf += dec.decode(chunk, { stream: true });
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!ev.startsWith('data: ')) continue;
        const data = ev.slice(6);
        if (data === '[DONE]') return { text, usage };
        const o = JSON.parse(data);
        assert.ok(!o.error, data);
        if (o.usage) usage = o.usage;
        if (o.choices.length && o.choices[0].text) { text += o.choices[0].text; onFirst(); }
      }
    }
    throw new Error('stream ended without [DONE]');
  })();
  done.catch(() => {});
  return { first, done, abort: () => ctl.abort() };
}

async function tokenize(base, prompt) {
  const r = await post(base, '/tokenize', { model: MODEL, prompt });
  assert.equal(r.status, 200, r.text);
  return r.json.tokens;
}

// /metrics samples: {"vllm:name{labels}": value, ...} and by bare name (first sample).
async function metrics(base) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = { _text: text };
  for (const line of text.split('\n')) {
    const mm = /^([a-zA-Z0-9_:]+)(\{[^}]*\})? (\S+)$/.exec(line);
    if (!mm) continue;
    m[mm[1] + (mm[2] || '')] = Number(mm[3]);
    if (!(mm[1] in m)) m[mm[1]] = Number(mm[3]);
  }
  return m;
}

async function waitFor(pred, what, ms = 20000) {
  const t0 = Date.now();
  for (;;) {
    if (await pred()) return;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const STORY = 'Once upon a time, there was a little girl named Lily. She loved to play outside ' +
  'in the park with her friends. One day, she saw a big red ball under a tree. She ran to the ' +
  'ball and kicked it very high. The ball flew over the fence and into the garden of an old ' +
  'man. Lily was sad, but her mom said they could ask the man for the ball. ';

test('prefix reuse: a second request with the same 400-token prefix reuses >= 384 cached tokens and returns the text of a server without caching', async () => {
  let ids = await tokenize(MAIN, STORY.repeat(8));
  assert.ok(ids.length >= 420, `${ids.length} tokens`);
  const prefix = ids.slice(0, 400);
  const tail1 = ids.slice(400, 410);
  const tail2 = (await tokenize(MAIN, ' Tom and his dog went to the beach')).slice(1);
  const p1 = [...prefix, ...tail1], p2 = [...prefix, ...tail2];
  const a = await complete(MAIN, p1, { max_tokens: 40 });
  assert.equal(a.usage.prompt_tokens, p1.length);
  const b = await complete(MAIN, p2, { max_tokens: 40 });
  assert.ok(b.usage.prompt_tokens_details.cached_tokens >= 384,
    `cached_tokens ${b.usage.prompt_tokens_details.cached_tokens}`);
  assert.equal(b.usage.prompt_tokens, p2.length);
  const ref = await complete(NOCACHE, p2, { max_tokens: 40 });
  assert.equal(ref.usage.prompt_tokens_details.cached_tokens, 0);
  assert.equal(b.text, ref.text);
  assert.ok(b.text.length > 0);
  // Streaming reports the reuse too, and the same text.
  const s = await stream(MAIN, p2, { max_tokens: 40 }).done;
  assert.equal(s.text, ref.text);
  assert.ok(s.usage.prompt_tokens_details.cached_tokens >= 400);
  // A prompt differing in its first token reuses nothing (the hash covers the whole prefix).
  const p3 = [prefix[0], prefix[1] === 300 ? 301 : 300, ...prefix.slice(2), ...tail2];
  const c = await complete(MAIN, p3, { max_tokens: 10 });
  assert.equal(c.usage.prompt_tokens_details.cached_tokens, 0);
  assert.equal(c.text, (await complete(NOCACHE, p3, { max_tokens: 10 })).text);
});

test('n > 1 shares the prompt blocks: seeded choices equal separate requests with seed + i', async () => {
  const prompt = STORY.slice(0, 200);
  const r = await complete(MAIN, prompt, { n: 3, temperature: 1.0, seed: 1234, max_tokens: 30 });
  assert.equal(r.choices.length, 3);
  const texts = [];
  for (let i = 0; i < 3; i++) {
    const one = await complete(NOCACHE, prompt, { temperature: 1.0, seed: 1234 + i, max_tokens: 30 });
    texts.push(one.text);
    assert.equal(r.choices[i].text, one.text, `choice ${i}`);
  }
  assert.ok(new Set(texts).size >= 2, 'seeded choices should differ');
});

test('no cross-talk: 64 concurrent requests with distinct nonces each get their own continuation', async () => {
  const names = ['Tom', 'Sue', 'Max', 'Ann', 'Ben', 'Mia', 'Sam', 'Zoe'];
  const prompts = [];
  for (let k = 0; k < 64; k++)
    prompts.push(`${STORY.slice(0, 120)}Nonce ${1000 + k * 37}: ${names[k % 8]} saw a ${k % 2 ? 'cat' : 'bird'} and`);
  const ref = [];
  for (const p of prompts) ref.push((await complete(NOCACHE, p, { max_tokens: 24 })).text);
  assert.ok(new Set(ref).size >= 8, `only ${new Set(ref).size} distinct continuations`);
  const got = await Promise.all(prompts.map((p, k) => (k % 2
    ? complete(MAIN, p, { max_tokens: 24 }).then((x) => x.text)
    : stream(MAIN, p, { max_tokens: 24 }).done.then((x) => x.text))));
  for (let k = 0; k < 64; k++) assert.equal(got[k], ref[k], `request ${k}`);
  const m = await metrics(MAIN);
  assert.ok(m.kiln_max_seqs_in_step > 1, 'requests shared forward passes');
});

test('preemption: a 128-token KV cache forces preemption and every request still gets its exact greedy text', async () => {
  const prompts = [];
  for (let k = 0; k < 8; k++) prompts.push(`${names8()[k]} went to the park and`);
  const ref = [];
  for (const p of prompts) ref.push((await complete(NOCACHE, p, { max_tokens: 96, ignore_eos: true })).text);
  const before = await metrics(TINY);
  const got = await Promise.all(prompts.map((p, k) => (k % 2
    ? complete(TINY, p, { max_tokens: 96, ignore_eos: true }).then((x) => x.text)
    : stream(TINY, p, { max_tokens: 96, ignore_eos: true }).done.then((x) => x.text))));
  for (let k = 0; k < 8; k++) assert.equal(got[k], ref[k], `request ${k}`);
  const after = await metrics(TINY);
  assert.ok(after['vllm:num_preemptions_total'] > before['vllm:num_preemptions_total'],
    `preemptions ${before['vllm:num_preemptions_total']} -> ${after['vllm:num_preemptions_total']}`);
  assert.equal(after['vllm:num_requests_running'], 0);
  assert.equal(after['vllm:num_requests_waiting'], 0);
  assert.equal(after['vllm:kv_cache_usage_perc'], 0);
  assert.equal(after.kiln_requests_failed_total, 0);
});

function names8() { return ['Tom', 'Sue', 'Max', 'Ann', 'Ben', 'Mia', 'Sam', 'Zoe']; }

test('eviction: cached blocks are reused, evicted when another prompt needs the memory, and the text never changes', async () => {
  const a = (await tokenize(TINY, STORY)).slice(0, 70);
  const b = (await tokenize(TINY, STORY.slice(40) + STORY)).slice(0, 100);
  assert.equal(a.length, 70);
  assert.equal(b.length, 100);
  const a1 = await complete(TINY, a, { max_tokens: 20 });
  const a2 = await complete(TINY, a, { max_tokens: 20 });
  assert.equal(a2.usage.prompt_tokens_details.cached_tokens, 64);
  assert.equal(a2.text, a1.text);
  // b + its completion fill the whole 8-block pool: a's cached blocks must go.
  const before = await metrics(TINY);
  const bb = await complete(TINY, b, { max_tokens: 27, ignore_eos: true });
  assert.equal(bb.text, (await complete(NOCACHE, b, { max_tokens: 27, ignore_eos: true })).text);
  const a3 = await complete(TINY, a, { max_tokens: 20 });
  assert.ok(a3.usage.prompt_tokens_details.cached_tokens < 64,
    `cached ${a3.usage.prompt_tokens_details.cached_tokens} after eviction`);
  assert.equal(a3.text, a1.text);
  assert.equal(a1.text, (await complete(NOCACHE, a, { max_tokens: 20 })).text);
  const after = await metrics(TINY);
  assert.equal(after['vllm:num_preemptions_total'], before['vllm:num_preemptions_total'],
    'eviction of unused cached blocks comes before preemption');
});

test('queue overflow: 503 with Retry-After before any work, nothing charged; a prompt over the queued-token limit is a 400', async () => {
  // n = 30 choices run one after the other: the single slot stays busy until the abort.
  const busy = stream(TIGHT, 'Once upon a time', { max_tokens: 400, ignore_eos: true, n: 30 });
  await busy.first;
  const queued = [complete(TIGHT, 'Lily and Tom', { max_tokens: 4 }, { 'X-Client-Name': 'q1' }),
    complete(TIGHT, 'The big dog', { max_tokens: 4 }, { 'X-Client-Name': 'q2' })];
  await waitFor(async () => (await metrics(TIGHT)).kiln_num_requests_active === 3, '2 queued');
  const m0 = await metrics(TIGHT);
  const r = await post(TIGHT, '/v1/completions', { model: MODEL, prompt: 'One more', max_tokens: 4 },
    { 'X-Client-Name': 'q3' });
  assert.equal(r.status, 503, r.text);
  assert.ok(/^[0-9]+$/.test(r.headers.get('retry-after') || ''), `Retry-After: ${r.headers.get('retry-after')}`);
  assert.equal(r.json.error.code, 'queue_full');
  assert.equal(r.json.error.type, 'server_error');
  const m1 = await metrics(TIGHT);
  assert.equal(m1.kiln_requests_submitted_total, m0.kiln_requests_submitted_total);
  assert.equal(m1['vllm:prompt_tokens_total'], m0['vllm:prompt_tokens_total']);
  assert.equal(m1.kiln_num_requests_active, 3);
  assert.equal(m1['kiln:requests_rejected_total'], m0['kiln:requests_rejected_total'] + 1);
  // 120 prompt tokens can never fit a 100-token queue: 400 at once, not 503.
  const long = Array.from({ length: 120 }, (_, i) => 100 + i);
  const r2 = await post(TIGHT, '/v1/completions', { model: MODEL, prompt: long, max_tokens: 4 });
  assert.equal(r2.status, 400, r2.text);
  assert.equal(r2.json.error.param, 'prompt');
  busy.abort();
  const [q1, q2] = await Promise.all(queued);
  assert.ok(q1.text.length > 0 && q2.text.length > 0);
  await waitFor(async () => {
    const m = await metrics(TIGHT);
    return m['vllm:num_requests_running'] === 0 && m['vllm:kv_cache_usage_perc'] === 0;
  }, 'idle');
});

test('queue share: one client cannot hold more than half of the queue (X-Client-Name)', async () => {
  // n = 30 choices run one after the other: the single slot stays busy until the abort.
  const busy = stream(TIGHT, 'Once upon a time', { max_tokens: 400, ignore_eos: true, n: 30 });
  await busy.first;
  const hog = complete(TIGHT, 'Hog one', { max_tokens: 4 }, { 'X-Client-Name': 'hog' });
  await waitFor(async () => (await metrics(TIGHT)).kiln_num_requests_active === 2, '1 queued');
  const r = await post(TIGHT, '/v1/completions', { model: MODEL, prompt: 'Hog two', max_tokens: 4 },
    { 'X-Client-Name': 'hog' });
  assert.equal(r.status, 503, r.text);
  assert.equal(r.json.error.code, 'queue_full');
  assert.ok(r.headers.get('retry-after'));
  const other = complete(TIGHT, 'Other one', { max_tokens: 4 }, { 'X-Client-Name': 'other' });
  await waitFor(async () => (await metrics(TIGHT)).kiln_num_requests_active === 3, '2 queued');
  busy.abort();
  const [a, b] = await Promise.all([hog, other]);
  assert.ok(a.text.length > 0 && b.text.length > 0);
});

test("fair share: one client's backlog does not starve another client's request", async () => {
  // One sequence at a time. alice's first request (n = 50 choices of 450 tokens, run one after
  // the other) holds the engine until it is aborted, while 16 more of hers queue; then bob's
  // single request arrives. Round-robin admits bob right after alice's first queued request;
  // FIFO would put him behind all 16.
  const busy = stream(FAIR, 'Once upon a time', { max_tokens: 450, ignore_eos: true, n: 50 },
    { 'X-Client-Name': 'alice' });
  await busy.first;
  const order = [];
  const track = (name, p) => p.then(() => order.push(name));
  const all = [];
  for (let i = 0; i < 16; i++)
    all.push(track(`alice${i}`, complete(FAIR, `Alice story ${i}`, { max_tokens: 24, ignore_eos: true },
      { 'X-Client-Name': 'alice' })));
  await waitFor(async () => (await metrics(FAIR)).kiln_num_requests_active === 17, '17 active');
  all.push(track('bob', complete(FAIR, 'Bob story', { max_tokens: 24, ignore_eos: true },
    { 'X-Client-Name': 'bob' })));
  await waitFor(async () => (await metrics(FAIR)).kiln_num_requests_active === 18, '18 active');
  assert.equal(order.length, 0, 'the long request should still hold the engine');
  busy.abort();
  await Promise.all(all);
  assert.equal(order.length, 17);
  assert.ok(order.indexOf('bob') <= 1, `completion order: ${order.join(' ')}`);
});

test('/metrics: vLLM names under vllm: and kiln:, histograms consistent with the requests served', async () => {
  const m = await metrics(MAIN);
  const t = m._text;
  for (const p of ['vllm:', 'kiln:']) {
    for (const [name, type] of [['num_requests_running', 'gauge'], ['num_requests_waiting', 'gauge'],
      ['kv_cache_usage_perc', 'gauge'], ['prefix_cache_queries', 'counter'],
      ['prefix_cache_hits', 'counter'], ['num_preemptions', 'counter'], ['prompt_tokens', 'counter'],
      ['generation_tokens', 'counter'], ['request_success', 'counter'],
      ['time_to_first_token_seconds', 'histogram'], ['inter_token_latency_seconds', 'histogram'],
      ['e2e_request_latency_seconds', 'histogram'], ['request_queue_time_seconds', 'histogram']])
      assert.ok(t.includes(`# TYPE ${p}${name} ${type}\n`), `${p}${name} ${type}`);
  }
  const lab = '{model_name="stories260K"';
  const n = m[`vllm:e2e_request_latency_seconds_count${lab}}`];
  assert.ok(n >= 69, `e2e count ${n}`); // the requests of the tests above
  assert.equal(m[`vllm:e2e_request_latency_seconds_bucket${lab},le="+Inf"}`], n);
  assert.equal(m[`vllm:time_to_first_token_seconds_count${lab}}`], n);
  assert.ok(m[`vllm:inter_token_latency_seconds_count${lab}}`] > n);
  assert.ok(m[`vllm:request_queue_time_seconds_count${lab}}`] >= n);
  assert.ok(m['vllm:prefix_cache_hits_total'] >= 384);
  assert.ok(m['vllm:prefix_cache_queries_total'] >= m['vllm:prefix_cache_hits_total']);
  const ok = m[`vllm:request_success_total${lab},finished_reason="stop"}`] +
    m[`vllm:request_success_total${lab},finished_reason="length"}`];
  assert.ok(ok >= n, `success ${ok} vs ${n}`);
  assert.equal(m['vllm:generation_tokens_total'], m['kiln:generation_tokens_total']);
});
