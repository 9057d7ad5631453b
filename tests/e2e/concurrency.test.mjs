// concurrency.test.mjs: 32 simultaneous streaming requests with different prompts and greedy
// sampling each return exactly the text the same request returns alone, and /metrics shows that
// they shared batched forward passes (far fewer engine steps than generated tokens).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { client, MODEL, metrics } from './common.mjs';

const ai = client();
const NAMES = ['Lily', 'Tom', 'Sue', 'Ben', 'Max', 'Mia', 'Sam', 'Zoe', 'a cat', 'a dog', 'a bird',
  'a fish', 'a frog', 'a bear', 'a duck', 'a girl', 'a boy', 'a king', 'a queen', 'a tree', 'a car',
  'a ball', 'the sun', 'the moon', 'a star', 'a bunny', 'a mouse', 'an owl', 'a fox', 'a lion',
  'a pig', 'a cow'];
const N_TOKENS = 16;

async function streamText(prompt) {
  const s = await ai.completions.create({ model: MODEL, prompt, max_tokens: N_TOKENS, temperature: 0, stream: true });
  let text = '';
  let finish = null;
  for await (const ch of s) for (const c of ch.choices) { text += c.text; finish = c.finish_reason ?? finish; }
  return { text, finish };
}

test('32 concurrent greedy streams equal the same requests run alone, in shared batches', async () => {
  const prompts = NAMES.map((n) => `Once upon a time, ${n}`);
  assert.equal(prompts.length, 32);
  const alone = [];
  for (const p of prompts) alone.push(await streamText(p));
  const before = await metrics();
  const together = await Promise.all(prompts.map((p) => streamText(p)));
  const after = await metrics();
  for (let i = 0; i < 32; i++) {
    assert.equal(together[i].text, alone[i].text, `prompt ${i}: "${prompts[i]}"`);
    assert.equal(together[i].finish, alone[i].finish);
  }
  assert.ok(new Set(alone.map((a) => a.text)).size > 8, 'different prompts give different texts');
  const steps = after.kiln_steps_total - before.kiln_steps_total;
  const gen = after.kiln_generation_tokens_total - before.kiln_generation_tokens_total;
  console.log(`# concurrent phase: ${gen} tokens in ${steps} engine steps; max sequences in one step so far: ${after.kiln_max_seqs_in_step}`);
  assert.equal(gen, 32 * N_TOKENS);
  assert.ok(steps > 0);
  assert.ok(gen / steps >= 4, `only ${gen / steps} tokens per forward pass: no batching`);
  assert.ok(after.kiln_max_seqs_in_step >= 8);
});
