/* The activations on the map: the zone's circle, a pin for the trigger, and a line and
 * a ring to each commanded camera in the colour of its outcome, kept attached as the
 * cameras move. Only what the filters let through is drawn.
 */
import { $ } from './dom.js';
import { PIN_GLYPH, clock, typeClass, typeLabel } from './labels.js';
import { activationLayer, map } from './map.js';
import { S, now } from './state.js';

const drawn = new Map();  // aid -> {circle, pin, lines: Map(cam -> {line, ring})}
let pick = () => {};

// Called with an activation's id when its circle or pin is clicked.
export function onPick(handler) {
  pick = handler;
}

export function visible(a) {
  const type = $('f-type').value;
  const unit = $('f-unit').value;
  const horizon = Number($('f-time').value);
  if (type && a.type !== type) return false;
  if (unit && !(a.units || []).includes(unit)) return false;
  return now() - a.ets <= horizon;
}

export function undraw(aid) {
  const g = drawn.get(aid);
  if (!g) return;
  if (g.circle) activationLayer.removeLayer(g.circle);
  if (g.pin) activationLayer.removeLayer(g.pin);
  g.lines.forEach((l) => { activationLayer.removeLayer(l.line); activationLayer.removeLayer(l.ring); });
  drawn.delete(aid);
}

export function drawActivation(a) {
  if (!visible(a)) { undraw(a.aid); return; }
  let g = drawn.get(a.aid);
  const old = now() - a.ets > 1800;
  const selected = S.selected === a.aid;
  if (!g) {
    g = { circle: null, pin: null, lines: new Map() };
    drawn.set(a.aid, g);
    if (a.lat != null) {
      g.circle = L.circle([a.lat, a.lon], { radius: a.radius, className: 'act-circle', interactive: true })
        .on('click', () => pick(a.aid)).addTo(activationLayer);
      g.pin = L.marker([a.lat, a.lon], { keyboard: false, zIndexOffset: 1000, icon: L.divIcon({
        className: 'act-pin ' + typeClass(a.type) + (a.alert ? ' alert' : ''),
        html: '<span>' + (PIN_GLYPH[a.type] || '•') + '</span>',
        iconSize: [24, 24], iconAnchor: [12, 24],
      }) }).on('click', () => pick(a.aid)).addTo(activationLayer);
      g.pin.bindTooltip(() => typeLabel(a.type) + ' · ' + clock(a.ets), { direction: 'top', offset: [0, -22] });
    }
    // Measured by the browser test: when an activation first reached the page.
    if (!(a.aid in window.actimesh.seen)) window.actimesh.seen[a.aid] = Date.now();
  }
  if (g.circle) {
    const cls = ['act-circle'];
    if (a.type === 'dispatch_zone') cls.push('zone');
    if (a.alert) cls.push('alert');
    if (old) cls.push('old');
    if (selected) cls.push('selected');
    const elem = g.circle.getElement();
    if (elem) elem.setAttribute('class', cls.join(' ') + ' leaflet-interactive');
    g.circle.setRadius(a.radius);
    const pinEl = g.pin && g.pin.getElement();
    if (pinEl) pinEl.classList.toggle('alert', a.alert);
  }
  drawLines(a, g, old);
}

function drawLines(a, g, old) {
  const seen = new Set();
  if (a.lat == null) return;
  a.cameras.forEach((c) => {
    const d = S.devices.get(c.id);
    if (!d || d.lat == null) return;
    seen.add(c.id);
    const cls = 'cam-' + c.status + (old ? ' old' : '');
    let l = g.lines.get(c.id);
    const pts = [[a.lat, a.lon], [d.lat, d.lon]];
    if (!l) {
      l = {
        line: L.polyline(pts, { className: 'act-line ' + cls, interactive: false }).addTo(activationLayer),
        ring: L.circleMarker([d.lat, d.lon], { radius: 17, className: 'cam-ring ' + cls, interactive: false })
          .addTo(activationLayer),
        cls,
      };
      g.lines.set(c.id, l);
    } else {
      l.line.setLatLngs(pts);
      l.ring.setLatLng([d.lat, d.lon]);
      if (l.cls !== cls) {
        const le = l.line.getElement(), re = l.ring.getElement();
        if (le) le.setAttribute('class', 'act-line ' + cls);
        if (re) re.setAttribute('class', 'cam-ring ' + cls);
        l.cls = cls;
      }
    }
  });
  g.lines.forEach((l, id) => {
    if (!seen.has(id)) { activationLayer.removeLayer(l.line); activationLayer.removeLayer(l.ring); g.lines.delete(id); }
  });
}

export function zoomTo(a) {
  const pts = [];
  if (a.lat != null) pts.push([a.lat, a.lon]);
  a.cameras.forEach((c) => { const d = S.devices.get(c.id); if (d && d.lat != null) pts.push([d.lat, d.lon]); });
  if (!pts.length) return;
  let bounds = L.latLngBounds(pts);
  if (a.lat != null) bounds = bounds.extend(L.latLng(a.lat, a.lon).toBounds(a.radius * 2.4));
  map.fitBounds(bounds, { padding: [40, 40], maxZoom: 20 });
}

// Every activation off the map (a new snapshot, or a new user).
export function undrawAll() {
  [...drawn.keys()].forEach(undraw);
}

export const isDrawn = (aid) => drawn.has(aid);
