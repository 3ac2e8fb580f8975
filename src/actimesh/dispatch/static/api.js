/* The API client and who is logged in.
 *
 * POST /api/v1/session sets an HttpOnly session cookie the page never sees, and returns
 * a CSRF token the page keeps in memory (here) and sends with every change. When the
 * session ends (logout, timeout, a disabled user) the server answers 401, and the page
 * goes back to the login form: whoever shows it registers with onSessionEnd.
 */

export const session = { user: null, role: null, csrf: null };
export class AuthError extends Error {}

let sessionEnded = () => {};

// Called with a message for the login form when the session is over.
export function onSessionEnd(handler) {
  sessionEnded = handler;
}

export function endSession(message) {
  sessionEnded(message);
}

// fetch with the session cookie and, on changes, the CSRF token; a 401 means the
// session is over: back to the login form.
export async function api(path, options) {
  const opts = Object.assign({ method: 'GET' }, options || {});
  opts.credentials = 'same-origin';
  opts.headers = Object.assign({}, opts.headers || {});
  if (opts.method !== 'GET' && session.csrf) opts.headers['X-CSRF-Token'] = session.csrf;
  const res = await fetch(path, opts);
  if (res.status === 401) {
    endSession('Your session has ended; log in again.');
    throw new AuthError('not logged in');
  }
  return res;
}
