/* The incident list beside the map, newest first, and the detail of the selected
 * incident: every camera commanded with its outcome (by call sign and officer, from the
 * registry), and (from the ledger) every camera considered and left out, with why; who
 * acknowledged it, the notes on it (workflow.js), and its replay (replay.js).
 */
import { api } from './api.js';
import { drawActivation, effectiveRadius, onPick, visible, zoomTo } from './activations.js';
import { $, el } from './dom.js';
import { CAMERA_LABELS, clock, deviceName, typeClass, typeLabel } from './labels.js';
import { startReplay } from './replay.js';
import { S, ago } from './state.js';
import { ackButton, forgetWorkflow, loadWorkflow, workflowSlot } from './workflow.js';

let listDirty = true;

// The list is redrawn at the next renderList only when something in it changed.
export function markListDirty() {
  listDirty = true;
}

// One <li> per incident, kept across redraws and refilled in place, selected when the
// button is pressed and released on it. A redraw between the press and the release
// (an incident's cameras answer many times a second) replaced what was pressed, and
// the browser then sent the click to no incident: the dispatcher's click was lost.
const rows = new Map();
let pressed = null;

export function renderList() {
  if (!listDirty) return;
  listDirty = false;
  const list = $('incidents');
  const items = [...S.activations.values()].filter(visible).sort((x, y) => y.ets - x.ets);
  const shown = new Set();
  let before = list.firstChild;
  items.forEach((a) => {
    let li = rows.get(a.aid);
    if (!li) {
      li = el('li');
      li.dataset.aid = a.aid;
      const aid = a.aid;
      li.addEventListener('pointerdown', (e) => { pressed = e.button === 0 ? aid : null; });
      li.addEventListener('pointerup', (e) => {
        if (e.button === 0 && pressed === aid) select(aid, true);
        pressed = null;
      });
      rows.set(aid, li);
    }
    fillItem(li, a);
    shown.add(a.aid);
    if (li !== before) list.insertBefore(li, before);  // moved only when out of order
    before = li.nextSibling;
  });
  rows.forEach((li, aid) => {
    if (!shown.has(aid)) {
      li.remove();
      rows.delete(aid);
    }
  });
  $('inc-count').textContent = items.length ? '(' + items.length + ')' : '';
  $('no-incidents').hidden = items.length > 0;
}

function fillItem(li, a) {
  li.className = 'inc' + (a.alert ? ' alert' : '') + (S.selected === a.aid ? ' selected' : '');
  const r1 = el('div', 'row1');
  r1.appendChild(el('span', 'time', clock(a.ets)));
  const type = el('span', 'type');
  type.appendChild(el('span', 'type-badge ' + typeClass(a.type)));
  type.appendChild(document.createTextNode(' ' + typeLabel(a.type)));
  r1.appendChild(type);
  r1.appendChild(el('span', 'age', ago(a.ets)));
  const src = S.devices.get(a.src);
  const who = [src && src.call_sign ? src.call_sign : a.unit || a.src];
  if (a.unit) who.push(a.src);
  if (a.lat == null) who.push('no position');
  const row2 = el('div', 'row2', who.join(' · '));
  const chips = el('div', 'chips');
  const s = a.summary;
  if (s.recording) chips.appendChild(el('span', 'chip rec', '● ' + s.recording + ' recording'));
  const waiting = s.commanded + s.acknowledged;
  if (waiting) chips.appendChild(el('span', 'chip cmd', waiting + ' not recording yet'));
  if (s.no_ack) chips.appendChild(el('span', 'chip bad', '⚠ ' + s.no_ack + ' no ack'));
  if (s.refused) chips.appendChild(el('span', 'chip bad', '✕ ' + s.refused + ' refused'));
  if (s.cancelled) chips.appendChild(el('span', 'chip', s.cancelled + ' false activation'));
  if (!a.cameras.length) chips.appendChild(el('span', 'chip', 'no camera in range'));
  if (a.by) chips.appendChild(el('span', 'chip by', 'by ' + a.by));
  if (a.follows) chips.appendChild(el('span', 'chip by', 'follow-up of ' + a.follows));
  if (a.acked_by) chips.appendChild(el('span', 'chip acked', '✓ ' + a.acked_by));
  li.replaceChildren(r1, row2, chips);
}

export function select(aid, zoom) {
  const prev = S.selected;
  S.selected = aid;
  listDirty = true;
  renderList();
  [prev, aid].forEach((id) => { const a = S.activations.get(id); if (a) drawActivation(a); });
  const a = S.activations.get(aid);
  if (!a) return;
  if (zoom) zoomTo(a);
  renderDetail(a);
  loadLedger(aid);
  loadWorkflow(aid);
}

export function renderDetail(a) {
  // A note being typed survives the redraw an update of the incident brings.
  const focused = document.activeElement;
  const box = $('detail');
  box.hidden = false;
  box.textContent = '';
  const h = el('h3');
  h.appendChild(el('span', 'type-badge ' + typeClass(a.type)));
  h.appendChild(document.createTextNode(typeLabel(a.type) + ' · ' + clock(a.ets)));
  box.appendChild(h);
  const src = S.devices.get(a.src);
  const meta = [
    'from ' + (src ? deviceName(src) : a.src) + (src && src.officer ? ' · ' + src.officer : '') +
      (a.unit ? ' (' + a.unit + ')' : '') + (a.by ? ' · by ' + a.by : ''),
    a.lat != null ? a.lat.toFixed(5) + ', ' + a.lon.toFixed(5) + ' · radius ' + a.radius.toFixed(1) + ' m, effective ' +
      effectiveRadius(a).toFixed(1) + ' m with the GPS margin' : 'no position: paired cameras only',
    'pre-roll ' + a.pre + ' s · decided ' + Math.round((a.ts - a.ets) * 1000) + ' ms after the trigger · ' +
      a.excluded + ' left out · ' + a.aid,
  ];
  const m = el('div', 'meta');
  meta.forEach((line) => m.appendChild(el('div', null, line)));
  box.appendChild(m);
  const actions = el('div', 'actions');
  const zoom = el('button', null, 'Zoom to incident');
  zoom.type = 'button';
  zoom.addEventListener('click', () => zoomTo(a));
  const replay = el('button', null, 'Replay');
  replay.type = 'button';
  replay.id = 'replay-btn';
  replay.addEventListener('click', () => startReplay(a.aid).catch((err) => { replay.title = String(err.message || err); }));
  const close = el('button', null, 'Close');
  close.type = 'button';
  close.addEventListener('click', () => { S.selected = null; box.hidden = true; listDirty = true; renderList(); drawActivation(a); });
  actions.appendChild(ackButton(a));
  actions.appendChild(zoom);
  actions.appendChild(replay);
  actions.appendChild(close);
  box.appendChild(actions);
  const table = el('table');
  const head = el('tr');
  ['Camera', 'Why', 'Status', 'Pre-roll'].forEach((t) => head.appendChild(el('th', null, t)));
  table.appendChild(head);
  a.cameras.forEach((c) => {
    const tr = el('tr');
    const d = S.devices.get(c.id);
    const cam = el('td', 'cam', d ? deviceName(d) : c.id);
    const sub = [d && d.officer, d && d.call_sign ? c.id : d && d.unit].filter(Boolean).join(' · ');
    if (sub) cam.appendChild(el('div', 'dim sub', sub));
    tr.appendChild(cam);
    tr.appendChild(el('td', null, c.reason + (c.dist != null ? ' ' + c.dist.toFixed(1) + ' m' : '')));
    const st = el('td');
    st.appendChild(el('span', 'st st-' + c.status, CAMERA_LABELS[c.status] + (c.late ? ' (late)' : '')));
    if (c.cancelled_by) st.appendChild(el('span', 'dim', ' by ' + c.cancelled_by));
    if (c.ack_latency_s != null) st.appendChild(el('span', 'dim', ' ' + Math.round(c.ack_latency_s * 1000) + ' ms'));
    tr.appendChild(st);
    tr.appendChild(el('td', null, c.pre_cov != null ? c.pre_cov.toFixed(1) + ' / ' + a.pre + ' s' : '—'));
    table.appendChild(tr);
  });
  box.appendChild(table);
  if (!a.cameras.length) box.appendChild(el('p', 'dim', 'No camera was commanded.'));
  box.appendChild(workflowSlot(a.aid));
  const ledger = el('div');
  ledger.id = 'ledger-' + a.aid;
  box.appendChild(ledger);
  if (ledgerCache.has(a.aid)) fillLedger(a.aid, ledgerCache.get(a.aid));
  if (focused && focused !== document.activeElement && box.contains(focused)) focused.focus();
}

// What the ledger says about cameras left out does not change: fetched once per incident.
const ledgerCache = new Map();

async function loadLedger(aid) {
  if (ledgerCache.has(aid)) return;
  let detail;
  try {
    const res = await api('/api/v1/activations/' + encodeURIComponent(aid));
    if (!res.ok) return;
    detail = await res.json();
  } catch (e) {
    return;
  }
  if (ledgerCache.size > 200) ledgerCache.delete(ledgerCache.keys().next().value);
  ledgerCache.set(aid, detail);
  fillLedger(aid, detail);
}

function fillLedger(aid, detail) {
  const slot = document.getElementById('ledger-' + aid);
  if (!slot) return;
  slot.textContent = '';
  const out = detail.cameras.filter((c) => !c.commanded);
  slot.appendChild(el('h4', null, 'Considered and left out (ledger)'));
  if (!out.length) { slot.appendChild(el('div', 'dim', 'none')); return; }
  const table = el('table');
  out.forEach((c) => {
    const tr = el('tr');
    tr.appendChild(el('td', null, c.device_id));
    const why = c.reason.replace(/_/g, ' ') + (c.distance_m != null ? ' · ' + c.distance_m.toFixed(1) + ' m' : '') +
      (c.fix_age_s != null && c.reason === 'stale' ? ' · fix ' + c.fix_age_s.toFixed(0) + ' s old' : '');
    tr.appendChild(el('td', 'st st-not_commanded', why));
    table.appendChild(tr);
  });
  slot.appendChild(table);
}

// A new user starts with nothing of the last one's.
export function forgetLedger() {
  ledgerCache.clear();
  forgetWorkflow();
}

export function initIncidents() {
  onPick((aid) => select(aid, true));
}
