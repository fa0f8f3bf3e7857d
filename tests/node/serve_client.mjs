// serve_client.mjs - the client side of tests/test_serve.c against a running `minigpt serve`.
// usage: node serve_client.mjs MODE BASE_URL MODEL IMAGE.png [args...]
// Prints ONE line of JSON on stdout with what it observed; tests/test_serve.c makes the checks.
// Modes:
//   openai      the real `openai` npm client: non-streaming and streaming requests with an image
//   multiturn   the same image in two turns and two requests (the server must encode it once)
//   text        text-only chat through the openai client (LLaMA GGUF)
//   bad         one malformed request of each kind, raw fetch: status and error code of each
//   load N M    N concurrent clients x M requests, about 1 in 4 malformed
//   busy N      N requests at once against a slow server with a short queue
//   cancel      a request abandoned by its client (streaming and not)
//   detect P    the openai client asks "[detection] P" greedily, non-streaming then streaming
//               (the demo model: real boxes)
import OpenAI from 'openai';
import fs from 'node:fs';

const [mode, base, model, imagePath, ...rest] = process.argv.slice(2);
const img = imagePath && fs.existsSync(imagePath) ? fs.readFileSync(imagePath).toString('base64') : '';
const dataUrl = 'data:image/png;base64,' + img;
const apiKey = process.env.MG_API_KEY || 'none';
const client = new OpenAI({ baseURL: base + '/v1', apiKey, maxRetries: 0, timeout: 30000 });

const imagePart = () => ({ type: 'image_url', image_url: { url: dataUrl } });
const userWithImage = (text) => ({ role: 'user', content: [imagePart(), { type: 'text', text }] });

async function post(body, headers = {}) {
  const r = await fetch(base + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + apiKey, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await r.text();
  let json = null;
  try { json = JSON.parse(text); } catch (e) { /* not JSON */ }
  return { status: r.status, json, text };
}

async function health() { return (await fetch(base + '/health')).json(); }

async function modeOpenai() {
  const out = {};
  const r = await client.chat.completions.create({
    model, messages: [userWithImage('[detection] red circle')], max_tokens: 16, temperature: 0.2, seed: 7,
  });
  const m = r.choices[0].message;
  out.nonstream = { content: m.content, finish: r.choices[0].finish_reason, usage: r.usage, grounding: m.grounding ?? null };
  const stream = await client.chat.completions.create({
    model, messages: [userWithImage('[detection] red circle')], max_tokens: 16, stream: true,
    stream_options: { include_usage: true }, stop: ['zzz'],
  });
  let text = '', chunks = 0, finish = null, grounding = null, usage = null;
  for await (const c of stream) {
    chunks++;
    if (c.usage) usage = c.usage;
    const ch = c.choices[0];
    if (!ch) continue;
    if (ch.delta?.content) text += ch.delta.content;
    if (ch.finish_reason) finish = ch.finish_reason;
    if (ch.grounding) grounding = ch.grounding;
  }
  out.stream = { text, chunks, finish, grounding, usage };
  out.models = (await client.models.list()).data.map((x) => x.id);
  return out;
}

async function modeMultiturn() {
  const h0 = await health();
  const a = await client.chat.completions.create({ model, messages: [userWithImage('what is this?')], max_tokens: 4, seed: 1 });
  const second = await client.chat.completions.create({
    model, max_tokens: 4, seed: 1,
    messages: [userWithImage('what is this?'), { role: 'assistant', content: a.choices[0].message.content },
               userWithImage('and now?')],
  });
  const h1 = await health();
  return { h0, h1, timings: second.timings ?? null, usage: second.usage, content: second.choices[0].message.content };
}

async function modeText() {
  const r = await client.chat.completions.create({
    model, messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'hello there' }],
    max_tokens: 6, temperature: 0,
  });
  const again = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'hello there' }], max_tokens: 6, temperature: 0,
  });
  let text = '';
  const s = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 5, stream: true });
  for await (const c of s) text += c.choices[0]?.delta?.content ?? '';
  const withImage = await post({ model, messages: [userWithImage('what?')] });
  const long = await post({ model, messages: [{ role: 'user', content: 'hello there '.repeat(200) }] });
  return { content: r.choices[0].message.content, again: again.choices[0].message.content, usage: r.usage,
           grounding: 'grounding' in r.choices[0].message, stream: text,
           image: { status: withImage.status, code: withImage.json?.error?.code },
           long: { status: long.status, code: long.json?.error?.code } };
}

// One request per kind of mistake: [name, request] where request is a body or {raw, headers}.
function badRequests(bigImageUrl) {
  const u = (content) => ({ model, messages: [{ role: 'user', content }] });
  return [
    ['malformed_json', '{"messages": [ {"role": "user", '],
    ['not_object', '[1,2,3]'],
    ['empty_body', ''],
    ['messages_missing', { model }],
    ['messages_wrong_type', { model, messages: 'hello' }],
    ['role_unknown', { model, messages: [{ role: 'wizard', content: 'x' }] }],
    ['content_wrong_type', u(42)],
    ['part_unknown', u([{ type: 'audio', audio: 'x' }])],
    ['last_not_user', { model, messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }] }],
    ['unknown_model', { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }] }],
    ['temperature_type', { ...u('x'), temperature: 'hot' }],
    ['temperature_range', { ...u('x'), temperature: 7 }],
    ['max_tokens_cap', { ...u('x'), max_tokens: 100000 }],
    ['max_tokens_type', { ...u('x'), max_tokens: 1.5 }],
    ['stop_type', { ...u('x'), stop: 5 }],
    ['stream_type', { ...u('x'), stream: 'yes' }],
    ['n_two', { ...u('x'), n: 2 }],
    ['bad_base64', u([{ type: 'image_url', image_url: { url: 'data:image/png;base64,@@@notbase64' } }, { type: 'text', text: 'x' }])],
    ['not_an_image', u([{ type: 'image_url', image_url: { url: 'data:image/png;base64,' + Buffer.from('hello world, no image').toString('base64') } }])],
    ['remote_url', u([{ type: 'image_url', image_url: { url: 'http://example.com/cat.png' } }])],
    ['image_too_large', u([{ type: 'image_url', image_url: { url: bigImageUrl } }, { type: 'text', text: 'x' }])],
    ['body_too_large', JSON.stringify({ ...u('x'.repeat(2 << 20)) })],
    ['no_auth', { raw: u('x'), headers: { Authorization: '' } }],
    ['wrong_auth', { raw: u('x'), headers: { Authorization: 'Bearer wrong' } }],
  ];
}

async function modeBad() {
  const big = rest[0] ? 'data:image/png;base64,' + fs.readFileSync(rest[0]).toString('base64') : dataUrl;
  const results = {};
  for (const [name, req] of badRequests(big)) {
    const r = req && req.raw ? await post(req.raw, req.headers) : await post(req);
    results[name] = { status: r.status, code: r.json?.error?.code ?? null, type: r.json?.error?.type ?? null,
                      has_message: typeof r.json?.error?.message === 'string' };
  }
  const notFound = await fetch(base + '/v1/nothing', { headers: { Authorization: 'Bearer ' + apiKey } });
  results.not_found = { status: notFound.status };
  const wrongMethod = await fetch(base + '/v1/chat/completions', { headers: { Authorization: 'Bearer ' + apiKey } });
  results.wrong_method = { status: wrongMethod.status };
  const good = await post({ model, messages: [userWithImage('[detection] circle')], max_tokens: 4 });
  const page = await fetch(base + '/');
  const js = await fetch(base + '/app.js');
  return { results, good: good.status, page: { status: page.status, type: page.headers.get('content-type'),
           has_chips: (await page.text()).includes('data-task="detection"') }, js: js.status, health: await health() };
}

async function modeLoad() {
  const clients = parseInt(rest[0] || '16', 10), perClient = parseInt(rest[1] || '50', 10);
  const stats = { ok: 0, bad_4xx: 0, unexpected: 0, valid_sent: 0, malformed_sent: 0, failures: [] };
  const malformed = ['{"messages":', '{"messages":[{"role":"user","content":7}]}',
                     JSON.stringify({ model, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:image/png;base64,!!' } }] }] }),
                     JSON.stringify({ model, messages: [{ role: 'user', content: 'x' }], max_tokens: -3 })];
  const t0 = Date.now();
  async function worker(c) {
    for (let i = 0; i < perClient; i++) {
      const bad = (c + i) % 4 === 3;
      const withImage = (c + i) % 2 === 0;
      const body = bad ? malformed[(c * 7 + i) % malformed.length]
                       : { model, messages: [withImage ? userWithImage('[detection] x') : { role: 'user', content: 'hi ' + c }],
                           max_tokens: 4, stream: i % 5 === 0 };
      bad ? stats.malformed_sent++ : stats.valid_sent++;
      try {
        const r = await post(body);
        if (!bad && r.status === 200) stats.ok++;
        else if (bad && r.status >= 400 && r.status < 500 && r.json?.error) stats.bad_4xx++;
        else { stats.unexpected++; if (stats.failures.length < 5) stats.failures.push([bad, r.status, r.text.slice(0, 200)]); }
      } catch (e) {
        stats.unexpected++;
        if (stats.failures.length < 5) stats.failures.push([bad, 'exception', String(e)]);
      }
    }
  }
  await Promise.all(Array.from({ length: clients }, (_, c) => worker(c)));
  stats.seconds = (Date.now() - t0) / 1000;
  stats.health = await health();
  return stats;
}

async function modeBusy() {
  const n = parseInt(rest[0] || '8', 10);
  const order = [];
  const reqs = [];
  for (let i = 0; i < n; i++) {
    reqs.push(post({ model, messages: [{ role: 'user', content: 'request ' + i }], max_tokens: 2 }).then((r) => {
      if (r.status === 200) order.push(i);
      return { status: r.status, code: r.json?.error?.code ?? null, retry: null };
    }));
    await new Promise((res) => setTimeout(res, 15)); // arrival order = index order
  }
  const results = await Promise.all(reqs);
  return { results, order, health: await health() };
}

async function modeCancel() {
  const h0 = await health();
  const t0 = Date.now();
  // a streamed request and a plain one, each abandoned after 150 ms
  for (const stream of [true, false]) {
    const ac = new AbortController();
    const p = fetch(base + '/v1/chat/completions', {
      method: 'POST', signal: ac.signal,
      headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + apiKey },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'long story' }], max_tokens: 64, stream }),
    }).then(async (r) => { await r.text(); }).catch(() => {});
    await new Promise((res) => setTimeout(res, 150));
    ac.abort();
    await p;
  }
  await new Promise((res) => setTimeout(res, 300));
  const t1 = Date.now();
  const after = await post({ model, messages: [{ role: 'user', content: 'still there?' }], max_tokens: 2 });
  return { h0, h1: await health(), after: after.status, after_ms: Date.now() - t1, total_ms: Date.now() - t0 };
}

async function modeDetect() {
  const messages = [userWithImage('[detection] ' + rest[0])];
  const r = await client.chat.completions.create({ model, messages, max_tokens: 60, temperature: 0 });
  const m = r.choices[0].message;
  const out = { nonstream: { content: m.content, finish: r.choices[0].finish_reason, grounding: m.grounding ?? null } };
  const stream = await client.chat.completions.create({ model, messages, max_tokens: 60, temperature: 0, stream: true });
  let text = '', grounding = null;
  for await (const c of stream) {
    const ch = c.choices[0];
    if (!ch) continue;
    if (ch.delta?.content) text += ch.delta.content;
    if (ch.grounding) grounding = ch.grounding;
  }
  out.stream = { text, grounding };
  return out;
}

const modes = { openai: modeOpenai, detect: modeDetect, multiturn: modeMultiturn, text: modeText, bad: modeBad, load: modeLoad,
                busy: modeBusy, cancel: modeCancel };
if (!modes[mode]) {
  console.error('unknown mode ' + mode);
  process.exit(2);
}
modes[mode]().then((r) => console.log(JSON.stringify(r)), (e) => {
  console.log(JSON.stringify({ error: String(e && e.stack || e) }));
  process.exit(1);
});
