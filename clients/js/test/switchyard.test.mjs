// Unit tests of the pure parts of the client module; the behaviour against a real cluster is
// tested end to end by crates/gateway/tests/e2e_*.rs through tools/driver.mjs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { BACKOFF, backoffDelay, refusalReason } from "../src/switchyard.mjs";

test("backoff is full jitter under an exponential ceiling capped at 5 s", () => {
  for (let attempt = 0; attempt < 20; attempt++) {
    const ceiling = Math.min(BACKOFF.cap, BACKOFF.base * 2 ** attempt);
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(attempt);
      assert.ok(d >= 0 && d < ceiling, `attempt ${attempt}: ${d} not in [0, ${ceiling})`);
    }
  }
  assert.equal(BACKOFF.base, 100);
  assert.equal(BACKOFF.cap, 5000);
});

test("refusal reasons are read from the message or the data", () => {
  assert.equal(refusalReason(new Error("token_expired")), "token_expired");
  const withData = Object.assign(new Error("refused"), { data: { reason: "wrong_node" } });
  assert.equal(refusalReason(withData), "wrong_node");
  assert.equal(refusalReason(new Error("xhr poll error")), null);
  assert.equal(refusalReason(new Error("websocket error")), null);
});
