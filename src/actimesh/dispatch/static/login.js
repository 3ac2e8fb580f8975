/* Logging in and out. A login form first; once logged in, the map and its live feed.
 * When the session ends, the page goes back to the form and nothing of the last user's
 * view stays on the screen for the next one.
 */
import { undrawAll } from './activations.js';
import { renderAlerts, resetAlerts } from './alerts.js';
import { api, session } from './api.js';
import { clearDevices, renderCounts } from './devices.js';
import { $ } from './dom.js';
import { startLive, stopLive } from './feed.js';
import { forgetLedger, markListDirty, renderList } from './incidents.js';
import { map } from './map.js';
import { closePlayer } from './recordings.js';
import { stopReplay } from './replay.js';
import { S } from './state.js';
import { zoneMode } from './zones.js';

// Nothing of the last user's view stays on the screen for the next one.
function clearMap() {
  zoneMode(false);
  clearDevices();
  undrawAll();
  S.devices.clear();
  S.activations.clear();
  S.alerts.clear();
  S.selected = null;
  S.fitted = false;
  forgetLedger();
  stopReplay();
  $('detail').hidden = true;
  markListDirty();
  renderList();
  renderAlerts();
  resetAlerts();
  renderCounts();
}

function showApp(doc) {
  session.user = doc.user;
  session.role = doc.role;
  session.csrf = doc.csrf_token;
  $('who').textContent = doc.user + ' · ' + doc.role;
  $('login').hidden = true;
  $('app').hidden = false;
  map.invalidateSize();
  startLive();
}

export function showLogin(message) {
  const wasIn = session.user != null;
  session.user = session.role = session.csrf = null;
  stopLive();
  if (wasIn) clearMap();
  $('app').hidden = true;
  closePlayer();
  $('recordings').hidden = true;
  $('rec-rows').replaceChildren();
  $('login').hidden = false;
  $('login-msg').textContent = message || '';
  $('login-go').disabled = false;
  $('login-password').value = '';
  $('login-user').focus();
}

export function initLogin() {
  $('login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const username = $('login-user').value.trim();
    const password = $('login-password').value;
    if (!username || !password) { $('login-msg').textContent = 'Enter your user name and password.'; return; }
    $('login-go').disabled = true;
    $('login-msg').textContent = '';
    try {
      const res = await fetch('/api/v1/session', {
        method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ username: username, password: password }),
      });
      const doc = await res.json();
      if (!res.ok) throw new Error(doc.error || res.statusText);
      $('login-password').value = '';
      showApp(doc);
    } catch (err) {
      $('login-msg').textContent = String(err.message || err);
      $('login-go').disabled = false;
    }
  });

  $('logout-btn').addEventListener('click', async () => {
    try {
      await api('/api/v1/session', { method: 'DELETE' });
    } catch (err) {
      // Logged out already, or the server is unreachable: the page forgets it anyway.
    }
    showLogin('Logged out.');
  });
}

export async function start() {
  try {
    const res = await fetch('/api/v1/session', { credentials: 'same-origin' });
    const doc = await res.json();
    if (res.ok && doc.authenticated) { showApp(doc); return; }
  } catch (err) {
    // Unreachable: the login form says so when it is used.
  }
  showLogin('');
}
