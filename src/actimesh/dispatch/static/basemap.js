/* The map's streets, from the operator's own tile source ([dispatch] basemap).
 *
 * The server describes the source in the snapshot's config (`basemap`, or null):
 * - `pmtiles`: one PMTiles file the dispatch serves itself behind the login
 *   (/api/v1/basemap/NAME, read with HTTP range requests). Vector tiles are drawn on
 *   canvas by protomaps-leaflet (served from node_modules like Leaflet, no CDN); the
 *   file's vector layers pick the style: the demo's (`make map-data`: roads, rail,
 *   buildings, water, green, areas, each feature with `kind` and `name`), the Protomaps
 *   basemap schema (`earth`, `roads`, `places`…, drawn with its own light flavour), or
 *   any other schema as plain grey lines and shapes. Raster tiles (an orthophoto, a
 *   scanned city plan) are read with the pmtiles library and drawn on canvases.
 * - `xyz` / `wmts`: raster tiles from the operator's tile server (the page's
 *   Content-Security-Policy allows that origin for images and nothing else).
 * The attribution (ODbL: "© OpenStreetMap contributors") goes in Leaflet's
 * attribution control. #map's data-basemap says how it went: loading, loaded, error.
 */

const MAX_ZOOM = 21;

const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' }[c]));

// The demo's schema: light, muted colours under bright markers.
const MAJOR = new Set(['motorway', 'trunk', 'primary', 'secondary', 'motorway_link', 'trunk_link', 'primary_link', 'secondary_link']);
const STREET = new Set(['tertiary', 'tertiary_link', 'unclassified', 'residential', 'living_street', 'service', 'road']);
const PATH = new Set(['footway', 'path', 'cycleway', 'pedestrian', 'steps', 'track', 'bridleway', 'corridor', 'trail', 'platform']);
const roadWidth = (z, f) => {
  const k = f.props.kind;
  const base = MAJOR.has(k) ? 6 : STREET.has(k) ? (k === 'service' ? 2.5 : 4) : 1.2;
  return base * Math.pow(2, Math.min(z, 19) - 16);
};

function streetsStyle(P) {
  const is = (set) => (z, f) => set.has(f.props.kind);
  const paintRules = [
    { dataLayer: 'areas', symbolizer: new P.PolygonSymbolizer({ fill: '#ebe7e1' }) },
    { dataLayer: 'green', symbolizer: new P.PolygonSymbolizer({ fill: '#d5e8c4' }) },
    { dataLayer: 'water', symbolizer: new P.PolygonSymbolizer({ fill: '#a9cfe0' }) },
    { dataLayer: 'buildings', symbolizer: new P.PolygonSymbolizer({ fill: '#dcd5cc', stroke: '#c9beb1', width: 0.6 }) },
    { dataLayer: 'rail', symbolizer: new P.LineSymbolizer({ color: '#9a9a9a', width: (z) => Math.max(1, z - 15) }) },
    // Casings first, then fills: streets read as white ribbons with a grey edge.
    { dataLayer: 'roads', filter: (z, f) => !PATH.has(f.props.kind), symbolizer: new P.LineSymbolizer({ color: '#b8b0a4', width: (z, f) => roadWidth(z, f) + 1.5, lineCap: 'round' }) },
    { dataLayer: 'roads', filter: is(PATH), minzoom: 15, symbolizer: new P.LineSymbolizer({ color: '#c2b8a8', width: (z, f) => Math.max(0.8, roadWidth(z, f)), dash: [2, 2] }) },
    { dataLayer: 'roads', filter: is(STREET), symbolizer: new P.LineSymbolizer({ color: '#ffffff', width: roadWidth, lineCap: 'round' }) },
    { dataLayer: 'roads', filter: is(MAJOR), symbolizer: new P.LineSymbolizer({ color: '#f8dcaa', width: roadWidth, lineCap: 'round' }) },
  ];
  const labelRules = [
    { dataLayer: 'roads', minzoom: 15, filter: (z, f) => !PATH.has(f.props.kind), symbolizer: new P.LineLabelSymbolizer({ font: '500 12px sans-serif', fill: '#4b5563', stroke: '#ffffff', width: 3 }) },
  ];
  return { paintRules, labelRules, backgroundColor: '#f3f0eb' };
}

// Any other vector schema: every layer in grey, so the streets are at least there.
function plainStyle(P, layers) {
  return {
    paintRules: layers.flatMap((layer) => [
      { dataLayer: layer, filter: (z, f) => f.geomType === 3, symbolizer: new P.PolygonSymbolizer({ fill: '#e5e2dc', stroke: '#cfc8bd', width: 0.5 }) },
      { dataLayer: layer, filter: (z, f) => f.geomType === 2, symbolizer: new P.LineSymbolizer({ color: '#a8a29e', width: 1.2 }) },
    ]),
    labelRules: [],
    backgroundColor: '#f3f0eb',
  };
}

function vectorLayer(source, attribution) {
  const P = window.protomapsL;
  if (!P) throw new Error('protomaps-leaflet is not installed on this server: run `make web-deps`');
  const layers = source.layers || [];
  let style;
  if (layers.includes('earth') && layers.includes('roads')) style = { flavor: 'light', lang: 'en' };
  else if (layers.includes('roads') && layers.includes('buildings')) style = streetsStyle(P);
  else style = plainStyle(P, layers);
  const options = Object.assign({
    url: source.url,
    attribution,
    maxDataZoom: source.max_zoom,
    maxZoom: MAX_ZOOM,
    className: 'basemap',
  }, style);
  if (source.bounds) {
    const [w, s, e, n] = source.bounds;
    options.bounds = [[s, w], [n, e]];
  }
  return P.leafletLayer(options);
}

const IMAGE_TYPES = { png: 'image/png', jpeg: 'image/jpeg', webp: 'image/webp', avif: 'image/avif' };

// Raster tiles from a PMTiles file, decoded with createImageBitmap onto each tile's
// canvas (no blob: URLs: the page's Content-Security-Policy allows none).
function rasterPmtilesLayer(source, attribution) {
  if (!window.pmtiles) throw new Error('pmtiles is not installed on this server: run `make web-deps`');
  const archive = new window.pmtiles.PMTiles(source.url);
  const type = IMAGE_TYPES[source.tile_type];
  const Layer = L.GridLayer.extend({
    createTile(coords, done) {
      const tile = document.createElement('canvas');
      const size = this.getTileSize();
      tile.width = size.x;
      tile.height = size.y;
      archive.getZxy(coords.z, coords.x, coords.y)
        .then(async (found) => {
          if (found) {
            const image = await createImageBitmap(new Blob([found.data], { type }));
            tile.getContext('2d').drawImage(image, 0, 0, size.x, size.y);
            image.close();
          }
          done(null, tile);
        })
        .catch((err) => done(err, tile));
      return tile;
    },
  });
  // No minNativeZoom: zoomed out far, Leaflet would walk every tile of the view at the
  // file's lowest zoom (millions); below it there is nothing to draw.
  const options = { attribution, maxZoom: MAX_ZOOM, maxNativeZoom: source.max_zoom, className: 'basemap' };
  if (source.bounds) {
    const [w, s, e, n] = source.bounds;
    options.bounds = [[s, w], [n, e]];
  }
  return new Layer(options);
}

function rasterLayer(source, attribution) {
  return L.tileLayer(source.url, { maxZoom: MAX_ZOOM, maxNativeZoom: source.max_zoom, attribution, className: 'basemap' });
}

// Put the configured basemap on `map` (once, from the first snapshot); the map opens at
// the source's centre until devices give it something better to fit.
export function addBasemap(map, source) {
  const box = map.getContainer();
  if (!source) {
    box.dataset.basemap = 'none';
    return null;
  }
  const attribution = esc(source.attribution || '');
  box.dataset.basemap = 'loading';
  let layer;
  try {
    if (source.kind !== 'pmtiles') layer = rasterLayer(source, attribution);
    else if (source.tile_type === 'mvt') layer = vectorLayer(source, attribution);
    else layer = rasterPmtilesLayer(source, attribution);
  } catch (err) {
    box.dataset.basemap = 'error';
    console.warn('basemap:', err.message);
    return null;
  }
  layer.on('loading', () => { box.dataset.basemap = 'loading'; });
  layer.on('load', () => { box.dataset.basemap = 'loaded'; });
  layer.on('tileerror', () => { box.dataset.basemap = 'error'; });
  layer.addTo(map);
  if (source.center) map.setView([source.center[0], source.center[1]], source.center[2] || 13);
  return layer;
}
