/* actimesh dispatch map.
 *
 * A login form first (POST /api/v1/session sets an HttpOnly session cookie the page
 * never sees, and returns a CSRF token the page keeps in memory and sends with every
 * change). Then one WebSocket (/api/v1/live): a snapshot on connect, then deltas. The
 * page keeps the same maps the server does (devices, activations, alerts) and redraws
 * what changed. When the session ends (logout, timeout, a disabled user) the server
 * answers 401 or closes the socket with 1008, and the page goes back to the login form.
 * No framework and no build step; Leaflet is served by the app itself (no CDN).
 * Nothing here sets inline styles: the page's Content-Security-Policy forbids them.
 */
(function () {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const TYPE_LABELS = {
    taser_draw: 'TASER drawn',
    emergency_lights: 'Emergency lights',
    collision: 'Collision',
    dispatch_zone: 'Dispatcher zone',
  };
  const KIND_LABELS = {
    body_cam: 'body camera', dash_cam: 'dash camera', rear_cam: 'rear camera',
    gateway: 'vehicle gateway', cew: 'CEW (TASER)',
  };
  const CAMERA_LABELS = {
    commanded: 'commanded', acknowledged: 'acknowledged', recording: 'recording', refused: 'refused', no_ack: 'no acknowledgement',
    pending: 'waiting', not_commanded: 'not commanded', cancelled: 'cancelled: false activation',
  };
  // Glyphs: 24x24, drawn in currentColor (white on the status colour).
  const GLYPHS = {
    body_cam: '<svg viewBox="0 0 24 24" fill="currentColor"><circle cx="12" cy="6.5" r="3.5"/><path d="M5 21c0-4.6 3-8 7-8s7 3.4 7 8z"/></svg>',
    dash_cam: '<svg viewBox="0 0 24 24" fill="currentColor"><path d="M4 16v-4l2.2-5a2 2 0 0 1 1.8-1.2h8a2 2 0 0 1 1.8 1.2L20 12v4h-1.5v2h-3v-2h-7v2h-3v-2zM7 11h10l-1.4-3.3H8.4z"/></svg>',
    rear_cam: '<svg viewBox="0 0 24 24" fill="currentColor"><path d="M4 15V9.5A2.5 2.5 0 0 1 6.5 7h11A2.5 2.5 0 0 1 20 9.5V15h-1.5v2.5h-3V15h-7v2.5h-3V15zM6.5 9.5v3h11v-3z"/></svg>',
    gateway: '<svg viewBox="0 0 24 24" fill="currentColor" stroke="currentColor"><path d="M11 11h2v10h-2z" stroke="none"/><circle cx="12" cy="9" r="2" stroke="none"/><path d="M7.8 4.8a6 6 0 0 0 0 8.4M16.2 4.8a6 6 0 0 1 0 8.4" fill="none" stroke-width="1.8"/></svg>',
    cew: '<svg viewBox="0 0 24 24" fill="currentColor"><path d="M13.5 2 5 13.5h5.5L9.5 22 19 10h-5.8z"/></svg>',
    unknown: '<svg viewBox="0 0 24 24" fill="currentColor"><circle cx="12" cy="12" r="4"/></svg>',
  };
  const PIN_GLYPH = { taser_draw: '⚡', emergency_lights: '✱', collision: '!', dispatch_zone: '◎' };

  const S = {
    config: null,
    devices: new Map(),
    activations: new Map(),
    alerts: new Map(),
    dismissed: new Set(),
    offset: 0,           // server clock minus ours, seconds
    connected: false,    // WebSocket open
    brokerUp: false,     // the service's MQTT feed
    selected: null,
    follow: '',
    fitted: false,
    zone: null,
  };
  // For tests and for operators poking in the console.
  window.actimesh = { state: S, seen: {}, frames: 0 };

  const now = () => Date.now() / 1000 + S.offset;
  const clock = (ts) => new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
  const typeLabel = (t) => (t ? TYPE_LABELS[t] || t.replace(/_/g, ' ') : 'Alert');
  const typeClass = (t) => (TYPE_LABELS[t] ? 't-' + t : 't-other');
  const ago = (ts) => {
    const s = Math.max(0, now() - ts);
    if (s < 60) return Math.round(s) + ' s ago';
    if (s < 3600) return Math.round(s / 60) + ' min ago';
    return (s / 3600).toFixed(1) + ' h ago';
  };
  const isStale = (d) => d.fix_ts != null && S.config != null && now() - d.fix_ts > S.config.max_fix_age_s;

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text != null) node.textContent = text;
    return node;
  }

  if (!window.L) {
    const fatal = $('fatal');
    fatal.textContent = 'The map library (Leaflet) is not installed on this server: run `make web-deps` ' +
      '(npm ci) and reload. The API still works.';
    fatal.hidden = false;
    return;
  }

  // ------------------------------------------------------------------ map
  const map = L.map('map', { zoomControl: true, maxZoom: 21, minZoom: 2, worldCopyJump: true })
    .setView([20, 0], 2);
  L.control.scale({ metric: true, imperial: true, maxWidth: 160 }).addTo(map);
  const Grid = L.GridLayer.extend({
    createTile: function () {
      const tile = document.createElement('canvas');
      const size = this.getTileSize();
      tile.width = size.x;
      tile.height = size.y;
      const g = tile.getContext('2d');
      g.strokeStyle = 'rgba(71, 85, 105, 0.13)';
      g.lineWidth = 1;
      g.strokeRect(0.5, 0.5, size.x, size.y);
      return tile;
    },
  });
  new Grid({ maxZoom: 21, attribution: '' }).addTo(map);
  const activationLayer = L.layerGroup().addTo(map);
  const labelZoom = () => $('map').classList.toggle('labels-off', map.getZoom() < 18);
  map.on('zoomend', labelZoom);
  labelZoom();
  const deviceLayer = L.layerGroup().addTo(map);
  const legend = L.control({ position: 'bottomleft' });
  legend.onAdd = function () {
    const box = el('div', 'legend');
    [['l-rec', 'recording'], ['l-buf', 'buffering'], ['l-off', 'offline'], ['l-stale', 'stale position'],
      ['l-cmd', 'commanded, no ack yet'], ['l-noack', 'no acknowledgement']].forEach(([cls, text]) => {
      const row = el('div');
      row.appendChild(el('i', cls));
      row.appendChild(document.createTextNode(text));
      box.appendChild(row);
    });
    return box;
  };
  legend.addTo(map);

  function configure(config) {
    const first = S.config == null;
    S.config = config;
    $('agency').textContent = config.agency;
    if (first && config.tile_url) {
      L.tileLayer(config.tile_url, { maxZoom: 21, maxNativeZoom: 19, attribution: config.tile_attribution || '' })
        .addTo(map);
    }
    const typeSel = $('f-type');
    config.event_types.forEach((t) => {
      if (![...typeSel.options].some((o) => o.value === t)) typeSel.appendChild(new Option(typeLabel(t), t));
    });
  }

  // ------------------------------------------------------------------ devices
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

  function drawDevice(d) {
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

  function removeDevice(id) {
    const entry = markers.get(id);
    if (entry) { deviceLayer.removeLayer(entry.marker); markers.delete(id); }
    S.devices.delete(id);
  }

  function renderCounts() {
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

  function renderUnits() {
    const units = new Set();
    S.devices.forEach((d) => { if (d.unit) units.add(d.unit); });
    ['follow', 'f-unit'].forEach((id) => {
      const sel = $(id);
      const have = new Set([...sel.options].map((o) => o.value));
      [...units].sort().forEach((u) => { if (!have.has(u)) sel.appendChild(new Option(u, u)); });
    });
  }

  function setFollow(unit) {
    S.follow = unit;
    $('follow').value = unit;
    S.devices.forEach(drawDevice);
    followUnit(true);
  }

  function followUnit(force) {
    if (!S.follow) return;
    const pts = [];
    S.devices.forEach((d) => { if (d.unit === S.follow && d.lat != null) pts.push([d.lat, d.lon]); });
    if (!pts.length) return;
    const lat = pts.reduce((a, p) => a + p[0], 0) / pts.length;
    const lon = pts.reduce((a, p) => a + p[1], 0) / pts.length;
    if (force) map.setView([lat, lon], Math.max(map.getZoom(), 17));
    else map.panTo([lat, lon], { animate: true, duration: 0.25 });
  }

  // ------------------------------------------------------------------ activations
  const drawn = new Map();  // aid -> {circle, pin, lines: Map(cam -> {line, ring})}

  function visible(a) {
    const type = $('f-type').value;
    const unit = $('f-unit').value;
    const horizon = Number($('f-time').value);
    if (type && a.type !== type) return false;
    if (unit && !(a.units || []).includes(unit)) return false;
    return now() - a.ets <= horizon;
  }

  function undraw(aid) {
    const g = drawn.get(aid);
    if (!g) return;
    if (g.circle) activationLayer.removeLayer(g.circle);
    if (g.pin) activationLayer.removeLayer(g.pin);
    g.lines.forEach((l) => { activationLayer.removeLayer(l.line); activationLayer.removeLayer(l.ring); });
    drawn.delete(aid);
  }

  function drawActivation(a) {
    if (!visible(a)) { undraw(a.aid); return; }
    let g = drawn.get(a.aid);
    const old = now() - a.ets > 1800;
    const selected = S.selected === a.aid;
    if (!g) {
      g = { circle: null, pin: null, lines: new Map() };
      drawn.set(a.aid, g);
      if (a.lat != null) {
        g.circle = L.circle([a.lat, a.lon], { radius: a.radius, className: 'act-circle', interactive: true })
          .on('click', () => select(a.aid, true)).addTo(activationLayer);
        g.pin = L.marker([a.lat, a.lon], { keyboard: false, zIndexOffset: 1000, icon: L.divIcon({
          className: 'act-pin ' + typeClass(a.type) + (a.alert ? ' alert' : ''),
          html: '<span>' + (PIN_GLYPH[a.type] || '•') + '</span>',
          iconSize: [24, 24], iconAnchor: [12, 24],
        }) }).on('click', () => select(a.aid, true)).addTo(activationLayer);
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

  function zoomTo(a) {
    const pts = [];
    if (a.lat != null) pts.push([a.lat, a.lon]);
    a.cameras.forEach((c) => { const d = S.devices.get(c.id); if (d && d.lat != null) pts.push([d.lat, d.lon]); });
    if (!pts.length) return;
    let bounds = L.latLngBounds(pts);
    if (a.lat != null) bounds = bounds.extend(L.latLng(a.lat, a.lon).toBounds(a.radius * 2.4));
    map.fitBounds(bounds, { padding: [40, 40], maxZoom: 20 });
  }

  // ------------------------------------------------------------------ incident list
  let listDirty = true;

  function renderList() {
    if (!listDirty) return;
    listDirty = false;
    const list = $('incidents');
    const items = [...S.activations.values()].filter(visible).sort((x, y) => y.ets - x.ets);
    list.textContent = '';
    items.forEach((a) => list.appendChild(incidentItem(a)));
    $('inc-count').textContent = items.length ? '(' + items.length + ')' : '';
    $('no-incidents').hidden = items.length > 0;
  }

  function incidentItem(a) {
    const li = el('li', 'inc' + (a.alert ? ' alert' : '') + (S.selected === a.aid ? ' selected' : ''));
    li.dataset.aid = a.aid;
    const r1 = el('div', 'row1');
    r1.appendChild(el('span', 'time', clock(a.ets)));
    const type = el('span', 'type');
    type.appendChild(el('span', 'type-badge ' + typeClass(a.type)));
    type.appendChild(document.createTextNode(' ' + typeLabel(a.type)));
    r1.appendChild(type);
    r1.appendChild(el('span', 'age', ago(a.ets)));
    li.appendChild(r1);
    const who = [a.unit || a.src];
    if (a.unit) who.push(a.src);
    if (a.lat == null) who.push('no position');
    li.appendChild(el('div', 'row2', who.join(' · ')));
    const chips = el('div', 'chips');
    const s = a.summary;
    if (s.recording) chips.appendChild(el('span', 'chip rec', '● ' + s.recording + ' recording'));
    const waiting = s.commanded + s.acknowledged;
    if (waiting) chips.appendChild(el('span', 'chip cmd', waiting + ' not recording yet'));
    if (s.no_ack) chips.appendChild(el('span', 'chip bad', '⚠ ' + s.no_ack + ' no ack'));
    if (s.refused) chips.appendChild(el('span', 'chip bad', '✕ ' + s.refused + ' refused'));
    if (s.cancelled) chips.appendChild(el('span', 'chip', s.cancelled + ' false activation'));
    if (!a.cameras.length) chips.appendChild(el('span', 'chip', 'no camera in range'));
    if (a.by) chips.appendChild(el('span', 'chip by', 'by ' + a.by));
    li.appendChild(chips);
    li.addEventListener('click', () => select(a.aid, true));
    return li;
  }

  // ------------------------------------------------------------------ detail
  function select(aid, zoom) {
    const prev = S.selected;
    S.selected = aid;
    listDirty = true;
    renderList();
    [prev, aid].forEach((id) => { const a = S.activations.get(id); if (a) drawActivation(a); });
    const a = S.activations.get(aid);
    if (!a) return;
    if (zoom) zoomTo(a);
    renderDetail(a);
    loadLedger(aid);
  }

  function renderDetail(a) {
    const box = $('detail');
    box.hidden = false;
    box.textContent = '';
    const h = el('h3');
    h.appendChild(el('span', 'type-badge ' + typeClass(a.type)));
    h.appendChild(document.createTextNode(typeLabel(a.type) + ' · ' + clock(a.ets)));
    box.appendChild(h);
    const meta = [
      'from ' + a.src + (a.unit ? ' (' + a.unit + ')' : '') + (a.by ? ' · by ' + a.by : ''),
      a.lat != null ? a.lat.toFixed(5) + ', ' + a.lon.toFixed(5) + ' · radius ' + a.radius.toFixed(1) + ' m'
        : 'no position: paired cameras only',
      'pre-roll ' + a.pre + ' s · decided ' + Math.round((a.ts - a.ets) * 1000) + ' ms after the trigger · ' +
        a.excluded + ' left out',
      'activation ' + a.aid,
    ];
    const m = el('div', 'meta');
    meta.forEach((line) => m.appendChild(el('div', null, line)));
    box.appendChild(m);
    const actions = el('div', 'actions');
    const zoom = el('button', null, 'Zoom to incident');
    zoom.type = 'button';
    zoom.addEventListener('click', () => zoomTo(a));
    const close = el('button', null, 'Close');
    close.type = 'button';
    close.addEventListener('click', () => { S.selected = null; box.hidden = true; listDirty = true; renderList(); drawActivation(a); });
    actions.appendChild(zoom);
    actions.appendChild(close);
    box.appendChild(actions);
    const table = el('table');
    const head = el('tr');
    ['Camera', 'Why', 'Status', 'Pre-roll'].forEach((t) => head.appendChild(el('th', null, t)));
    table.appendChild(head);
    a.cameras.forEach((c) => {
      const tr = el('tr');
      const d = S.devices.get(c.id);
      const cam = el('td', 'cam', c.id);
      if (d && d.unit) { cam.appendChild(document.createElement('br')); cam.appendChild(el('span', 'dim', d.unit)); }
      tr.appendChild(cam);
      tr.appendChild(el('td', null, c.reason + (c.dist != null ? ' ' + c.dist.toFixed(1) + ' m' : '')));
      const st = el('td');
      st.appendChild(el('span', 'st st-' + c.status, CAMERA_LABELS[c.status] + (c.late ? ' (late)' : '')));
      if (c.cancelled_by) st.appendChild(el('span', 'dim', ' by ' + c.cancelled_by));
      if (c.ack_latency_s != null) st.appendChild(el('span', 'dim', ' ' + Math.round(c.ack_latency_s * 1000) + ' ms'));
      tr.appendChild(st);
      tr.appendChild(el('td', null, c.pre_cov != null ? c.pre_cov.toFixed(1) + ' / ' + a.pre + ' s' : '—'));
      table.appendChild(tr);
    });
    box.appendChild(table);
    if (!a.cameras.length) box.appendChild(el('p', 'dim', 'No camera was commanded.'));
    const ledger = el('div');
    ledger.id = 'ledger-' + a.aid;
    box.appendChild(ledger);
    if (ledgerCache.has(a.aid)) fillLedger(a.aid, ledgerCache.get(a.aid));
  }

  // What the ledger says about cameras left out does not change: fetched once per incident.
  const ledgerCache = new Map();

  async function loadLedger(aid) {
    if (ledgerCache.has(aid)) return;
    let detail;
    try {
      const res = await api('/api/v1/activations/' + encodeURIComponent(aid));
      if (!res.ok) return;
      detail = await res.json();
    } catch (e) {
      return;
    }
    if (ledgerCache.size > 200) ledgerCache.delete(ledgerCache.keys().next().value);
    ledgerCache.set(aid, detail);
    fillLedger(aid, detail);
  }

  function fillLedger(aid, detail) {
    const slot = document.getElementById('ledger-' + aid);
    if (!slot) return;
    slot.textContent = '';
    const out = detail.cameras.filter((c) => !c.commanded);
    slot.appendChild(el('h4', null, 'Considered and left out (ledger)'));
    if (!out.length) { slot.appendChild(el('div', 'dim', 'none')); return; }
    const table = el('table');
    out.forEach((c) => {
      const tr = el('tr');
      tr.appendChild(el('td', null, c.device_id));
      const why = c.reason.replace(/_/g, ' ') + (c.distance_m != null ? ' · ' + c.distance_m.toFixed(1) + ' m' : '') +
        (c.fix_age_s != null && c.reason === 'stale' ? ' · fix ' + c.fix_age_s.toFixed(0) + ' s old' : '');
      tr.appendChild(el('td', 'st st-not_commanded', why));
      table.appendChild(tr);
    });
    slot.appendChild(table);
  }

  // ------------------------------------------------------------------ alerts
  function renderAlerts() {
    const open = [...S.alerts.values()].filter((a) => !S.dismissed.has(a.id) && now() - a.ts < 4 * 3600);
    const bar = $('alerts');
    if (!open.length) { bar.hidden = true; return; }
    open.sort((x, y) => y.ts - x.ts);
    const latest = open[0];
    $('alert-text').textContent = (open.length > 1 ? open.length + ' alerts · latest: ' : '') +
      typeLabel(latest.type) + ' at ' + clock(latest.ts) + ' — ' + latest.message +
      (latest.unit ? ' (' + latest.unit + ')' : '');
    bar.dataset.aid = latest.aid;
    bar.hidden = false;
  }
  $('alerts').addEventListener('click', (e) => {
    if (e.target.id === 'alert-dismiss') {
      S.alerts.forEach((a) => S.dismissed.add(a.id));
      renderAlerts();
      return;
    }
    if ($('alerts').dataset.aid) select($('alerts').dataset.aid, true);
  });

  // ------------------------------------------------------------------ zones
  function zoneMode(on) {
    S.zone && S.zone.preview && map.removeLayer(S.zone.preview);
    S.zone = on ? { preview: null } : null;
    $('zone-btn').classList.toggle('active', on);
    $('zone-btn').textContent = on ? 'Click the map… (Esc)' : 'Activate zone…';
    $('map').classList.toggle('zone-mode', on);
    if (!on) map.closePopup();
  }
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
        setTimeout(() => zoneMode(false), 1200);
      } catch (err) {
        msg.className = 'msg err';
        msg.textContent = String(err.message || err);
        go.disabled = false;
      }
    });
    L.popup({ minWidth: 230, closeOnClick: false }).setLatLng(e.latlng).setContent(form).openOn(map);
  });

  // ------------------------------------------------------------------ feed
  function applyDevice(d) {
    S.devices.set(d.id, d);
    drawDevice(d);
  }

  function applyActivation(a) {
    S.activations.set(a.aid, a);
    drawActivation(a);
    listDirty = true;
    if (S.selected === a.aid) renderDetail(a);
  }

  function onFrame(msg) {
    window.actimesh.frames++;
    S.offset = msg.now - Date.now() / 1000;
    if ('connected' in msg) S.brokerUp = msg.connected;
    if (msg.type === 'snapshot') {
      configure(msg.config);
      markers.forEach((m) => deviceLayer.removeLayer(m.marker));
      markers.clear();
      [...drawn.keys()].forEach(undraw);
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
      (msg.removed_activations || []).forEach((aid) => { undraw(aid); S.activations.delete(aid); listDirty = true; });
      msg.activations.forEach(applyActivation);
      msg.alerts.forEach((a) => S.alerts.set(a.id, a));
      if (!S.fitted && S.devices.size) {
        const pts = [...S.devices.values()].filter((d) => d.lat != null).map((d) => [d.lat, d.lon]);
        if (pts.length) { map.fitBounds(L.latLngBounds(pts), { padding: [30, 30], maxZoom: 18 }); S.fitted = true; }
      }
      // Cameras move: keep the lines to them attached.
      if (msg.devices.length) S.activations.forEach((a) => { if (drawn.has(a.aid)) drawActivation(a); });
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

  function renderConn() {
    const box = $('conn');
    box.className = 'conn ' + (!S.connected ? 'conn-down' : S.brokerUp ? 'conn-live' : 'conn-degraded');
    $('conn-text').textContent = !S.connected ? 'reconnecting…' : S.brokerUp ? 'live' : 'broker unreachable';
  }

  // ------------------------------------------------------------------ session
  const session = { user: null, role: null, csrf: null };
  let live = null;         // the WebSocket, while logged in
  let retryTimer = null;
  let retry = 0;
  class AuthError extends Error {}

  // fetch with the session cookie and, on changes, the CSRF token; a 401 means the
  // session is over: back to the login form.
  async function api(path, options) {
    const opts = Object.assign({ method: 'GET' }, options || {});
    opts.credentials = 'same-origin';
    opts.headers = Object.assign({}, opts.headers || {});
    if (opts.method !== 'GET' && session.csrf) opts.headers['X-CSRF-Token'] = session.csrf;
    const res = await fetch(path, opts);
    if (res.status === 401) {
      showLogin('Your session has ended; log in again.');
      throw new AuthError('not logged in');
    }
    return res;
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
      if (ev.code === 1008) { showLogin('Your session has ended; log in again.'); return; }
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
      if (doc && !doc.authenticated) { showLogin('Your session has ended; log in again.'); return; }
    } catch (err) {
      // The server is unreachable: keep trying.
    }
    if (session.user && !live) connect();
  }

  function stopLive() {
    if (retryTimer) { clearTimeout(retryTimer); retryTimer = null; }
    const ws = live;
    live = null;
    if (ws) ws.close();
    S.connected = false;
    renderConn();
  }

  // Nothing of the last user's view stays on the screen for the next one.
  function clearMap() {
    zoneMode(false);
    markers.forEach((m) => deviceLayer.removeLayer(m.marker));
    markers.clear();
    [...drawn.keys()].forEach(undraw);
    S.devices.clear();
    S.activations.clear();
    S.alerts.clear();
    S.selected = null;
    S.fitted = false;
    ledgerCache.clear();
    $('detail').hidden = true;
    listDirty = true;
    renderList();
    renderAlerts();
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
    if (!live) connect();
  }

  function showLogin(message) {
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

  // ------------------------------------------------------------------ recordings
  // Offloaded recordings in the evidence store. The listing, each fresh check, each
  // playback and each download are audited by the server before it answers. Downloads
  // and the player's source are plain same-origin URLs, so the session cookie goes with
  // them; the server remuxes H.264 to MP4 for the player (Chromium cannot play MPEG-TS).
  const fmtBytes = (n) => (n >= 1048576 ? (n / 1048576).toFixed(1) + ' MiB' : Math.round(n / 1024) + ' KiB');
  const fmtTime = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : '—');
  const seg = (s) => encodeURIComponent(s);

  function closePlayer() {
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
  $('rec-btn').addEventListener('click', () => showRecordings($('recordings').hidden));
  $('rec-close').addEventListener('click', () => showRecordings(false));
  $('rec-refresh').addEventListener('click', loadRecordings);
  $('rec-stop').addEventListener('click', closePlayer);
  $('rec-video').addEventListener('error', () => {
    if ($('rec-video').getAttribute('src')) {
      $('rec-play-msg').textContent = 'This recording could not be played here; download it and open it in a video player.';
    }
  });

  async function start() {
    try {
      const res = await fetch('/api/v1/session', { credentials: 'same-origin' });
      const doc = await res.json();
      if (res.ok && doc.authenticated) { showApp(doc); return; }
    } catch (err) {
      // Unreachable: the login form says so when it is used.
    }
    showLogin('');
  }

  ['f-type', 'f-time', 'f-unit'].forEach((id) => $(id).addEventListener('change', () => {
    listDirty = true;
    S.activations.forEach(drawActivation);
    renderList();
  }));
  $('follow').addEventListener('change', () => setFollow($('follow').value));

  // Staleness and "x min ago" move with the clock, not only with frames.
  setInterval(() => {
    S.devices.forEach(drawDevice);
    listDirty = true;
    renderList();
    renderCounts();
  }, 1000);

  renderConn();
  start();
})();
