/* The audible alert: two short tones made with Web Audio (no sound file, nothing
 * fetched), once per new alert nobody acknowledged yet. The header's bell mutes it; the
 * choice is kept in this browser (localStorage). Browsers only let a page play sound
 * after a user gesture: the login click is one.
 */
import { $ } from './dom.js';

const KEY = 'actimesh.muted';
let ctx = null;
let muted = localStorage.getItem(KEY) === '1';

// For the browser test: tones played, and tones skipped because muted.
window.actimesh.beeps = 0;
window.actimesh.mutedBeeps = 0;

function audio() {
  if (!ctx) {
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx) return null;
    ctx = new Ctx();
  }
  if (ctx.state === 'suspended') ctx.resume();
  return ctx;
}

function tone(ac, freq, at, length) {
  const osc = ac.createOscillator();
  const gain = ac.createGain();
  osc.type = 'square';
  osc.frequency.value = freq;
  gain.gain.setValueAtTime(0.0001, at);
  gain.gain.exponentialRampToValueAtTime(0.18, at + 0.02);
  gain.gain.exponentialRampToValueAtTime(0.0001, at + length);
  osc.connect(gain).connect(ac.destination);
  osc.start(at);
  osc.stop(at + length + 0.02);
}

export function beep() {
  if (muted) { window.actimesh.mutedBeeps++; return; }
  window.actimesh.beeps++;
  const ac = audio();
  if (!ac) return;
  const t = ac.currentTime + 0.01;
  tone(ac, 880, t, 0.18);
  tone(ac, 660, t + 0.22, 0.25);
}

function renderMute() {
  const btn = $('mute-btn');
  btn.textContent = muted ? 'Sound: muted' : 'Sound: on';
  btn.setAttribute('aria-pressed', muted ? 'true' : 'false');
  btn.classList.toggle('muted', muted);
}

export function setMuted(on) {
  muted = on;
  localStorage.setItem(KEY, on ? '1' : '0');
  renderMute();
}

export function initSound() {
  renderMute();
  $('mute-btn').addEventListener('click', () => { audio(); setMuted(!muted); });
  // The first gesture on the page unlocks audio for later alerts.
  document.addEventListener('pointerdown', () => audio(), { once: true });
}
