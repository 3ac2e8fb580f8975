/* Dispatcher zones: click a point, choose a radius, and every camera inside is
 * activated. The zone goes to the server, which publishes it to the engine like any
 * trigger; the activation then arrives on the live feed like any other.
 */
import { api, session } from './api.js';
import { $, el } from './dom.js';
import { map } from './map.js';
import { S } from './state.js';

export function zoneMode(on) {
  S.zone && S.zone.preview && map.removeLayer(S.zone.preview);
  S.zone = on ? { preview: null } : null;
  $('zone-btn').classList.toggle('active', on);
  $('zone-btn').textContent = on ? 'Click the map… (Esc)' : 'Activate zone…';
  $('map').classList.toggle('zone-mode', on);
  if (!on) map.closePopup();
}
export function initZones() {
  $('zone-btn').addEventListener('click', () => zoneMode(!S.zone));
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && S.zone) zoneMode(false); });

  map.on('click', (e) => {
    if (!S.zone || !S.config) return;
    const cfg = S.config;
    if (S.zone.preview) map.removeLayer(S.zone.preview);
    const radius = Number(localStorage.getItem('actimesh.radius')) || cfg.zone_default_radius_m;
    S.zone.preview = L.circle(e.latlng, { radius: Math.min(radius, cfg.zone_max_radius_m), className: 'zone-preview' })
      .addTo(map);
    const form = el('form', 'zone-form');
    form.appendChild(el('h4', null, 'Activate every camera in this zone'));
    form.appendChild(el('div', 'dim', e.latlng.lat.toFixed(5) + ', ' + e.latlng.lng.toFixed(5)));
    form.appendChild(el('label', null, 'Radius (m)'));
    const range = el('input');
    Object.assign(range, { type: 'range', min: 5, max: cfg.zone_max_radius_m, step: 5, value: S.zone.preview.getRadius() });
    const num = el('input');
    Object.assign(num, { type: 'number', min: 1, max: cfg.zone_max_radius_m, step: 1, value: S.zone.preview.getRadius(), name: 'radius' });
    const sync = (v) => { range.value = v; num.value = v; S.zone && S.zone.preview && S.zone.preview.setRadius(Number(v) || 1); };
    range.addEventListener('input', () => sync(range.value));
    num.addEventListener('input', () => sync(num.value));
    form.appendChild(range);
    form.appendChild(num);
    // Who asks is whoever is logged in: the server records the session's user.
    form.appendChild(el('div', 'dim', 'as ' + (session.user || '?')));
    form.appendChild(el('label', null, 'CAD call id (optional)'));
    const call = el('input');
    Object.assign(call, { type: 'text', name: 'call', maxLength: 64, placeholder: 'e.g. C2025-00123' });
    form.appendChild(call);
    const row = el('div', 'row');
    const go = el('button', 'go', 'Activate cameras');
    go.type = 'submit';
    const cancel = el('button', null, 'Cancel');
    cancel.type = 'button';
    cancel.addEventListener('click', () => zoneMode(false));
    row.appendChild(go);
    row.appendChild(cancel);
    form.appendChild(row);
    const msg = el('div', 'msg');
    form.appendChild(msg);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const body = { lat: e.latlng.lat, lon: e.latlng.lng, radius_m: Number(num.value) };
      if (call.value.trim()) body.call_id = call.value.trim();
      localStorage.setItem('actimesh.radius', String(body.radius_m));
      go.disabled = true;
      msg.className = 'msg';
      msg.textContent = 'sending…';
      try {
        const res = await api('/api/v1/zones', {
          method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
        });
        const doc = await res.json();
        if (!res.ok) throw new Error(doc.error || res.statusText);
        msg.textContent = 'Sent to the engine (' + doc.aid + ').';
        // The whole zone in view, whatever its radius.
        if (S.zone && S.zone.preview) map.fitBounds(S.zone.preview.getBounds(), { padding: [40, 40], maxZoom: 20 });
        setTimeout(() => zoneMode(false), 1200);
      } catch (err) {
        msg.className = 'msg err';
        msg.textContent = String(err.message || err);
        go.disabled = false;
      }
    });
    L.popup({ minWidth: 230, closeOnClick: false }).setLatLng(e.latlng).setContent(form).openOn(map);
  });
}
