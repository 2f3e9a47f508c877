#!/usr/bin/env node
/**
 * Serves the official admin dashboard (the static build in @socket.io/admin-ui, `ui/dist`),
 * unchanged, with clients/js's tiny static server. Used by `cargo xtask up` and the browser
 * test:
 *
 *   node clients/socketio-tools/serve-admin-ui.mjs [--host 127.0.0.1] [--port 0]
 *
 * prints `SWITCHYARD_READY http=127.0.0.1:NNNN`. In the page, the server URL is any gateway's
 * (`http://127.0.0.1:4000`), with the username and password `cargo xtask up` printed.
 */
import { dirname, join } from "node:path";
import { createRequire } from "node:module";
import { serve } from "../js/tools/serve.mjs";

const require = createRequire(import.meta.url);
const root = join(dirname(require.resolve("@socket.io/admin-ui/package.json")), "ui", "dist");
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const { url } = await serve({ host: arg("--host", "127.0.0.1"), port: Number(arg("--port", "0")), root });
console.log(`SWITCHYARD_READY http=${url.replace(/^http:\/\//, "")}`);
