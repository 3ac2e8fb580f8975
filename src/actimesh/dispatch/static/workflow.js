/* What dispatchers do about an incident: acknowledge it (who and when, in the ledger;
 * every dispatcher's list shows it), and notes on it. Both are POSTs to the API, which
 * writes them to the ledger as records of their own; the detail shows what the ledger
 * holds (GET /api/v1/activations/{aid}/workflow).
 */
import { api } from './api.js';
import { el } from './dom.js';
import { clock } from './labels.js';
import { S } from './state.js';

const cache = new Map();  // aid -> the workflow the ledger returned
const slots = new Map();  // aid -> its slot in the detail (kept, so a note being typed survives redraws)

export function ackButton(a) {
  const btn = el('button', 'ack-btn', a.acked_by ? '✓ Acknowledged by ' + a.acked_by + ' ' + clock(a.acked_ts) : 'Acknowledge');
  btn.type = 'button';
  btn.id = 'ack-btn';
  btn.disabled = Boolean(a.acked_by);
  btn.addEventListener('click', async () => {
    btn.disabled = true;
    const res = await api('/api/v1/activations/' + encodeURIComponent(a.aid) + '/ack', { method: 'POST' });
    if (!res.ok) { btn.disabled = false; btn.title = (await res.json()).error; return; }
    const doc = await res.json();
    const live = S.activations.get(a.aid);
    if (live) { live.acked_by = doc.by; live.acked_ts = doc.ts; }
    btn.textContent = '✓ Acknowledged by ' + doc.by + ' ' + clock(doc.ts);
    loadWorkflow(a.aid);
  });
  return btn;
}

function fill(aid) {
  const slot = slots.get(aid);
  const doc = cache.get(aid);
  if (!slot || !doc) return;
  const list = slot.querySelector('.notes');
  list.textContent = '';
  doc.acks.forEach((k) => list.appendChild(el('li', 'wf-ack',
    '✓ ' + (k.alert_id ? 'alert ' + k.alert_id.split(':').slice(1).join(' ') : 'incident') +
    ' acknowledged by ' + k.by + ' at ' + clock(k.ts))));
  doc.notes.forEach((n) => {
    const li = el('li', 'wf-note');
    li.appendChild(el('span', 'dim', clock(n.ts) + ' ' + n.by + ': '));
    li.appendChild(document.createTextNode(n.text));
    list.appendChild(li);
  });
  if (!doc.acks.length && !doc.notes.length) list.appendChild(el('li', 'dim', 'No acknowledgement or note yet.'));
}

export function workflowSlot(aid) {
  let slot = slots.get(aid);
  if (slot) { fill(aid); return slot; }
  slots.forEach((_, id) => { if (id !== aid) slots.delete(id); });
  slot = el('div', 'workflow');
  slot.appendChild(el('h4', null, 'Dispatch log (ledger)'));
  slot.appendChild(el('ul', 'notes'));
  const form = el('form', 'note-form');
  const text = el('textarea');
  Object.assign(text, { name: 'note', rows: 2, maxLength: 2000, placeholder: 'Add a note (kept in the ledger with the incident)' });
  const go = el('button', null, 'Add note');
  go.type = 'submit';
  const msg = el('span', 'msg');
  form.appendChild(text);
  form.appendChild(go);
  form.appendChild(msg);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!text.value.trim()) return;
    go.disabled = true;
    msg.textContent = '';
    try {
      const res = await api('/api/v1/activations/' + encodeURIComponent(aid) + '/notes', {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ text: text.value }),
      });
      const doc = await res.json();
      if (!res.ok) throw new Error(doc.error || res.statusText);
      text.value = '';
      await loadWorkflow(aid);
    } catch (err) {
      msg.textContent = String(err.message || err);
    } finally {
      go.disabled = false;
    }
  });
  slot.appendChild(form);
  slots.set(aid, slot);
  fill(aid);
  return slot;
}

export async function loadWorkflow(aid) {
  try {
    const res = await api('/api/v1/activations/' + encodeURIComponent(aid) + '/workflow');
    if (!res.ok) return;
    cache.set(aid, await res.json());
    if (cache.size > 200) cache.delete(cache.keys().next().value);
  } catch (e) {
    return;
  }
  fill(aid);
}

// A new user starts with nothing of the last one's.
export function forgetWorkflow() {
  cache.clear();
  slots.clear();
}
