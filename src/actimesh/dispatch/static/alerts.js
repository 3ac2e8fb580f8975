/* The alert bar: cameras that never acknowledged, and the engine's own alerts, the
 * latest open one first; a click opens its incident; Acknowledge records that you saw
 * it (in the ledger, with your name: every dispatcher's map shows it acknowledged);
 * Dismiss only hides those shown here until new ones come. A new alert sounds once
 * (sound.js) unless muted.
 */
import { api } from './api.js';
import { $ } from './dom.js';
import { select } from './incidents.js';
import { clock, typeLabel } from './labels.js';
import { beep } from './sound.js';
import { S, now } from './state.js';

const heard = new Set();  // alert ids that have sounded
let first = true;          // the first snapshot's alerts are old news: no sound

export function renderAlerts() {
  const open = [...S.alerts.values()].filter((a) => !a.acked_by && !S.dismissed.has(a.id) && now() - a.ts < 4 * 3600);
  const fresh = open.filter((a) => !heard.has(a.id));
  fresh.forEach((a) => heard.add(a.id));
  if (fresh.length && !first) beep();
  first = false;
  const bar = $('alerts');
  if (!open.length) { bar.hidden = true; return; }
  open.sort((x, y) => y.ts - x.ts);
  const latest = open[0];
  $('alert-text').textContent = (open.length > 1 ? open.length + ' alerts · latest: ' : '') +
    typeLabel(latest.type) + ' at ' + clock(latest.ts) + ' — ' + latest.message +
    (latest.unit ? ' (' + latest.unit + ')' : '');
  bar.dataset.aid = latest.aid || '';
  bar.dataset.alert = latest.id;
  $('alert-ack').hidden = !latest.aid;
  bar.hidden = false;
}

// A new user starts hearing alerts from their own first snapshot on.
export function resetAlerts() {
  heard.clear();
  first = true;
}

async function acknowledge(id) {
  const res = await api('/api/v1/alerts/' + encodeURIComponent(id) + '/ack', { method: 'POST' });
  if (!res.ok) return;
  const doc = await res.json();
  const a = S.alerts.get(id);
  if (a) S.alerts.set(id, Object.assign({}, a, { acked_by: doc.by, acked_ts: doc.ts }));
  renderAlerts();
}

export function initAlerts() {
  $('alerts').addEventListener('click', (e) => {
    if (e.target.id === 'alert-dismiss') {
      S.alerts.forEach((a) => S.dismissed.add(a.id));
      renderAlerts();
      return;
    }
    if (e.target.id === 'alert-ack') {
      acknowledge($('alerts').dataset.alert);
      return;
    }
    if ($('alerts').dataset.aid) select($('alerts').dataset.aid, true);
  });
}
