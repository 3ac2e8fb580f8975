/* The devices on the map: one marker each, coloured by status (recording, buffering,
 * offline; faded when the position is stale), the counts in the bar, and following a
 * unit around.
 */
import { $, el } from './dom.js';
import { GLYPHS, KIND_LABELS } from './labels.js';
import { deviceLayer, map } from './map.js';
import { S, ago, isStale } from './state.js';

const markers = new Map();  // id -> {marker, key}

function deviceIcon(d, stale) {
  const followed = S.follow && d.unit === S.follow;
  const cls = ['dev', 'dev-' + d.status, 'kind-' + (d.kind || 'unknown')];
  if (stale) cls.push('stale');
  if (followed) cls.push('followed');
  return L.divIcon({
    className: cls.join(' '),
    html: GLYPHS[d.kind] || GLYPHS.unknown,
    iconSize: [26, 26],
    iconAnchor: [13, 13],
  });
}

function devicePopup(d) {
  const box = el('div', 'popup');
  box.appendChild(el('h4', null, d.id));
  const kv = el('div', 'kv');
  const lines = [
    (KIND_LABELS[d.kind] || d.kind || 'unknown kind') + (d.unit ? ' · ' + d.unit : ''),
    'state: ' + d.status + (d.online ? '' : ' (offline)'),
    d.fix_ts != null ? 'fix ' + ago(d.fix_ts) + (d.acc != null ? ', ±' + d.acc.toFixed(0) + ' m' : '') +
      (isStale(d) ? ' — STALE' : '') : 'no position',
  ];
  if (d.batt != null) lines.push('battery ' + Math.round(d.batt) + ' %');
  if (d.pre_roll != null) lines.push('pre-event buffer ' + d.pre_roll + ' s');
  lines.forEach((line) => kv.appendChild(el('div', null, line)));
  box.appendChild(kv);
  if (d.unit) {
    const follow = el('button', null, S.follow === d.unit ? 'Stop following' : 'Follow ' + d.unit);
    follow.type = 'button';
    follow.addEventListener('click', () => setFollow(S.follow === d.unit ? '' : d.unit));
    box.appendChild(follow);
  }
  return box;
}

export function drawDevice(d) {
  const entry = markers.get(d.id);
  if (d.lat == null || d.lon == null) {
    if (entry) { deviceLayer.removeLayer(entry.marker); markers.delete(d.id); }
    return;
  }
  const stale = isStale(d);
  const key = [d.status, d.kind, stale, S.follow && d.unit === S.follow].join('|');
  if (!entry) {
    const marker = L.marker([d.lat, d.lon], { icon: deviceIcon(d, stale), keyboard: false, riseOnHover: true });
    // A permanent label (its id); the page hides labels below street-level zoom.
    marker.bindTooltip(d.id, { permanent: true, direction: 'right', offset: [13, 0], className: 'dev-label' });
    marker.bindPopup(() => devicePopup(S.devices.get(d.id) || d));
    marker.addTo(deviceLayer);
    markers.set(d.id, { marker, key });
    return;
  }
  entry.marker.setLatLng([d.lat, d.lon]);
  if (entry.key !== key) {
    entry.marker.setIcon(deviceIcon(d, stale));
    entry.key = key;
  }
}

export function removeDevice(id) {
  const entry = markers.get(id);
  if (entry) { deviceLayer.removeLayer(entry.marker); markers.delete(id); }
  S.devices.delete(id);
}

export function renderCounts() {
  let rec = 0, buf = 0, off = 0, stale = 0;
  S.devices.forEach((d) => {
    if (d.status === 'recording') rec++; else if (d.status === 'buffering') buf++; else off++;
    if (d.status !== 'offline' && isStale(d)) stale++;
  });
  const c = $('counts');
  c.textContent = '';
  const add = (cls, n, label) => {
    const span = el('span', cls);
    span.appendChild(el('b', null, String(n)));
    span.appendChild(document.createTextNode(' ' + label));
    c.appendChild(span);
  };
  add('', S.devices.size, 'devices');
  add('c-rec', rec, 'recording');
  add('c-buf', buf, 'buffering');
  add('c-off', off, 'offline');
  if (stale) add('', stale, 'stale');
}

export function renderUnits() {
  const units = new Set();
  S.devices.forEach((d) => { if (d.unit) units.add(d.unit); });
  ['follow', 'f-unit'].forEach((id) => {
    const sel = $(id);
    const have = new Set([...sel.options].map((o) => o.value));
    [...units].sort().forEach((u) => { if (!have.has(u)) sel.appendChild(new Option(u, u)); });
  });
}

export function setFollow(unit) {
  S.follow = unit;
  $('follow').value = unit;
  S.devices.forEach(drawDevice);
  followUnit(true);
}

export function followUnit(force) {
  if (!S.follow) return;
  const pts = [];
  S.devices.forEach((d) => { if (d.unit === S.follow && d.lat != null) pts.push([d.lat, d.lon]); });
  if (!pts.length) return;
  const lat = pts.reduce((a, p) => a + p[0], 0) / pts.length;
  const lon = pts.reduce((a, p) => a + p[1], 0) / pts.length;
  if (force) map.setView([lat, lon], Math.max(map.getZoom(), 17));
  else map.panTo([lat, lon], { animate: true, duration: 0.25 });
}

// Every marker off the map (a new snapshot, or a new user).
export function clearDevices() {
  markers.forEach((m) => deviceLayer.removeLayer(m.marker));
  markers.clear();
}
