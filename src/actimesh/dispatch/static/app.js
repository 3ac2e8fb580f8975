/* actimesh dispatch map: the entry module, which puts the parts together.
 *
 * A login form first (login.js, with the API client and the CSRF token in api.js).
 * Then one WebSocket (/api/v1/live, feed.js): a snapshot on connect, then deltas. The
 * page keeps the same maps the server does (state.js) and redraws what changed: the
 * devices (devices.js) and activations (activations.js) on the map (map.js), the
 * incident list and detail (incidents.js), the alert bar (alerts.js) and its sound
 * (sound.js); dispatchers' acknowledgements and notes (workflow.js), an incident's
 * replay (replay.js), dispatcher zones (zones.js) and offloaded recordings
 * (recordings.js) beside them. When the session ends
 * (logout, timeout, a disabled user) the server answers 401 or closes the socket with
 * 1008, and the page goes back to the login form.
 * Native ES modules: no framework, no bundler and no build step; Leaflet is served by
 * the app itself (no CDN). Nothing here sets inline styles: the page's
 * Content-Security-Policy forbids them.
 */
import { drawActivation } from './activations.js';
import { initAlerts } from './alerts.js';
import { onSessionEnd } from './api.js';
import { drawDevice, renderCounts, setFollow } from './devices.js';
import { $ } from './dom.js';
import { renderConn } from './feed.js';
import { initIncidents, markListDirty, renderList } from './incidents.js';
import { initLogin, showLogin, start } from './login.js';
import { initMap } from './map.js';
import { initRecordings } from './recordings.js';
import { initReplay } from './replay.js';
import { initSound } from './sound.js';
import { S } from './state.js';
import { initZones } from './zones.js';

function main() {
  initMap();
  initIncidents();
  initAlerts();
  initZones();
  onSessionEnd(showLogin);
  initLogin();
  initRecordings();
  initReplay();
  initSound();

  ['f-type', 'f-time', 'f-unit'].forEach((id) => $(id).addEventListener('change', () => {
    markListDirty();
    S.activations.forEach(drawActivation);
    renderList();
  }));
  $('follow').addEventListener('change', () => setFollow($('follow').value));

  // Staleness and "x min ago" move with the clock, not only with frames.
  setInterval(() => {
    S.devices.forEach(drawDevice);
    markListDirty();
    renderList();
    renderCounts();
  }, 1000);

  renderConn();
  start();
}

if (window.L) {
  main();
} else {
  const fatal = $('fatal');
  fatal.textContent = 'The map library (Leaflet) is not installed on this server: run `make web-deps` ' +
    '(npm ci) and reload. The API still works.';
  fatal.hidden = false;
}
