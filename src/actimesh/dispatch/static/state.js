/* The page's copy of the live picture: the same maps the server keeps (devices,
 * activations, alerts), kept up to date by the live feed (feed.js), and the server's
 * clock, so "x min ago" and staleness agree with the server's.
 */

export const S = {
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

export const now = () => Date.now() / 1000 + S.offset;
export const ago = (ts) => {
  const s = Math.max(0, now() - ts);
  if (s < 60) return Math.round(s) + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  return (s / 3600).toFixed(1) + ' h ago';
};
// A device reporting on motion is fresh for longer (its heartbeat): the server says how long.
export const isStale = (d) => d.fix_ts != null && S.config != null &&
  now() - d.fix_ts > (d.fresh_s ?? S.config.max_fix_age_s);
