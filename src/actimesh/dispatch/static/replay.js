/* The replay of an incident: where each camera considered was and whether it recorded,
 * from 30 s before the event to its end, on a time line to scrub or play. The data is
 * GET /api/v1/activations/{aid}/replay: the dispatch's recent fixes per device (with
 * the recording state each reported) and the ledger's acknowledgements. The live map
 * is dimmed meanwhile; Close brings it back.
 */
import { api } from './api.js';
import { $ } from './dom.js';
import { deviceName } from './labels.js';
import { map } from './map.js';

let doc = null;
let layer = null;
let renderer = null;
let timer = null;
const marks = new Map();  // device id -> {dot, line}
let pin = null;

// For the browser test: the replay's time and each device's state then.
window.actimesh.replay = null;

// The fix in force at ``t`` and the next, for a position between them.
function at(points, t) {
  let i = 0;
  while (i < points.length && points[i][0] <= t) i++;
  const before = points[i - 1], after = points[i];
  if (!before) return after ? { lat: after[1], lon: after[2], state: null } : null;
  if (!after) return { lat: before[1], lon: before[2], state: before[4] };
  const f = (t - before[0]) / Math.max(1e-6, after[0] - before[0]);
  return { lat: before[1] + (after[1] - before[1]) * f, lon: before[2] + (after[2] - before[2]) * f, state: before[4] };
}

function label(t) {
  const rel = t - doc.event_ts;
  const sign = rel < 0 ? '−' : '+';
  return 'T' + sign + Math.abs(rel).toFixed(1) + ' s · ' + new Date(t * 1000).toLocaleTimeString([], { hour12: false });
}

export function renderAt(t) {
  if (!doc) return;
  const states = {};
  const started = t >= doc.event_ts;
  doc.devices.forEach((dev) => {
    const where = at(dev.points, t);
    let m = marks.get(dev.device_id);
    if (!where) {
      if (m) { layer.removeLayer(m.dot); layer.removeLayer(m.line); marks.delete(dev.device_id); }
      return;
    }
    const acked = doc.acks.some((a) => a.device_id === dev.device_id && a.received_ts <= t);
    const state = where.state || 'unknown';
    states[dev.device_id] = state;
    const cls = 'rp-dev rp-' + state + (dev.commanded ? ' rp-commanded' : '') + (acked ? ' rp-acked' : '');
    if (!m) {
      m = {
        dot: L.circleMarker([where.lat, where.lon], { radius: 9, className: cls, renderer, interactive: false })
          .bindTooltip(deviceName({ id: dev.device_id, call_sign: dev.call_sign }), {
            permanent: true, direction: 'right', offset: [10, 0], className: 'dev-label',
          }),
        line: L.polyline([], { className: 'rp-line', renderer, interactive: false }),
      };
      m.dot.addTo(layer);
      m.line.addTo(layer);
      marks.set(dev.device_id, m);
    }
    m.dot.setLatLng([where.lat, where.lon]);
    const e = m.dot.getElement();
    if (e) e.setAttribute('class', cls);
    const lineOn = started && dev.commanded && doc.lat != null;
    m.line.setLatLngs(lineOn ? [[doc.lat, doc.lon], [where.lat, where.lon]] : []);
    const le = m.line.getElement();
    if (le) le.setAttribute('class', 'rp-line rp-' + state);
  });
  if (pin) {
    const pe = pin.getElement();
    if (pe) pe.setAttribute('class', 'rp-event' + (started ? ' fired' : ''));
  }
  $('replay-time').textContent = label(t);
  window.actimesh.replay = { aid: doc.aid, t, states };
}

function pause() {
  if (timer) { clearInterval(timer); timer = null; }
  $('replay-play').textContent = '▶ Play';
}

function play() {
  const scrub = $('replay-scrub');
  if (Number(scrub.value) >= doc.end) scrub.value = String(doc.start);
  $('replay-play').textContent = '❚❚ Pause';
  timer = setInterval(() => {
    const t = Math.min(doc.end, Number(scrub.value) + 0.2);
    scrub.value = String(t);
    renderAt(t);
    if (t >= doc.end) pause();
  }, 200);
}

export function stopReplay() {
  if (timer) pause();
  if (layer) { map.removeLayer(layer); layer = null; }
  marks.clear();
  pin = null;
  doc = null;
  window.actimesh.replay = null;
  $('replay').hidden = true;
  $('map').classList.remove('replaying');
}

export async function startReplay(aid) {
  const res = await api('/api/v1/activations/' + encodeURIComponent(aid) + '/replay');
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  stopReplay();
  doc = body;
  if (!map.getPane('replay')) map.createPane('replay');
  renderer = renderer || L.svg({ pane: 'replay' });
  layer = L.layerGroup().addTo(map);
  if (doc.lat != null) {
    L.circle([doc.lat, doc.lon], { radius: doc.effective_radius_m, className: 'act-outer', renderer, interactive: false }).addTo(layer);
    L.circle([doc.lat, doc.lon], { radius: doc.radius_m, className: 'act-circle', renderer, interactive: false }).addTo(layer);
    pin = L.circleMarker([doc.lat, doc.lon], { radius: 7, className: 'rp-event', renderer, interactive: false }).addTo(layer);
  }
  const scrub = $('replay-scrub');
  Object.assign(scrub, { min: doc.start, max: doc.end, step: 'any' });
  scrub.value = String(doc.start);
  $('replay-span').textContent = (doc.end - doc.start).toFixed(0) + ' s' +
    (doc.tracked_since == null ? ' · no track kept for it any more: cameras where the ledger put them' : '');
  $('replay').hidden = false;
  $('map').classList.add('replaying');
  renderAt(doc.start);
  // The scene and everyone who moved through it during the replay.
  const pts = doc.devices.flatMap((d) => d.points.map((p) => [p[1], p[2]]));
  let bounds = pts.length ? L.latLngBounds(pts) : null;
  if (doc.lat != null) {
    const scene = L.latLng(doc.lat, doc.lon).toBounds(doc.effective_radius_m * 2.2);
    bounds = bounds ? bounds.extend(scene) : scene;
  }
  if (bounds) map.fitBounds(bounds, { padding: [40, 40], maxZoom: 20 });
}

export function initReplay() {
  $('replay-scrub').addEventListener('input', () => { pause(); renderAt(Number($('replay-scrub').value)); });
  $('replay-play').addEventListener('click', () => (timer ? pause() : play()));
  $('replay-close').addEventListener('click', stopReplay);
}
