/* What the page calls things: trigger types, device kinds, camera outcomes, and the
 * glyphs drawn for them. The server sends identifiers; the words live here only.
 */

export const TYPE_LABELS = {
  taser_draw: 'TASER drawn',
  emergency_lights: 'Emergency lights',
  collision: 'Collision',
  dispatch_zone: 'Dispatcher zone',
};
export const KIND_LABELS = {
  body_cam: 'body camera', dash_cam: 'dash camera', rear_cam: 'rear camera',
  gateway: 'vehicle gateway', cew: 'CEW (TASER)',
};
export const CAMERA_LABELS = {
  commanded: 'commanded', acknowledged: 'acknowledged', recording: 'recording', refused: 'refused', no_ack: 'no acknowledgement',
  pending: 'waiting', not_commanded: 'not commanded', cancelled: 'cancelled: false activation',
};
export const DUTY_LABELS = { available: 'available', en_route: 'en route', on_scene: 'on scene' };
// Glyphs: 24x24, drawn in currentColor (white on the status colour).
export const GLYPHS = {
  body_cam: '<svg viewBox="0 0 24 24" fill="currentColor"><circle cx="12" cy="6.5" r="3.5"/><path d="M5 21c0-4.6 3-8 7-8s7 3.4 7 8z"/></svg>',
  dash_cam: '<svg viewBox="0 0 24 24" fill="currentColor"><path d="M4 16v-4l2.2-5a2 2 0 0 1 1.8-1.2h8a2 2 0 0 1 1.8 1.2L20 12v4h-1.5v2h-3v-2h-7v2h-3v-2zM7 11h10l-1.4-3.3H8.4z"/></svg>',
  rear_cam: '<svg viewBox="0 0 24 24" fill="currentColor"><path d="M4 15V9.5A2.5 2.5 0 0 1 6.5 7h11A2.5 2.5 0 0 1 20 9.5V15h-1.5v2.5h-3V15h-7v2.5h-3V15zM6.5 9.5v3h11v-3z"/></svg>',
  gateway: '<svg viewBox="0 0 24 24" fill="currentColor" stroke="currentColor"><path d="M11 11h2v10h-2z" stroke="none"/><circle cx="12" cy="9" r="2" stroke="none"/><path d="M7.8 4.8a6 6 0 0 0 0 8.4M16.2 4.8a6 6 0 0 1 0 8.4" fill="none" stroke-width="1.8"/></svg>',
  cew: '<svg viewBox="0 0 24 24" fill="currentColor"><path d="M13.5 2 5 13.5h5.5L9.5 22 19 10h-5.8z"/></svg>',
  unknown: '<svg viewBox="0 0 24 24" fill="currentColor"><circle cx="12" cy="12" r="4"/></svg>',
};
export const PIN_GLYPH = { taser_draw: '⚡', emergency_lights: '✱', collision: '!', dispatch_zone: '◎' };

export const clock = (ts) => new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
export const typeLabel = (t) => (t ? TYPE_LABELS[t] || t.replace(/_/g, ' ') : 'Alert');
export const typeClass = (t) => (TYPE_LABELS[t] ? 't-' + t : 't-other');
// What a dispatcher calls a device: its call sign from the registry, else its id.
export const deviceName = (d) => (d && d.call_sign ? d.call_sign : d ? d.id : '?');
