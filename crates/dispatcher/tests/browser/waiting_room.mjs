// Headless Chromium drives the waiting page of a running `dispatcher serve` (and looks at the dashboard).
//
// Run by crates/dispatcher/tests/cli/browser.rs, which starts the server, fills the line and completes the
// admitted tickets as this script reports positions. The script talks on stdout, one JSON object a line:
//   {"step":"joined","ticket":"…","position":N}     the page joined and shows its position
//   {"step":"reloaded","ticket":"…","position":N}   after a reload, with the same ticket
//   {"step":"position","position":N}                every later change of the shown position
//   {"step":"result","ok":true|false,…}             last line: what was observed (or the error)
//
// Environment: BASE_URL (http://127.0.0.1:port), EVENT, TARGET (a relative path, e.g. /landing),
// ADMIN_TOKEN, SCREENSHOT_DIR, CHROMIUM (default /usr/bin/chromium), TIMEOUT_MS (default 25000).

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (k, d) => {
  const v = process.env[k];
  if (v === undefined || v === "") {
    if (d === undefined) throw new Error(`environment variable ${k} is required`);
    return d;
  }
  return v;
};
const BASE = env("BASE_URL");
const EVENT = env("EVENT");
const TARGET = env("TARGET", "/landing");
const ADMIN_TOKEN = env("ADMIN_TOKEN");
const SHOTS = env("SCREENSHOT_DIR", "");
const CHROMIUM = env("CHROMIUM", "/usr/bin/chromium");
const TIMEOUT_MS = Number(env("TIMEOUT_MS", "25000"));

const say = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const started = Date.now();
const deadline = started + TIMEOUT_MS;
const left = () => Math.max(1, deadline - Date.now());

// What the page shows now; null while it navigates (the old document is gone).
async function snapshot(page) {
  try {
    return await page.evaluate((key) => ({
      phase: document.body.dataset.phase || null,
      state: document.body.dataset.state || null,
      position: document.body.dataset.position ? Number(document.body.dataset.position) : null,
      positionText: (document.getElementById("position") || {}).textContent || null,
      ahead: (document.getElementById("ahead") || {}).textContent || null,
      estimate: (document.getElementById("estimate") || {}).textContent || null,
      conn: document.body.dataset.conn || null,
      ticket: document.body.dataset.ticket || null,
      stored: (() => { try { return JSON.parse(localStorage.getItem(key) || "null"); } catch (_) { return null; } })(),
      error: document.body.dataset.error || null,
    }), "dispatcher:ticket:" + EVENT);
  } catch (_) {
    return null;
  }
}

async function waitFor(page, what, pred) {
  let last = null;
  while (Date.now() < deadline) {
    const s = await snapshot(page);
    if (s) last = s;
    if (s && s.error) throw new Error(`the page shows an error while waiting for ${what}: ${s.error}`);
    if (s && pred(s)) return s;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}; the page last showed ${JSON.stringify(last)}`);
}

async function main() {
  if (SHOTS) mkdirSync(SHOTS, { recursive: true });
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"],
    timeout: 15000,
  });
  const result = { step: "result", ok: false, positions: [], consoleErrors: [], screenshots: [] };
  try {
    // The operator's dashboard watches all along, so its charts have something to show at the end.
    const adminCtx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    const dash = await adminCtx.newPage();
    dash.on("pageerror", (e) => result.consoleErrors.push("dashboard: " + e.message));
    await dash.goto(BASE + "/dashboard", { timeout: left() });
    await dash.fill("#token", ADMIN_TOKEN);
    await dash.click("#login-form button[type=submit]");
    await dash.waitForSelector(`details.event[data-event="${EVENT}"]`, { timeout: left() });

    // A visitor on a phone-sized screen.
    const ctx = await browser.newContext({ viewport: { width: 430, height: 860 }, deviceScaleFactor: 1 });
    const page = await ctx.newPage();
    page.on("pageerror", (e) => result.consoleErrors.push("waiting page: " + e.message));
    page.on("console", (m) => { if (m.type() === "error" && !/404|Not Found/i.test(m.text())) result.consoleErrors.push("waiting page console: " + m.text()); });
    const url = `${BASE}/wait/${encodeURIComponent(EVENT)}?to=${encodeURIComponent(TARGET)}`;
    await page.goto(url, { timeout: left() });
    const first = await waitFor(page, "a position", (s) => s.phase === "waiting" && s.position !== null && s.conn === "live");
    if (!first.ticket || !first.stored || first.stored.ticket !== first.ticket) {
      throw new Error(`the ticket is not kept in localStorage: ${JSON.stringify(first)}`);
    }
    if (String(first.position) !== first.positionText.replace(/\D/g, "")) {
      throw new Error(`#position shows ${first.positionText}, data-position ${first.position}`);
    }
    result.positions.push(first.position);
    result.firstView = { ahead: first.ahead, estimate: first.estimate, conn: first.conn };
    say({ step: "joined", ticket: first.ticket, position: first.position });
    if (SHOTS) {
      const p = join(SHOTS, "waiting.png");
      await page.screenshot({ path: p, fullPage: true });
      result.screenshots.push(p);
    }

    // A reload keeps the place: the same ticket, no new join.
    await page.reload({ timeout: left() });
    const again = await waitFor(page, "the position after a reload", (s) => s.phase === "waiting" && s.position !== null && s.conn === "live");
    result.reloadSameTicket = again.ticket === first.ticket && again.stored && again.stored.ticket === first.ticket;
    if (!result.reloadSameTicket) {
      throw new Error(`a reload changed the ticket: before ${first.ticket}, after ${JSON.stringify(again)}`);
    }
    if (again.position !== first.position) result.positions.push(again.position);
    say({ step: "reloaded", ticket: again.ticket, position: again.position });
    result.ticket = again.ticket;

    // Watch the position fall until the page moves on to the target with the token.
    let lastPos = again.position;
    let landed = null;
    while (Date.now() < deadline) {
      const u = page.url();
      if (u.startsWith(BASE + TARGET)) { landed = u; break; }
      const s = await snapshot(page);
      if (s && s.error) throw new Error(`the page shows an error: ${s.error}`);
      if (s && s.phase === "waiting" && s.position !== null && s.position !== lastPos) {
        result.positions.push(s.position);
        lastPos = s.position;
        say({ step: "position", position: s.position });
      }
      if (s && s.phase === "admitted" && !result.admittedSeen) {
        result.admittedSeen = true;
        if (SHOTS) {
          const p = join(SHOTS, "admitted.png");
          await page.screenshot({ path: p, fullPage: true }).catch(() => {});
          result.screenshots.push(p);
        }
      }
      if (s && s.phase === "final") throw new Error(`the ticket ended before admission: ${JSON.stringify(s)}`);
      await sleep(40);
    }
    if (!landed) throw new Error(`the page was not sent on to ${TARGET} in time; positions seen ${JSON.stringify(result.positions)}`);
    const target = new URL(landed);
    const m = /^#token=([A-Za-z0-9_\-.%]+)$/.exec(target.hash);
    result.url = target.origin + target.pathname + (target.hash ? "#token=…" : "");
    result.path = target.pathname;
    result.token = m ? decodeURIComponent(m[1]) : null;
    if (target.pathname !== TARGET) throw new Error(`landed on ${target.pathname}, not ${TARGET}`);
    if (!result.token) throw new Error(`the target URL carries no #token=: ${landed.replace(/#.*/, "#…")}`);
    if (target.search) throw new Error("the token must travel in the fragment, not the query");
    for (let i = 1; i < result.positions.length; i++) {
      if (!(result.positions[i] < result.positions[i - 1])) {
        throw new Error(`positions did not strictly fall: ${JSON.stringify(result.positions)}`);
      }
    }

    // The same admitted visitor, sent by a link whose `to` names an origin the server does not allow: the
    // page must not follow it, offer it as a link, open the pass, or invite pasting the pass there.
    const FOREIGN = "https://evil.example/checkout";
    await page.goto(`${BASE}/wait/${encodeURIComponent(EVENT)}?to=${encodeURIComponent(FOREIGN)}`, { timeout: left() });
    await waitFor(page, "the admitted view for a foreign target", (s) => s.phase === "admitted");
    await sleep(1500);
    const foreign = await page.evaluate(() => ({
      msg: document.getElementById("admitted-msg").textContent,
      linkShown: !document.getElementById("continue-wrap").hidden,
      href: document.getElementById("continue").getAttribute("href"),
      passOpen: document.getElementById("token-box").open,
      marked: document.body.dataset.foreign || null,
    }));
    result.foreignTarget = { ...foreign, url: page.url().replace(/#.*/, "") };
    if (!page.url().startsWith(BASE)) throw new Error(`the page followed a foreign target: ${page.url().replace(/#.*/, "#…")}`);
    if (foreign.linkShown || (foreign.href || "").includes("evil.example")) throw new Error(`a foreign target is offered as a link: ${JSON.stringify(foreign)}`);
    if (foreign.passOpen) throw new Error("the entry pass is laid open for a foreign target");
    const invites = foreign.msg.replace(/do not give it your entry pass/gi, "");
    if (/give it your entry pass|if it asks for it|paste/i.test(invites) || !/do not give it your entry pass/i.test(foreign.msg)) {
      throw new Error(`the page must warn, never invite pasting the pass on evil.example: ${foreign.msg}`);
    }

    // The dashboard, logged in, after it has watched the whole run.
    await dash.waitForSelector(`details.event[data-event="${EVENT}"][open]`, { timeout: left() });
    const dashText = await dash.textContent(`details.event[data-event="${EVENT}"]`);
    result.dashboardShowsEvent = dashText.includes(EVENT) && /Admissions \/ s/.test(dashText);
    result.dashboardPaths = await dash.$$eval(`details.event[data-event="${EVENT}"] path.line`, (ps) => ps.length);
    if (SHOTS) {
      const p = join(SHOTS, "dashboard.png");
      await dash.screenshot({ path: p, fullPage: true });
      result.screenshots.push(p);
      const q = join(SHOTS, "dashboard-narrow.png");
      await dash.setViewportSize({ width: 420, height: 900 });
      await sleep(300);
      await dash.screenshot({ path: q, fullPage: true });
      result.screenshots.push(q);
    }
    if (result.consoleErrors.length) throw new Error(`script errors in the pages: ${result.consoleErrors.join("; ")}`);
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.stack ? e.stack : e);
  } finally {
    result.elapsedMs = Date.now() - started;
    await browser.close().catch(() => {});
  }
  say(result);
  process.exitCode = result.ok ? 0 : 1;
}

main().catch((e) => {
  say({ step: "result", ok: false, error: String(e && e.stack ? e.stack : e) });
  process.exitCode = 1;
});
