#!/usr/bin/env node
/**
 * Checks the demo chat in headless Chromium (Debian's /usr/bin/chromium, driven by
 * playwright-core): serves clients/js, opens two pages, each assigns through placement and
 * joins the room; the first publishes a message and the check waits until the second shows it.
 *
 *   node clients/js/tools/demo-check.mjs --placement http://127.0.0.1:7000 [--distinct-nodes]
 *     [--chromium /usr/bin/chromium] [--timeout-ms 20000] [--screenshot out.png]
 *
 * `--distinct-nodes` also requires the two pages to be on two different gateways (a chat across
 * gateways, which needs the relay). Prints one JSON line {"ok", "nodes", "error"?}; exits 0 when ok.
 */
import { chromium } from "playwright-core";
import { serve } from "./serve.mjs";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const placement = arg("--placement");
const executablePath = arg("--chromium", process.env.CHROMIUM ?? "/usr/bin/chromium");
const timeout = Number(arg("--timeout-ms", "20000"));
const screenshot = arg("--screenshot");
const distinct = process.argv.includes("--distinct-nodes");
if (!placement) {
  console.error("usage: demo-check.mjs --placement <placement http url>");
  process.exit(2);
}

const server = await serve();
const browser = await chromium.launch({ executablePath, headless: true, args: ["--no-sandbox"] });
let result;
try {
  const open = async (name) => {
    const page = await browser.newPage();
    page.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
    const q = new URLSearchParams({ placement, name, room: "lobby" });
    await page.goto(`${server.url}/demo/index.html?${q}`);
    await page.waitForSelector('#status[data-ready="true"]', { timeout });
    return page;
  };
  const alice = await open("alice");
  const bob = await open("bob");
  const nodes = await Promise.all([alice, bob].map((p) => p.getAttribute("#status", "data-node")));
  if (distinct && nodes[0] === nodes[1]) throw new Error(`both pages landed on ${nodes[0]}`);
  const text = `hello from alice ${Date.now()}`;
  await alice.fill("#text", text);
  await alice.click("#send");
  await bob.waitForFunction((t) => document.getElementById("log").textContent.includes(t), text, { timeout });
  await alice.waitForFunction((t) => document.getElementById("log").textContent.includes(t), text, { timeout });
  if (screenshot) await bob.screenshot({ path: screenshot });
  result = { ok: true, nodes };
} catch (e) {
  result = { ok: false, error: String(e?.message ?? e) };
} finally {
  await browser.close();
  await server.close();
}
console.log(JSON.stringify(result));
process.exit(result.ok ? 0 : 1);
