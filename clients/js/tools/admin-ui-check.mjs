#!/usr/bin/env node
/**
 * Drives the official Socket.IO admin dashboard (@socket.io/admin-ui's static build, served
 * unchanged from clients/socketio-tools) in headless Chromium (Debian's /usr/bin/chromium,
 * driven by playwright-core) against a Switchyard cluster: logs in through the dashboard's own
 * connection form, waits until the Servers page lists every expected gateway and the Sockets
 * page lists every expected socket, clicks "disconnect" on one socket and waits until the page
 * no longer lists it.
 *
 *   node clients/js/tools/admin-ui-check.mjs --server http://127.0.0.1:4000 \
 *     --username admin --password PW --servers gw-0,gw-1,gw-2 --sockets SID1,SID2,... \
 *     --disconnect SID2 [--screenshot out.png] [--chromium /usr/bin/chromium] [--timeout-ms 30000]
 *
 * The dashboard asks the internet for fonts and icons; those requests are refused here (the
 * page works without them). Prints one JSON line {"ok", "error"?}; exits 0 when ok.
 */
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { serve } from "./serve.mjs";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const list = (name) => (arg(name, "") || "").split(",").filter(Boolean);
const serverUrl = arg("--server");
const username = arg("--username", "admin");
const password = arg("--password", "");
const servers = list("--servers");
const sockets = list("--sockets");
const victim = arg("--disconnect");
const screenshot = arg("--screenshot");
const executablePath = arg("--chromium", process.env.CHROMIUM ?? "/usr/bin/chromium");
const timeout = Number(arg("--timeout-ms", "30000"));

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "../../socketio-tools/node_modules/@socket.io/admin-ui/ui/dist");
const ui = await serve({ root });
const browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox"] });
let result;
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on("pageerror", (e) => console.error(`page error: ${e.message}`));
  const local = (u) => /^(https?|wss?):\/\/(127\.0\.0\.1|localhost)(:|\/)/.test(u) || u.startsWith("data:");
  await page.route("**/*", (route) => (local(route.request().url()) ? route.continue() : route.abort()));
  await page.goto(`${ui.url}/`);

  // The dashboard's own connection form.
  await page.getByLabel("Server URL").fill(serverUrl, { timeout });
  await page.getByLabel("Username").fill(username);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Connect" }).click();
  await page.getByRole("dialog").waitFor({ state: "hidden", timeout });

  const text = () => page.evaluate(() => document.body.innerText);
  // Page transitions fade in: let them finish before a screenshot.
  const shoot = async (path) => {
    await page.waitForTimeout(1000);
    await page.screenshot({ path });
  };
  const waitText = async (what, pred) => {
    const deadline = Date.now() + timeout;
    for (;;) {
      const t = await text();
      if (pred(t)) return t;
      if (Date.now() > deadline) throw new Error(`${what}: not within ${timeout} ms; page says:\n${t}`);
      await page.waitForTimeout(200);
    }
  };

  await page.goto(`${ui.url}/#/servers/`);
  await waitText(`servers ${servers}`, (t) => servers.every((s) => t.includes(s)));

  await page.goto(`${ui.url}/#/sockets/`);
  await waitText(`sockets ${sockets}`, (t) => sockets.every((s) => t.includes(s)));
  if (screenshot) await shoot(screenshot.replace(/\.png$/, "-sockets.png"));

  if (victim) {
    const row = page.locator("tbody tr", { hasText: victim });
    await row.locator("button").first().click();
    await page.goto(`${ui.url}/#/sockets/`);
    await waitText(`socket ${victim} gone`, (t) => !t.includes(victim) && sockets.filter((s) => s !== victim).every((s) => t.includes(s)));
  }
  if (screenshot) await shoot(screenshot);
  await page.goto(`${ui.url}/#/servers/`);
  await waitText(`servers ${servers}`, (t) => servers.every((s) => t.includes(s)));
  if (screenshot) await shoot(screenshot.replace(/\.png$/, "-servers.png"));
  result = { ok: true };
} catch (e) {
  result = { ok: false, error: String(e?.message ?? e) };
} finally {
  await browser.close();
  await ui.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
