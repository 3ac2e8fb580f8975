/* The live feed: one WebSocket (/api/v1/live), a snapshot on connect, then deltas.
 * The page applies them to its copy of the picture (state.js) and redraws what changed.
 * A lost connection is retried with backoff; a close with 1008 (the session ended) or
 * a refused reconnect ends the session instead.
 */
import { drawActivation, isDrawn, undraw, undrawAll } from './activations.js';
import { renderAlerts } from './alerts.js';
import { endSession, session } from './api.js';
import { clearDevices, drawDevice, followUnit, removeDevice, renderCounts, renderUnits } from './devices.js';
import { $ } from './dom.js';
import { markListDirty, renderDetail, renderList } from './incidents.js';
import { configure, map } from './map.js';
import { S } from './state.js';

let live = null;         // the WebSocket, while logged in
let retryTimer = null;
let retry = 0;

function applyDevice(d) {
  S.devices.set(d.id, d);
  drawDevice(d);
}

function applyActivation(a) {
  S.activations.set(a.aid, a);
  drawActivation(a);
  markListDirty();
  if (S.selected === a.aid) renderDetail(a);
}

function onFrame(msg) {
  window.actimesh.frames++;
  S.offset = msg.now - Date.now() / 1000;
  if ('connected' in msg) S.brokerUp = msg.connected;
  if (msg.type === 'snapshot') {
    configure(msg.config);
    clearDevices();
    undrawAll();
    S.devices.clear();
    S.activations.clear();
    S.alerts.clear();
    msg.devices.forEach(applyDevice);
    msg.activations.forEach(applyActivation);
    msg.alerts.forEach((a) => S.alerts.set(a.id, a));
    if (!S.fitted) {
      const pts = msg.devices.filter((d) => d.lat != null).map((d) => [d.lat, d.lon]);
      if (pts.length) { map.fitBounds(L.latLngBounds(pts), { padding: [30, 30], maxZoom: 18 }); S.fitted = true; }
    }
  } else if (msg.type === 'delta') {
    msg.devices.forEach(applyDevice);
    msg.removed_devices.forEach(removeDevice);
    (msg.removed_activations || []).forEach((aid) => { undraw(aid); S.activations.delete(aid); markListDirty(); });
    msg.activations.forEach(applyActivation);
    msg.alerts.forEach((a) => S.alerts.set(a.id, a));
    if (!S.fitted && S.devices.size) {
      const pts = [...S.devices.values()].filter((d) => d.lat != null).map((d) => [d.lat, d.lon]);
      if (pts.length) { map.fitBounds(L.latLngBounds(pts), { padding: [30, 30], maxZoom: 18 }); S.fitted = true; }
    }
    // Cameras move: keep the lines to them attached.
    if (msg.devices.length) S.activations.forEach((a) => { if (isDrawn(a.aid)) drawActivation(a); });
  }
  if (msg.type !== 'tick') {
    renderUnits();
    renderList();
    renderAlerts();
    followUnit(false);
  }
  renderCounts();
  renderConn();
}

export function renderConn() {
  const box = $('conn');
  box.className = 'conn ' + (!S.connected ? 'conn-down' : S.brokerUp ? 'conn-live' : 'conn-degraded');
  $('conn-text').textContent = !S.connected ? 'reconnecting…' : S.brokerUp ? 'live' : 'broker unreachable';
}

function connect() {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(proto + '//' + location.host + '/api/v1/live');
  live = ws;
  ws.onopen = () => { S.connected = true; retry = 0; renderConn(); };
  ws.onmessage = (ev) => {
    try { onFrame(JSON.parse(ev.data)); } catch (err) { console.error('bad frame', err); }
  };
  ws.onclose = (ev) => {
    if (live !== ws) return;
    live = null;
    S.connected = false;
    renderConn();
    if (ev.code === 1008) { endSession('Your session has ended; log in again.'); return; }
    const delay = Math.min(5000, 500 * 2 ** retry) * (0.5 + Math.random() / 2);
    retry = Math.min(retry + 1, 6);
    retryTimer = setTimeout(reconnect, delay);
  };
}

async function reconnect() {
  retryTimer = null;
  // A refused handshake looks like any other close: ask whether the session still is.
  try {
    const res = await fetch('/api/v1/session', { credentials: 'same-origin' });
    const doc = res.ok ? await res.json() : null;
    if (doc && !doc.authenticated) { endSession('Your session has ended; log in again.'); return; }
  } catch (err) {
    // The server is unreachable: keep trying.
  }
  if (session.user && !live) connect();
}

export function stopLive() {
  if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
  const ws = live;
  live = null;
  if (ws) ws.close();
  S.connected = false;
  renderConn();
}

// Open the live view, unless it is open already.
export function startLive() {
  if (!live) connect();
}
