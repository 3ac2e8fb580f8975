/* Offloaded recordings in the evidence store. The listing, each fresh check, each
 * playback and each download are audited by the server before it answers. Downloads
 * and the player's source are plain same-origin URLs, so the session cookie goes with
 * them; the server remuxes H.264 to MP4 for the player (Chromium cannot play MPEG-TS).
 */
import { AuthError, api } from './api.js';
import { $, el } from './dom.js';

const fmtBytes = (n) => (n >= 1048576 ? (n / 1048576).toFixed(1) + ' MiB' : Math.round(n / 1024) + ' KiB');
const fmtTime = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : '—');
const seg = (s) => encodeURIComponent(s);

export function closePlayer() {
  const video = $('rec-video');
  video.pause();
  // Dropping the source ends the download; load() resets the element.
  video.removeAttribute('src');
  video.load();
  $('rec-player').hidden = true;
}

function play(r) {
  const video = $('rec-video');
  $('rec-play-msg').textContent = '';
  $('rec-playing').textContent = r.device_id + ' · ' + fmtTime(r.first_frame_at || r.started_at);
  $('rec-player').hidden = false;
  video.src = '/api/v1/evidence/' + seg(r.device_id) + '/' + seg(r.recording_id) + '/play';
  video.play().catch(() => {
    // Autoplay refused or the source failed: the controls and the error handler remain.
  });
}

function recordingRow(r) {
  const tr = el('tr');
  tr.dataset.evidence = r.evidence_id;
  const cam = el('td', null, r.device_id);
  cam.title = (r.device_kind || '') + ' · ' + r.recording_id;
  tr.appendChild(cam);
  const act = el('td', null, r.aids.length ? r.aids[r.aids.length - 1] : 'by hand');
  act.title = r.aids.join(', ');
  tr.appendChild(act);
  tr.appendChild(el('td', null, fmtTime(r.first_frame_at || r.started_at)));
  const start = r.first_frame_at || r.started_at;
  const dur = r.stopped_at && start ? (r.stopped_at - start).toFixed(1) + ' s' : '—';
  tr.appendChild(el('td', 'num', dur));
  tr.appendChild(el('td', 'num', fmtBytes(r.bytes)));
  const ver = el('td');
  const status = el('span', 'rec-ok', 'on arrival');
  status.title = 'Signature and every SHA-256 checked when the camera offloaded it (ledger record ' + r.ledger_seq + ')';
  const check = el('button', null, 'Check');
  check.type = 'button';
  check.title = 'Check the signature and every SHA-256 again now';
  check.addEventListener('click', async () => {
    check.disabled = true;
    try {
      const res = await api('/api/v1/evidence/' + seg(r.device_id) + '/' + seg(r.recording_id));
      const doc = await res.json();
      if (!res.ok) throw new Error(doc.error || res.statusText);
      const v = doc.verification;
      status.className = v.ok ? 'rec-ok' : 'rec-bad';
      status.textContent = v.ok ? 'verified now' : 'FAILED';
      status.title = v.ok ? 'Signature and every SHA-256 match' : v.problems.join('; ');
    } catch (err) {
      if (!(err instanceof AuthError)) { status.className = 'rec-bad'; status.textContent = String(err.message || err); }
    } finally {
      check.disabled = false;
    }
  });
  ver.append(status, ' ', check);
  tr.appendChild(ver);
  const dl = el('td');
  if (r.playable) {
    const pb = el('button', 'rec-play', 'Play');
    pb.type = 'button';
    pb.title = 'Play the video here (recorded in the audit ledger)';
    pb.addEventListener('click', () => play(r));
    dl.append(pb, ' ');
  }
  r.files.forEach((name) => {
    const a = el('a', 'rec-dl', 'Download');
    a.href = '/api/v1/evidence/' + seg(r.device_id) + '/' + seg(r.recording_id) + '/files/' + seg(name);
    a.setAttribute('download', r.device_id + '_' + r.recording_id + '_' + name);
    a.title = name + ' (' + fmtBytes(r.bytes) + ')';
    dl.appendChild(a);
  });
  tr.appendChild(dl);
  return tr;
}

async function loadRecordings() {
  const msg = $('rec-msg');
  msg.textContent = 'Loading…';
  try {
    const res = await api('/api/v1/evidence?limit=500');
    if (res.status === 404) { msg.textContent = 'This server has no evidence store.'; $('rec-table').hidden = true; return; }
    const doc = await res.json();
    if (!res.ok) throw new Error(doc.error || res.statusText);
    const rows = $('rec-rows');
    rows.replaceChildren(...doc.recordings.slice().reverse().map(recordingRow));
    $('rec-count').textContent = doc.recordings.length + (doc.truncated ? '+' : '');
    $('rec-table').hidden = doc.recordings.length === 0;
    msg.textContent = doc.recordings.length ? '' : 'No recordings have been offloaded yet.';
  } catch (err) {
    if (!(err instanceof AuthError)) msg.textContent = 'Recordings unavailable: ' + String(err.message || err);
  }
}

function showRecordings(on) {
  if (!on) closePlayer();
  $('recordings').hidden = !on;
  $('rec-btn').setAttribute('aria-expanded', String(on));
  if (on) loadRecordings();
}
export function initRecordings() {
  $('rec-btn').addEventListener('click', () => showRecordings($('recordings').hidden));
  $('rec-close').addEventListener('click', () => showRecordings(false));
  $('rec-refresh').addEventListener('click', loadRecordings);
  $('rec-stop').addEventListener('click', closePlayer);
  $('rec-video').addEventListener('error', () => {
    if ($('rec-video').getAttribute('src')) {
      $('rec-play-msg').textContent = 'This recording could not be played here; download it and open it in a video player.';
    }
  });
}
