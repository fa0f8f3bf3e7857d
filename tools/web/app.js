// minigpt serve: the web demo. Talks to the server's own OpenAI-compatible API
// (POST /v1/chat/completions, streamed), draws the grounded answer's boxes over the image and
// colours each phrase like its boxes. A rectangle dragged on the image becomes the [identify]
// region text "{<x1><y1><x2><y2>}", corners int(v / size * 100) as the library's mg_region_text.
'use strict';

const $ = (id) => document.getElementById(id);
const PALETTE = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#42d4f4', '#f032e6', '#9a6324',
                 '#800000', '#469990', '#000075', '#808000', '#e6a800', '#00a36c', '#b03060', '#5f5fff'];
const TASK_TEXT = { grounding: '[grounding] describe this image in detail', refer: '[refer] ',
                    detection: '[detection] ', identify: '[identify] what is this ', vqa: '[vqa] ',
                    caption: '[caption] Briefly describe this image.' };

const state = { model: null, image: null, w: 0, h: 0, messages: [], region: null, busy: false,
                key: localStorage.getItem('minigpt-api-key') || '' };

function headers() {
  const h = { 'Content-Type': 'application/json' };
  if (state.key) h.Authorization = 'Bearer ' + state.key;
  return h;
}

async function api(path, body) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const r = await fetch(path, body ? { method: 'POST', headers: headers(), body: JSON.stringify(body) }
                                     : { headers: headers() });
    if (r.status !== 401 || attempt) return r;
    const k = prompt('This server needs an API key:');
    if (!k) return r;
    state.key = k;
    localStorage.setItem('minigpt-api-key', k);
  }
}

async function loadModel() {
  try {
    const r = await api('/v1/models');
    const j = await r.json();
    const m = j.data && j.data[0];
    state.model = m ? m.id : null;
    $('model').textContent = m ? `${m.id} (${m.variant}${m.vision ? '' : ', text only'})` : 'no model';
  } catch (e) {
    $('model').textContent = 'server unreachable';
  }
}

// ---- image ----

function setImage(file) {
  if (!file || !file.type.startsWith('image/')) return;
  const rd = new FileReader();
  rd.onload = () => {
    const img = $('image');
    img.onload = () => {
      state.image = rd.result;
      state.w = img.naturalWidth;
      state.h = img.naturalHeight;
      $('stage').hidden = false;
      $('drop').classList.add('small');
      $('drop-hint').textContent = 'Drop or click for another image (starts a new chat)';
      $('image-info').textContent = `${file.name}: ${state.w} x ${state.h} px`;
      newChat();
    };
    img.src = rd.result;
  };
  rd.readAsDataURL(file);
}

$('file').addEventListener('change', (e) => setImage(e.target.files[0]));
const drop = $('drop');
['dragenter', 'dragover'].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add('over'); }));
['dragleave', 'drop'].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove('over'); }));
drop.addEventListener('drop', (e) => setImage(e.dataTransfer.files[0]));
document.body.addEventListener('dragover', (e) => e.preventDefault());
document.body.addEventListener('drop', (e) => { e.preventDefault(); if (e.dataTransfer.files[0]) setImage(e.dataTransfer.files[0]); });

// ---- region for [identify] ----

function regionText(r) {
  // int(v / size * 100), as coco_dataset.py and mg_region_text
  const q = (v, size) => Math.trunc(v / size * 100);
  return `{<${q(r.x1, state.w)}><${q(r.y1, state.h)}><${q(r.x2, state.w)}><${q(r.y2, state.h)}>}`;
}

function toImage(e) {
  const b = $('overlay').getBoundingClientRect();
  const cx = Math.min(Math.max(e.clientX - b.left, 0), b.width);
  const cy = Math.min(Math.max(e.clientY - b.top, 0), b.height);
  return { x: cx / b.width * state.w, y: cy / b.height * state.h };
}

let dragFrom = null;
$('overlay').addEventListener('mousedown', (e) => { dragFrom = toImage(e); e.preventDefault(); });
window.addEventListener('mousemove', (e) => {
  if (!dragFrom) return;
  const p = toImage(e);
  state.region = { x1: Math.min(dragFrom.x, p.x), y1: Math.min(dragFrom.y, p.y),
                   x2: Math.max(dragFrom.x, p.x), y2: Math.max(dragFrom.y, p.y) };
  drawRegion();
});
window.addEventListener('mouseup', () => {
  if (!dragFrom) return;
  dragFrom = null;
  const r = state.region;
  if (!r || r.x2 - r.x1 < 2 || r.y2 - r.y1 < 2) { state.region = null; drawRegion(); return; }
  selectTask('identify');
});

function drawRegion() {
  let el = document.querySelector('.region');
  if (!state.region) { if (el) el.remove(); return; }
  if (!el) { el = document.createElement('div'); el.className = 'region'; $('overlay').appendChild(el); }
  placeBox(el, state.region.x1, state.region.y1, state.region.x2, state.region.y2);
}

function placeBox(el, x1, y1, x2, y2) {
  el.style.left = (x1 / state.w * 100) + '%';
  el.style.top = (y1 / state.h * 100) + '%';
  el.style.width = ((x2 - x1) / state.w * 100) + '%';
  el.style.height = ((y2 - y1) / state.h * 100) + '%';
}

// ---- task chips ----

function selectTask(task) {
  document.querySelectorAll('.chip').forEach((c) => c.classList.toggle('active', c.dataset.task === task));
  const p = $('prompt');
  let rest = p.value.replace(/^\s*\[(grounding|refer|detection|identify|vqa|caption)\]\s*/i, '');
  if (task === 'identify') rest = rest.replace(/^what is this\s*/i, '').replace(/\{<\d+><\d+><\d+><\d+>\}\s*/g, '');
  if (task === 'grounding' || task === 'caption') rest = rest.replace(/^(describe this image in detail|Briefly describe this image\.)\s*/i, '');
  let head = task ? TASK_TEXT[task] : '';
  if (task === 'identify' && state.region) head += regionText(state.region);
  p.value = head + (task === 'grounding' || task === 'caption' || task === 'identify' ? '' : rest);
  p.focus();
}
document.querySelectorAll('.chip').forEach((c) => c.addEventListener('click', () => selectTask(c.dataset.task)));

$('temp').addEventListener('input', () => { $('temp-value').textContent = $('temp').value; });

// ---- chat ----

function newChat() {
  state.messages = [];
  $('history').textContent = '';
  $('overlay').querySelectorAll('.box').forEach((b) => b.remove());
}
$('new-chat').addEventListener('click', newChat);

function bubble(cls, text) {
  const d = document.createElement('div');
  d.className = 'msg ' + cls;
  d.textContent = text;
  $('history').appendChild(d);
  $('history').scrollTop = $('history').scrollHeight;
  return d;
}

// Spans are byte offsets into the UTF-8 clean_text.
function sliceBytes(bytes, a, b) { return new TextDecoder().decode(bytes.slice(a, b)); }

function renderAnswer(el, g, meta) {
  el.textContent = '';
  const bytes = new TextEncoder().encode(g.clean_text);
  let at = 0;
  g.entities.forEach((e, i) => {
    const [a, b] = e.span;
    if (a < at) return;
    el.appendChild(document.createTextNode(sliceBytes(bytes, at, a)));
    const s = document.createElement('span');
    s.className = 'phrase';
    s.style.setProperty('--c', PALETTE[i % PALETTE.length]);
    s.textContent = sliceBytes(bytes, a, b);
    el.appendChild(s);
    at = b;
  });
  el.appendChild(document.createTextNode(sliceBytes(bytes, at, bytes.length)));
  if (meta) { const m = document.createElement('span'); m.className = 'meta'; m.textContent = meta; el.appendChild(m); }
}

function drawBoxes(g) {
  const ov = $('overlay');
  ov.querySelectorAll('.box').forEach((b) => b.remove());
  if (!state.image || !g.image || !g.image[0]) return;
  g.entities.forEach((e, i) => {
    e.boxes.forEach((bx) => {
      if (!bx.px) return;
      const [x1, y1, x2, y2] = bx.px;
      if (!(x2 > x1 && y2 > y1)) return;
      const d = document.createElement('div');
      d.className = 'box' + (y1 < state.h * 0.06 ? ' low' : '');
      d.style.setProperty('--c', PALETTE[i % PALETTE.length]);
      placeBox(d, Math.max(0, x1), Math.max(0, y1), Math.min(state.w, x2), Math.min(state.h, y2));
      const l = document.createElement('span');
      l.className = 'box-label';
      l.textContent = e.phrase || 'region';
      d.appendChild(l);
      ov.appendChild(d);
    });
  });
}

async function send(text) {
  if (state.busy || !text.trim()) return;
  state.busy = true;
  $('send').disabled = true;
  const first = state.messages.length === 0;
  const content = first && state.image
    ? [{ type: 'image_url', image_url: { url: state.image } }, { type: 'text', text }]
    : text;
  state.messages.push({ role: 'user', content });
  bubble('user', text);
  const out = bubble('assistant', '…');
  let answer = '', grounding = null, usage = null;
  const t0 = performance.now();
  try {
    const body = { model: state.model, messages: state.messages, stream: true,
                   stream_options: { include_usage: true }, temperature: parseFloat($('temp').value) };
    const r = await api('/v1/chat/completions', body);
    if (!r.ok) {
      let msg = r.status + ' ' + r.statusText;
      try { msg = (await r.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = '';
    out.textContent = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let k;
      while ((k = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, k);
        buf = buf.slice(k + 2);
        for (const line of ev.split('\n')) {
          if (!line.startsWith('data: ')) continue;
          const data = line.slice(6);
          if (data === '[DONE]') continue;
          const j = JSON.parse(data);
          if (j.error) throw new Error(j.error.message);
          if (j.usage) usage = j.usage;
          const c = j.choices && j.choices[0];
          if (!c) continue;
          if (c.delta && c.delta.content) { answer += c.delta.content; out.textContent = answer; }
          if (c.grounding) grounding = c.grounding;
        }
      }
      $('history').scrollTop = $('history').scrollHeight;
    }
    state.messages.push({ role: 'assistant', content: answer });
    const secs = ((performance.now() - t0) / 1000).toFixed(1);
    const meta = usage ? `${usage.prompt_tokens} prompt + ${usage.completion_tokens} tokens, ${secs} s` : `${secs} s`;
    if (grounding) { renderAnswer(out, grounding, meta); drawBoxes(grounding); }
    else { out.textContent = answer; const m = document.createElement('span'); m.className = 'meta'; m.textContent = meta; out.appendChild(m); }
  } catch (e) {
    state.messages.pop();
    out.className = 'msg error';
    out.textContent = 'Error: ' + e.message;
  } finally {
    state.busy = false;
    $('send').disabled = false;
  }
}

$('ask').addEventListener('submit', (e) => {
  e.preventDefault();
  const t = $('prompt').value;
  $('prompt').value = '';
  send(t);
});
$('prompt').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('ask').requestSubmit(); }
});

loadModel();
