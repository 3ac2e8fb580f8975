/* The alert bar: cameras that never acknowledged, and the engine's own alerts, the
 * latest first; a click opens its incident, Dismiss hides those shown until new ones
 * come.
 */
import { $ } from './dom.js';
import { select } from './incidents.js';
import { clock, typeLabel } from './labels.js';
import { S, now } from './state.js';

export function renderAlerts() {
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

export function initAlerts() {
  $('alerts').addEventListener('click', (e) => {
    if (e.target.id === 'alert-dismiss') {
      S.alerts.forEach((a) => S.dismissed.add(a.id));
      renderAlerts();
      return;
    }
    if ($('alerts').dataset.aid) select($('alerts').dataset.aid, true);
  });
}
