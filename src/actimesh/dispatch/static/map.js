/* The Leaflet map: an offline grid under everything, the streets above it if the server
 * names a basemap (basemap.js), a layer for activations below one for devices, the
 * legend, and the street-level labels. Leaflet is served by the app itself (no CDN).
 * Devices cluster below street level (Leaflet.markercluster, served beside Leaflet): at
 * city zoom a hundred units are a few counted bubbles, red when one of them records.
 * Event pins have a pane of their own above every marker and cluster.
 */
import { addBasemap } from './basemap.js';
import { $, el } from './dom.js';
import { typeLabel } from './labels.js';
import { S } from './state.js';

export let map = null;
export let activationLayer = null;
export let deviceLayer = null;
export let trackLayer = null;
export let replayLayer = null;

// Devices are shown one by one from this zoom on (street level).
export const UNCLUSTER_ZOOM = 17;

function clusterIcon(cluster) {
  const children = cluster.getAllChildMarkers();
  const rec = children.some((m) => m.options.status === 'recording');
  const n = children.length;
  return L.divIcon({
    className: 'dev-cluster' + (rec ? ' cl-rec' : ''),
    html: '<span>' + n + '</span>',
    iconSize: [34, 34],
  });
}

function devicesGroup() {
  if (!L.markerClusterGroup) return L.layerGroup();  // not installed: every marker alone
  return L.markerClusterGroup({
    disableClusteringAtZoom: UNCLUSTER_ZOOM,
    maxClusterRadius: 45,
    showCoverageOnHover: false,
    spiderfyOnMaxZoom: false,
    removeOutsideVisibleBounds: true,
    iconCreateFunction: clusterIcon,
  });
}

export function initMap() {
  map = L.map('map', { zoomControl: true, maxZoom: 21, minZoom: 2, worldCopyJump: true })
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
  window.actimesh.map = map;  // for the browser tests and operators in the console
  map.createPane('eventPins');  // above markers (600), below tooltips (650): style.css
  activationLayer = L.layerGroup().addTo(map);
  trackLayer = L.layerGroup().addTo(map);
  const labelZoom = () => $('map').classList.toggle('labels-off', map.getZoom() < 18);
  map.on('zoomend', labelZoom);
  labelZoom();
  deviceLayer = devicesGroup().addTo(map);
  replayLayer = L.layerGroup().addTo(map);
  const legend = L.control({ position: 'bottomleft' });
  legend.onAdd = function () {
    const box = el('div', 'legend');
    [['l-rec', 'recording'], ['l-buf', 'buffering'], ['l-off', 'offline'], ['l-stale', 'stale position'],
      ['l-cmd', 'commanded, no ack yet'], ['l-noack', 'no acknowledgement'],
      ['l-eff', 'effective radius (rule + GPS margin)']].forEach(([cls, text]) => {
      const row = el('div');
      row.appendChild(el('i', cls));
      row.appendChild(document.createTextNode(text));
      box.appendChild(row);
    });
    return box;
  };
  legend.addTo(map);
}

// The server's settings, from the snapshot: agency, basemap, trigger types.
export function configure(config) {
  const first = S.config == null;
  S.config = config;
  $('agency').textContent = config.agency;
  if (first) addBasemap(map, config.basemap);
  const typeSel = $('f-type');
  config.event_types.forEach((t) => {
    if (![...typeSel.options].some((o) => o.value === t)) typeSel.appendChild(new Option(typeLabel(t), t));
  });
}
