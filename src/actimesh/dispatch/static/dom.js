/* Small DOM helpers shared by every part of the page.
 * Nothing here sets inline styles: the page's Content-Security-Policy forbids them.
 */

export const $ = (id) => document.getElementById(id);

export function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text != null) node.textContent = text;
  return node;
}
