/* The activations on the map: the rule's circle and, dashed around it, the effective
 * radius (the rule's plus the GPS margin of the inclusion policy: cameras inside it
 * may have been included); a pin for the trigger, above every device marker; and for
 * the selected incident and incidents still active, a line and a ring to where each
 * commanded camera WAS at the event, in the colour of its outcome. When an activation
 * ends (no camera still waiting or recording for it) its lines fade out, so the map
 * after an hour shows what is happening now. Only what the filters let through is drawn.
 */
import { $ } from './dom.js';
import { PIN_GLYPH, clock, typeClass, typeLabel } from './labels.js';
import { activationLayer, map } from './map.js';
import { S, now } from './state.js';

const drawn = new Map();  // aid -> {circle, outer, pin, lines: Map(cam -> {line, ring, cls})}
const FADE_MS = 1500;     // the lines' fade-out (style.css .fading takes as long)
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

// Still going on: a camera waiting to answer, or recording for it now.
export function isActive(a) {
  return a.cameras.some((c) => {
    if (c.status === 'commanded' || c.status === 'acknowledged') return true;
    if (c.status !== 'recording') return false;
    const d = S.devices.get(c.id);
    return d != null && d.status === 'recording';
  });
}

// The rule's radius plus the widest GPS margin the policy in force adds.
export const effectiveRadius = (a) => a.radius + ((S.config && S.config.gps_margin_m) || 0);

function removeLine(l) {
  activationLayer.removeLayer(l.line);
  activationLayer.removeLayer(l.ring);
}

export function undraw(aid) {
  const g = drawn.get(aid);
  if (!g) return;
  [g.circle, g.outer, g.pin].forEach((layer) => { if (layer) activationLayer.removeLayer(layer); });
  g.lines.forEach(removeLine);
  drawn.delete(aid);
}

export function drawActivation(a) {
  if (!visible(a)) { undraw(a.aid); return; }
  let g = drawn.get(a.aid);
  const old = now() - a.ets > 1800;
  const selected = S.selected === a.aid;
  if (!g) {
    g = { circle: null, outer: null, pin: null, lines: new Map() };
    drawn.set(a.aid, g);
    if (a.lat != null) {
      if (effectiveRadius(a) > a.radius) {
        g.outer = L.circle([a.lat, a.lon], { radius: effectiveRadius(a), className: 'act-outer', interactive: false })
          .addTo(activationLayer);
      }
      g.circle = L.circle([a.lat, a.lon], { radius: a.radius, className: 'act-circle', interactive: true })
        .on('click', () => pick(a.aid)).addTo(activationLayer);
      // Its own pane, above the markers (clustered or not): the event is never hidden.
      g.pin = L.marker([a.lat, a.lon], { keyboard: false, pane: 'eventPins', icon: L.divIcon({
        className: 'act-pin ' + typeClass(a.type) + (a.alert ? ' alert' : ''),
        html: '<span>' + (PIN_GLYPH[a.type] || '•') + '</span>',
        iconSize: [24, 24], iconAnchor: [12, 24],
      }) }).on('click', () => pick(a.aid)).addTo(activationLayer);
      g.pin.bindTooltip(() => typeLabel(a.type) + ' · ' + clock(a.ets) + ' · radius ' + a.radius.toFixed(1) +
        ' m, effective ' + effectiveRadius(a).toFixed(1) + ' m', { direction: 'top', offset: [0, -22] });
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
    if (g.outer) g.outer.setRadius(effectiveRadius(a));
    const pinEl = g.pin && g.pin.getElement();
    if (pinEl) pinEl.classList.toggle('alert', a.alert);
  }
  if (selected || isActive(a)) drawLines(a, g, selected);
  else fadeLines(g);
}

// Where a camera was at the event; for the selected incident, a camera whose position
// then is not known (older than the dispatch's tracks) is drawn where it is now, dotted.
function endpoint(a, c, selected) {
  if (c.at) return { pt: c.at, now: false };
  if (!selected) return null;
  const d = S.devices.get(c.id);
  return d && d.lat != null ? { pt: [d.lat, d.lon], now: true } : null;
}

function drawLines(a, g, selected) {
  const seen = new Set();
  if (a.lat == null) return;
  a.cameras.forEach((c) => {
    const end = endpoint(a, c, selected);
    if (!end) return;
    seen.add(c.id);
    const cls = 'cam-' + c.status + (end.now ? ' now' : '');
    let l = g.lines.get(c.id);
    if (l && l.fading) { removeLine(l); l = null; }
    const pts = [[a.lat, a.lon], end.pt];
    if (!l) {
      l = {
        line: L.polyline(pts, { className: 'act-line ' + cls, interactive: false }).addTo(activationLayer),
        ring: L.circleMarker(end.pt, { radius: 17, className: 'cam-ring ' + cls, interactive: false })
          .addTo(activationLayer),
        cls,
        fading: false,
      };
      g.lines.set(c.id, l);
    } else {
      l.line.setLatLngs(pts);
      l.ring.setLatLng(end.pt);
      if (l.cls !== cls) {
        const le = l.line.getElement(), re = l.ring.getElement();
        if (le) le.setAttribute('class', 'act-line ' + cls);
        if (re) re.setAttribute('class', 'cam-ring ' + cls);
        l.cls = cls;
      }
    }
  });
  g.lines.forEach((l, id) => { if (!seen.has(id)) { removeLine(l); g.lines.delete(id); } });
}

function fadeLines(g) {
  g.lines.forEach((l, id) => {
    if (l.fading) return;
    l.fading = true;
    [l.line, l.ring].forEach((layer) => { const e = layer.getElement(); if (e) e.classList.add('fading'); });
    setTimeout(() => {
      if (g.lines.get(id) !== l) return;
      removeLine(l);
      g.lines.delete(id);
    }, FADE_MS);
  });
}

// The incident's event, the cameras where they were, and its effective radius in view.
export function zoomTo(a) {
  const pts = [];
  if (a.lat != null) pts.push([a.lat, a.lon]);
  a.cameras.forEach((c) => {
    if (c.at) { pts.push(c.at); return; }
    const d = S.devices.get(c.id);
    if (d && d.lat != null) pts.push([d.lat, d.lon]);
  });
  if (!pts.length) return;
  let bounds = L.latLngBounds(pts);
  if (a.lat != null) bounds = bounds.extend(L.latLng(a.lat, a.lon).toBounds(effectiveRadius(a) * 2.2));
  map.fitBounds(bounds, { padding: [40, 40], maxZoom: 20 });
}

// Every activation off the map (a new snapshot, or a new user).
export function undrawAll() {
  [...drawn.keys()].forEach(undraw);
}

export const isDrawn = (aid) => drawn.has(aid);
// For the browser test: how many lines an incident draws now (fading ones included).
window.actimesh.lines = (aid) => { const g = drawn.get(aid); return g ? g.lines.size : 0; };
// For the browser test: where each of an incident's lines ends, by camera id.
window.actimesh.lineEnds = (aid) => {
  const g = drawn.get(aid);
  if (!g) return {};
  return Object.fromEntries([...g.lines].map(([id, l]) => {
    const end = l.line.getLatLngs()[1];
    return [id, end ? [end.lat, end.lng] : null];
  }));
};
