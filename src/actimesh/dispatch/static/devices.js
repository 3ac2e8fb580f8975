/* The devices on the map: one marker each, coloured by status (recording, buffering,
 * offline; faded when the position is stale), labelled with the call sign the registry
 * gives it (the device id when it has none), clustered below street level (map.js); the
 * counts in the bar; and following a unit around, with its track of the last 2 minutes.
 */
import { api } from './api.js';
import { $, el } from './dom.js';
import { DUTY_LABELS, GLYPHS, KIND_LABELS, deviceName } from './labels.js';
import { deviceLayer, map, trackLayer } from './map.js';
import { S, ago, isStale, now } from './state.js';

const markers = new Map();  // id -> {marker, key}
const TRACK_S = 120;        // a followed unit's track: the last 2 minutes
const tracks = new Map();   // device id -> {points: [[ts, lat, lon]], line}

function deviceIcon(d, stale) {
  const followed = S.follow && d.unit === S.follow;
  const cls = ['dev', 'dev-' + d.status, 'kind-' + (d.kind || 'unknown')];
  if (stale) cls.push('stale');
  if (followed) cls.push('followed');
  if (d.duty) cls.push('duty-' + d.duty);
  return L.divIcon({
    className: cls.join(' '),
    html: GLYPHS[d.kind] || GLYPHS.unknown,
    iconSize: [26, 26],
    iconAnchor: [13, 13],
  });
}

function devicePopup(d) {
  const box = el('div', 'popup');
  box.appendChild(el('h4', null, deviceName(d)));
  const kv = el('div', 'kv');
  const lines = [];
  if (d.call_sign || d.officer) lines.push([d.officer, d.id].filter(Boolean).join(' · '));
  lines.push((KIND_LABELS[d.kind] || d.kind || 'unknown kind') + (d.unit ? ' · ' + d.unit : ''));
  if (d.duty) lines.push('unit: ' + (DUTY_LABELS[d.duty] || d.duty));
  lines.push('state: ' + d.status + (d.online ? '' : ' (offline)'));
  lines.push(d.fix_ts != null ? 'fix ' + ago(d.fix_ts) + (d.acc != null ? ', ±' + d.acc.toFixed(0) + ' m' : '') +
    (isStale(d) ? ' — STALE' : '') : 'no position');
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
  const key = [d.status, d.kind, stale, S.follow && d.unit === S.follow, d.duty, d.call_sign].join('|');
  if (S.follow && d.unit === S.follow) extendTrack(d);
  if (!entry) {
    const marker = L.marker([d.lat, d.lon], {
      icon: deviceIcon(d, stale), keyboard: false, riseOnHover: true, status: d.status,
    });
    // A permanent label (its call sign); the page hides labels below street-level zoom.
    marker.bindTooltip(deviceName(d), { permanent: true, direction: 'right', offset: [13, 0], className: 'dev-label' });
    marker.bindPopup(() => devicePopup(S.devices.get(d.id) || d));
    marker.addTo(deviceLayer);
    markers.set(d.id, { marker, key });
    return;
  }
  entry.marker.setLatLng([d.lat, d.lon]);
  if (entry.key !== key) {
    entry.marker.setIcon(deviceIcon(d, stale));
    entry.marker.setTooltipContent(deviceName(d));
    const recolour = entry.marker.options.status !== d.status;
    entry.marker.options.status = d.status;
    entry.key = key;
    // A cluster turns red when one of its devices starts recording.
    if (recolour && deviceLayer.refreshClusters) deviceLayer.refreshClusters(entry.marker);
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
  const units = new Map();  // unit -> call sign
  S.devices.forEach((d) => { if (d.unit && !units.get(d.unit)) units.set(d.unit, d.call_sign || ''); });
  ['follow', 'f-unit'].forEach((id) => {
    const sel = $(id);
    const have = new Map([...sel.options].map((o) => [o.value, o]));
    [...units.keys()].sort().forEach((u) => {
      const text = units.get(u) ? units.get(u) + ' (' + u + ')' : u;
      const opt = have.get(u);
      if (!opt) sel.appendChild(new Option(text, u));
      else if (opt.text !== text) opt.text = text;
    });
  });
}

export function setFollow(unit) {
  S.follow = unit;
  $('follow').value = unit;
  clearTracks();
  S.devices.forEach(drawDevice);
  followUnit(true);
  if (unit) loadTracks(unit);
}

// ---------------------------------------------------------------- the followed unit's track
function trackOf(id) {
  let t = tracks.get(id);
  if (!t) {
    t = { points: [], line: L.polyline([], { className: 'track', interactive: false }).addTo(trackLayer) };
    tracks.set(id, t);
  }
  return t;
}

function redrawTrack(t) {
  const horizon = now() - TRACK_S;
  t.points = t.points.filter((p) => p[0] >= horizon);
  t.line.setLatLngs(t.points.map((p) => [p[1], p[2]]));
}

function extendTrack(d) {
  if (d.fix_ts == null) return;
  const t = trackOf(d.id);
  const last = t.points[t.points.length - 1];
  if (last && last[0] >= d.fix_ts) return;
  t.points.push([d.fix_ts, d.lat, d.lon]);
  redrawTrack(t);
}

// What the server kept of the last 2 minutes, then the live feed extends it.
async function loadTracks(unit) {
  const ids = [...S.devices.values()].filter((d) => d.unit === unit && d.lat != null).map((d) => d.id);
  await Promise.all(ids.map(async (id) => {
    try {
      const res = await api('/api/v1/devices/' + encodeURIComponent(id) + '/track?seconds=' + TRACK_S);
      if (!res.ok || S.follow !== unit) return;
      const doc = await res.json();
      const t = trackOf(id);
      const live = t.points;
      t.points = doc.points.map((p) => [p[0], p[1], p[2]]).concat(live.filter((p) => !doc.points.length ||
        p[0] > doc.points[doc.points.length - 1][0]));
      redrawTrack(t);
    } catch (e) {
      // No track: the live feed still draws one from now on.
    }
  }));
}

function clearTracks() {
  trackLayer.clearLayers();
  tracks.clear();
}

// For the browser test: how many points the followed unit's tracks hold.
window.actimesh.trackPoints = () => [...tracks.values()].reduce((n, t) => n + t.points.length, 0);

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
  clearTracks();
}
