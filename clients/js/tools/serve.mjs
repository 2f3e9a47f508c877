#!/usr/bin/env node
/**
 * A tiny static file server for `clients/js/` (the demo page, the module and the ESM build of
 * socket.io-client under node_modules). Used by `demo-check.mjs` and usable by `cargo xtask up`:
 *
 *   node clients/js/tools/serve.mjs [--host 127.0.0.1] [--port 0]
 *
 * prints `SWITCHYARD_READY http=127.0.0.1:NNNN` once listening; the demo is at
 * `/demo/index.html?placement=<placement http url>`. Only files under clients/js are served.
 */
import { createServer } from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize, resolve, sep } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = resolve(fileURLToPath(new URL("..", import.meta.url)));
const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".map": "application/json",
  ".json": "application/json",
  ".css": "text/css",
  ".svg": "image/svg+xml",
  ".png": "image/png",
};

/**
 * Serve `root` over HTTP.
 * @param {{host?: string, port?: number, root?: string}} [options]
 * @returns {Promise<{url: string, close: () => Promise<void>}>}
 */
export function serve({ host = "127.0.0.1", port = 0, root = ROOT } = {}) {
  const server = createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname);
    const file = normalize(join(root, path.endsWith("/") ? `${path}index.html` : path));
    if (file !== root && !file.startsWith(root + sep)) {
      res.writeHead(403).end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  return new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(port, host, () => {
      const addr = server.address();
      ok({
        url: `http://${host}:${addr.port}`,
        close: () => new Promise((done) => server.close(() => done())),
      });
    });
  });
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const arg = (name, dflt) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : dflt;
  };
  const { url } = await serve({ host: arg("--host", "127.0.0.1"), port: Number(arg("--port", "0")) });
  console.log(`SWITCHYARD_READY http=${url.replace(/^http:\/\//, "")}`);
}
