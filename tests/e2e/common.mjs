// common.mjs: shared helpers of the end-to-end tests: the official OpenAI client pointed at the
// kiln server started by tests/suites/e2e.sh (env KILN_URL, KILN_URL_TIGHT, KILN_API_KEY,
// KILN_MODEL_NAME), raw HTTP for malformed requests, /metrics counters, and `kiln run`.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

export const URL_MAIN = process.env.KILN_URL;
export const URL_TIGHT = process.env.KILN_URL_TIGHT;
export const KEY = process.env.KILN_API_KEY;
export const MODEL = process.env.KILN_MODEL_NAME;

export function client(base = URL_MAIN, apiKey = KEY) {
  return new OpenAI({ baseURL: `${base}/v1`, apiKey, maxRetries: 0, timeout: 120000 });
}

// Raw request: returns {status, headers, text, json}.
export async function raw(path, { method = 'POST', body, headers = {}, base = URL_MAIN, auth = true } = {}) {
  const h = { ...headers };
  if (auth && KEY && !('Authorization' in h)) h.Authorization = `Bearer ${KEY}`;
  if (body !== undefined && !('Content-Type' in h)) h['Content-Type'] = 'application/json';
  const res = await fetch(`${base}${path}`, { method, headers: h, body });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, text, json };
}

// Checks OpenAI's error shape {"error": {message, type, param, code}}.
export function assertErrorShape(r, status, param) {
  assert.equal(r.status, status, `status ${r.status}: ${r.text}`);
  assert.ok(r.json && typeof r.json.error === 'object', `not an error object: ${r.text}`);
  const e = r.json.error;
  assert.deepEqual(Object.keys(e).sort(), ['code', 'message', 'param', 'type']);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  assert.equal(typeof e.type, 'string');
  assert.ok(e.code === null || typeof e.code === 'string');
  if (param !== undefined) assert.equal(e.param, param, `param of ${r.text}`);
  return e;
}

export async function metrics(base = URL_MAIN) {
  const res = await fetch(`${base}/metrics`);
  const text = await res.text();
  const m = {};
  for (const line of text.split('\n')) {
    const mm = /^(kiln_[a-z_]+) (-?[0-9.]+)$/.exec(line);
    if (mm) m[mm[1]] = Number(mm[2]);
  }
  return m;
}

// Polls /metrics until pred(m) holds (or fails after timeout_ms); returns the last snapshot.
export async function waitMetrics(pred, base = URL_MAIN, timeout_ms = 20000) {
  const t0 = Date.now();
  let m;
  for (;;) {
    m = await metrics(base);
    if (pred(m)) return m;
    if (Date.now() - t0 > timeout_ms) return m;
    await new Promise((r) => setTimeout(r, 50));
  }
}

// `kiln run` greedy text (the CLI, independent of the server's HTTP/JSON path).
export function kilnRun(prompt, n) {
  return execFileSync(process.env.KILN_BIN,
    ['run', '-m', process.env.KILN_MODEL, '-p', prompt, '-n', String(n), '--temp', '0'],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
}

// The reference greedy continuation of "Once upon a time" (llama.cpp's output, 252 tokens).
export const REF_TEXT = readFileSync(process.env.KILN_REF_TEXT, 'utf8');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
