// cancel.test.mjs: clients that go away cancel their requests: mid-stream, during a non-streaming
// generation, and while queued behind another request (on the "tight" server: --max-num-seqs 1
// --max-queued-requests 1, which also answers 503 + Retry-After when its queue is full). Each time
// /metrics then shows no sequence left running and every KV block free again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { client, MODEL, metrics, waitMetrics, URL_MAIN, URL_TIGHT, KEY, raw, assertErrorShape, sleep } from './common.mjs';

const idle = (m) => m.kiln_num_requests_active === 0 && m.kiln_num_requests_running === 0 &&
  m.kiln_num_requests_waiting === 0 && m.kiln_kv_blocks_free === m.kiln_kv_blocks_total &&
  m.kiln_http_calls_in_flight === 0;
const LONG = { model: MODEL, prompt: 'Once upon a time', max_tokens: 500, ignore_eos: true, temperature: 0 };

function assertIdle(m) {
  assert.equal(m.kiln_num_requests_active, 0);
  assert.equal(m.kiln_num_requests_running, 0);
  assert.equal(m.kiln_num_requests_waiting, 0);
  assert.equal(m.kiln_kv_blocks_free, m.kiln_kv_blocks_total);
  assert.equal(m.kiln_http_calls_in_flight, 0);
}

test('closing a stream mid-generation cancels it and frees its KV blocks', async () => {
  const ai = client();
  const m0 = await waitMetrics(idle);
  assertIdle(m0);
  const stream = await ai.completions.create({ ...LONG, n: 4, stream: true });
  let n = 0;
  for await (const ch of stream) {
    if (ch.choices.length) n++;
    if (n === 3) break; // leaving the loop aborts the HTTP request
  }
  const m1 = await waitMetrics((m) => idle(m) && m.kiln_requests_cancelled_total > m0.kiln_requests_cancelled_total);
  assertIdle(m1);
  assert.equal(m1.kiln_requests_cancelled_total, m0.kiln_requests_cancelled_total + 1);
  assert.ok(m1.kiln_generation_tokens_total - m0.kiln_generation_tokens_total < 4 * 500, 'generation stopped early');
});

test('a non-streaming client that disconnects cancels its request', async () => {
  const m0 = await waitMetrics(idle);
  const ac = new AbortController();
  const p = fetch(`${URL_MAIN}/v1/completions`, {
    method: 'POST', signal: ac.signal,
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ ...LONG, n: 8 }),
  }).catch((e) => e);
  await waitMetrics((m) => m.kiln_num_requests_running > 0, URL_MAIN, 5000);
  ac.abort();
  await p;
  const m1 = await waitMetrics((m) => idle(m) && m.kiln_requests_cancelled_total > m0.kiln_requests_cancelled_total);
  assertIdle(m1);
  assert.equal(m1.kiln_requests_cancelled_total, m0.kiln_requests_cancelled_total + 1);
  assert.ok(m1.kiln_generation_tokens_total - m0.kiln_generation_tokens_total < 8 * 500, 'generation stopped early');
});

test('queued requests: 503 + Retry-After when the queue is full; closing a queued stream cancels it', async () => {
  const ai = client(URL_TIGHT);
  let m0 = await waitMetrics(idle, URL_TIGHT);
  assertIdle(m0);
  // A runs (max-num-seqs 1), B waits in the queue (its stream is open: headers and keep-alives
  // arrive), so C finds the queue full. On a fast machine A (500 tokens of a tiny model) can
  // finish between the metrics poll that saw B queued and C's arrival; then B runs, C is served,
  // and the scenario is set up again (up to 5 times).
  let ita, b, c;
  for (let attempt = 0; ; attempt++) {
    const a = await ai.completions.create({ ...LONG, stream: true });
    ita = a[Symbol.asyncIterator]();
    await ita.next();
    b = await ai.completions.create({ ...LONG, stream: true });
    const mq = await waitMetrics((m) => m.kiln_num_requests_waiting === 1, URL_TIGHT, 5000);
    c = await raw('/v1/completions', { base: URL_TIGHT, body: JSON.stringify({ ...LONG, max_tokens: 5 }) });
    if (c.status === 503 || attempt === 4) {
      assert.equal(mq.kiln_num_requests_waiting, 1);
      assert.equal(mq.kiln_num_requests_running, 1);
      break;
    }
    for await (const _ of b) { /* drain */ }
    for (let r = await ita.next(); !r.done; r = await ita.next()) { /* drain */ }
    m0 = await waitMetrics(idle, URL_TIGHT); /* the counts below start from here */
    assertIdle(m0);
  }
  const e = assertErrorShape(c, 503);
  assert.equal(c.headers.get('retry-after'), '1');
  assert.equal(e.type, 'server_error');
  // closing B while queued cancels it; A keeps running
  b.controller.abort();
  const m1 = await waitMetrics((m) => m.kiln_num_requests_waiting === 0 &&
    m.kiln_requests_cancelled_total === m0.kiln_requests_cancelled_total + 1, URL_TIGHT);
  assert.equal(m1.kiln_num_requests_waiting, 0);
  assert.equal(m1.kiln_requests_cancelled_total, m0.kiln_requests_cancelled_total + 1);
  // A was not touched by B's cancellation: it runs to its full length (on a fast machine it may
  // already have finished by now, so read it to the end rather than asserting it still runs).
  let finish = null;
  for (let r = await ita.next(); !r.done; r = await ita.next())
    if (r.value.choices.length && r.value.choices[0].finish_reason) finish = r.value.choices[0].finish_reason;
  assert.equal(finish, 'length', 'A ran to max_tokens');
  const m2 = await waitMetrics((m) => idle(m) && m.kiln_requests_finished_total === m0.kiln_requests_finished_total + 1, URL_TIGHT);
  assertIdle(m2);
  assert.equal(m2.kiln_requests_cancelled_total, m0.kiln_requests_cancelled_total + 1, 'only B was cancelled');
  // and the server serves the next request normally
  const d = await ai.completions.create({ model: MODEL, prompt: 'Once upon a time', max_tokens: 4, temperature: 0 });
  assert.equal(d.usage.completion_tokens, 4);
  await sleep(10);
  assertIdle(await metrics(URL_TIGHT));
});
