/**
 * Switchyard client: a small layer over the official `socket.io-client`.
 *
 * It asks placement for a gateway (`GET /v1/assign?namespace=`), connects straight to the
 * gateway it was given with `auth: { token }`, and whenever the connection is lost or refused
 * it asks placement again and reconnects, waiting a full-jitter exponential backoff between
 * attempts so the clients of a dead gateway do not come back in one wave. Rooms joined through
 * {@link SwitchyardClient#join} are joined again after every reconnect.
 *
 * Resume: room events arrive as `event(data, {room, epoch, offset})`; the client keeps the
 * latest `(epoch, offset)` ({@link SwitchyardClient#position}) and after every reconnect sends
 * `resume({epoch, offset, rooms})` instead of re-joining: the gateway replays what was missed,
 * in order, nothing twice. When it cannot (history window passed, history lost), `recovered`
 * is false and `onResync` / the `resync` event fire: fetch your state again (e.g. `join(room)`
 * returns the room's retained event).
 *
 * Works in Node (18+, global `fetch`) and in browsers (map `socket.io-client` to its ESM build
 * with an import map, as `demo/index.html` does).
 *
 * @module switchyard
 */
import { io as defaultIo } from "socket.io-client";

/**
 * Refusal reasons a gateway sends as the `connect_error` message (socketioxide puts the reason
 * in `err.message`; `err.data` is also read in case a server sends it there). Each one means
 * "ask placement again", after a backoff.
 */
export const REFUSAL_REASONS = Object.freeze([
  "bad_token",
  "token_expired",
  "token_reused",
  "wrong_node",
  "wrong_namespace",
  "draining",
  "over_capacity",
  "rate_limited",
]);

/** The event a gateway sends just before it disconnects a client to move it elsewhere. */
export const DRAIN_EVENT = "switchyard:drain";

/** Backoff defaults (milliseconds): full jitter, `base * 2^attempt` capped at `cap`. */
export const BACKOFF = Object.freeze({ base: 100, cap: 5000 });

/**
 * Full-jitter exponential backoff: a uniformly random delay in `[0, min(cap, base * 2^attempt))`.
 * @param {number} attempt failures since the last successful connection (0 for the first retry)
 * @param {{base?: number, cap?: number}} [policy]
 * @returns {number} delay in milliseconds
 */
export function backoffDelay(attempt, policy = BACKOFF) {
  const base = policy.base ?? BACKOFF.base;
  const cap = policy.cap ?? BACKOFF.cap;
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 30));
  return Math.random() * ceiling;
}

/**
 * The machine-readable refusal reason of a `connect_error`, if the gateway sent one.
 * Looks at `err.data.reason`, `err.data.code`, `err.data` (a string) and `err.message`.
 * @param {Error & {data?: any}} err
 * @returns {string | null} one of {@link REFUSAL_REASONS}, or null (a transport failure)
 */
export function refusalReason(err) {
  const candidates = [];
  const data = err?.data;
  if (data && typeof data === "object") candidates.push(data.reason, data.code, data.error);
  if (typeof data === "string") candidates.push(data);
  candidates.push(err?.message);
  for (const c of candidates) {
    if (typeof c !== "string") continue;
    const found = REFUSAL_REASONS.find((r) => c === r || c.includes(r));
    if (found) return found;
  }
  return null;
}

/**
 * Ask placement for a gateway.
 * @param {string} placementUrl placement's HTTP base URL, e.g. `http://127.0.0.1:7000`
 * @param {string} namespace Socket.IO namespace, e.g. `/`
 * @param {typeof fetch} [fetchImpl]
 * @returns {Promise<{url: string, node_id: string, token: string, expires_in_ms: number}>}
 * @throws {AssignError} on a non-200 answer (`status` and `body` tell why) or a network error
 */
export async function assign(placementUrl, namespace = "/", fetchImpl = globalThis.fetch) {
  const base = placementUrl.replace(/\/+$/, "");
  const res = await fetchImpl(`${base}/v1/assign?namespace=${encodeURIComponent(namespace)}`);
  const body = await res.json().catch(() => null);
  if (res.status !== 200 || !body || typeof body.url !== "string") {
    throw new AssignError(res.status, body);
  }
  return body;
}

/** Placement did not give a gateway (`status` 503 no_gateway_available, 429 rate_limited, ...). */
export class AssignError extends Error {
  /** @param {number} status @param {any} body */
  constructor(status, body) {
    super(`assign failed: HTTP ${status} ${body?.error ?? ""}`.trim());
    this.name = "AssignError";
    this.status = status;
    this.body = body;
  }
}

/** Tiny event emitter so the module has no dependency beyond socket.io-client. */
class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }
  /** @param {string} event @param {Function} fn @returns {this} */
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return this;
  }
  /** @param {string} event @param {Function} fn @returns {this} */
  off(event, fn) {
    this._handlers.get(event)?.delete(fn);
    return this;
  }
  /** @param {string} event @param {Function} fn @returns {this} */
  once(event, fn) {
    const wrapper = (...args) => {
      this.off(event, wrapper);
      fn(...args);
    };
    return this.on(event, wrapper);
  }
  /** @param {string} event @param {...any} args */
  _fire(event, ...args) {
    for (const fn of [...(this._handlers.get(event) ?? [])]) {
      try {
        fn(...args);
      } catch (e) {
        // A throwing user handler must not break the reconnect loop.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}

/**
 * Lifecycle events (besides every server event, passed through with its arguments, such as
 * {@link DRAIN_EVENT} `{reason, reassign}` just before a drain disconnects this client):
 * - `assigned` `{url, node_id, expires_in_ms}`: placement answered.
 * - `connect` `{nodeId, url}`: the first successful connection.
 * - `reconnected` `{nodeId, url, attempts}`: a later successful connection (rooms re-joined).
 * - `disconnect` `reason`: the connection ended; a re-assign follows unless `close()` was called.
 * - `connect_error` `{error, reason}`: an attempt failed; `reason` is a refusal reason or null.
 * - `rejoin_error` `{room, ack}`: a room could not be joined again after a reconnect.
 * - `resumed` `{recovered, replayed, epoch, offset}`: the answer to the automatic resume.
 * - `resync` `{rooms, ack}`: the resume could not recover; missed events are lost.
 */
export class SwitchyardClient extends Emitter {
  /**
   * @param {object} options see {@link connect}
   */
  constructor(options) {
    super();
    const {
      placementUrl,
      namespace = "/",
      transports,
      io,
      fetch,
      backoff,
      ackTimeoutMs,
      onResync,
      ...ioOpts
    } = options;
    if (!placementUrl) throw new TypeError("placementUrl is required");
    this.placementUrl = placementUrl;
    this.namespace = namespace;
    this.transports = transports;
    this._io = io ?? defaultIo;
    this._fetch = fetch ?? globalThis.fetch.bind(globalThis);
    this._backoff = { ...BACKOFF, ...(backoff ?? {}) };
    this._ackTimeoutMs = ackTimeoutMs ?? 10000;
    this._ioOpts = ioOpts;
    /** Called with `{rooms, ack}` when a resume could not recover. */
    this._onResync = onResync ?? null;
    /**
     * The namespace's latest position this client has seen: from room events and join/resume
     * acks. Null until the first one. @type {{epoch: string, offset: number} | null}
     */
    this.position = null;
    /** Outcome of the last automatic resume (null before any). @type {boolean | null} */
    this.recovered = null;
    /** Rooms joined successfully; joined again after every reconnect. @type {Set<string>} */
    this.rooms = new Set();
    /** The current socket.io-client Socket, or null between connections. */
    this.socket = null;
    /** Node id of the gateway we are (or were last) connected to. @type {string | null} */
    this.nodeId = null;
    /** Gateway URL of the current connection. @type {string | null} */
    this.url = null;
    this._closed = false;
    this._attempt = 0;
    this._connections = 0;
    this._timer = null;
    /** @type {Array<() => void>} */
    this._waiters = [];
    /** @type {Set<Function>} */
    this._any = new Set();
    this._run();
  }

  /** True while a socket is connected. */
  get connected() {
    return !!this.socket?.connected;
  }

  /** One attempt: assign, then connect; schedules the next attempt on failure. */
  async _run() {
    if (this._closed) return;
    let assignment;
    try {
      assignment = await assign(this.placementUrl, this.namespace, this._fetch);
    } catch (error) {
      this._fire("connect_error", { error, reason: null });
      return this._retry();
    }
    if (this._closed) return;
    this._fire("assigned", {
      url: assignment.url,
      node_id: assignment.node_id,
      expires_in_ms: assignment.expires_in_ms,
    });
    const ns = this.namespace === "/" ? "/" : `/${this.namespace.replace(/^\/+/, "")}`;
    const socket = this._io(assignment.url.replace(/\/+$/, "") + ns, {
      ...this._ioOpts,
      auth: { ...(this._ioOpts.auth ?? {}), token: assignment.token },
      transports: this.transports,
      reconnection: false,
      forceNew: true,
    });
    this.socket = socket;
    socket.onAny((event, ...args) => {
      const meta = args[args.length - 1];
      if (
        meta &&
        typeof meta === "object" &&
        typeof meta.room === "string" &&
        typeof meta.epoch === "string" &&
        typeof meta.offset === "number"
      ) {
        this._advance(meta.epoch, meta.offset);
      }
      for (const fn of [...this._any]) fn(event, ...args);
      this._fire(event, ...args);
    });
    socket.on("connect", () => this._onConnect(socket, assignment));
    socket.on("connect_error", (error) => {
      if (this.socket !== socket) return;
      this.socket = null;
      socket.close();
      this._fire("connect_error", { error, reason: refusalReason(error) });
      this._retry();
    });
    socket.on("disconnect", (reason) => {
      if (this.socket !== socket) return;
      this.socket = null;
      this._fire("disconnect", reason);
      // The first retry after losing a working connection waits at most `base` ms.
      this._retry();
    });
  }

  async _onConnect(socket, assignment) {
    const first = this._connections === 0;
    this._connections += 1;
    const attempts = this._attempt;
    this._attempt = 0;
    this.nodeId = assignment.node_id;
    this.url = assignment.url;
    if (this.position && this.rooms.size > 0) {
      const rooms = [...this.rooms];
      const ack = await this._ack(socket, "resume", {
        epoch: this.position.epoch,
        offset: this.position.offset,
        rooms,
      }).catch((e) => ({ ok: false, error: String(e) }));
      if (this.socket !== socket) return;
      if (ack?.ok === false) {
        // Not even joined (refused or relay unreachable): drop this connection and retry.
        this._fire("rejoin_error", { room: null, ack });
        socket.disconnect();
        return;
      }
      this.recovered = !!ack?.recovered;
      this._advance(ack?.epoch, ack?.offset);
      this._fire("resumed", {
        recovered: this.recovered,
        replayed: ack?.replayed ?? 0,
        epoch: ack?.epoch ?? null,
        offset: ack?.offset ?? null,
      });
      if (!this.recovered) {
        this._fire("resync", { rooms, ack });
        if (this._onResync) {
          try {
            this._onResync({ rooms, ack });
          } catch (e) {
            queueMicrotask(() => {
              throw e;
            });
          }
        }
      }
    }
    for (const room of this.position ? [] : [...this.rooms]) {
      const ack = await this._ack(socket, "join", room).catch((e) => ({ ok: false, error: String(e) }));
      // Lost this connection meanwhile: keep the rooms for the next one.
      if (this.socket !== socket) return;
      if (!ack?.ok) {
        this.rooms.delete(room);
        this._fire("rejoin_error", { room, ack });
      } else {
        this._advance(ack.epoch, ack.offset);
      }
    }
    if (this.socket !== socket || !socket.connected) return;
    const info = { nodeId: this.nodeId, url: this.url };
    this._fire(first ? "connect" : "reconnected", first ? info : { ...info, attempts });
    const waiters = this._waiters;
    this._waiters = [];
    for (const w of waiters) w();
  }

  /** Moves {@link position} forward (a new epoch replaces it; offsets never go back). */
  _advance(epoch, offset) {
    if (typeof epoch !== "string" || typeof offset !== "number") return;
    if (!this.position || this.position.epoch !== epoch) this.position = { epoch, offset };
    else if (offset > this.position.offset) this.position.offset = offset;
  }

  _retry() {
    if (this._closed || this._timer) return;
    const delay = backoffDelay(this._attempt, this._backoff);
    this._attempt += 1;
    this._timer = setTimeout(() => {
      this._timer = null;
      this._run();
    }, delay);
  }

  _ack(socket, event, ...args) {
    return socket.timeout(this._ackTimeoutMs).emitWithAck(event, ...args);
  }

  /**
   * Listen to every server event (not the lifecycle events), like socket.io-client's `onAny`.
   * @param {(event: string, ...args: any[]) => void} fn
   * @returns {this}
   */
  onAny(fn) {
    this._any.add(fn);
    return this;
  }

  /** Resolves with the connected socket (now, or after the next successful connection). */
  ready() {
    if (this._closed) return Promise.reject(new Error("client closed"));
    if (this.socket?.connected && this.nodeId) return Promise.resolve(this.socket);
    return new Promise((resolve) => this._waiters.push(() => resolve(this.socket)));
  }

  /**
   * Emit an event to the gateway (pass-through). Waits for a connection if there is none.
   * @param {string} event @param {...any} args (a trailing function is an ack callback)
   */
  emit(event, ...args) {
    this.ready().then((socket) => socket.emit(event, ...args), () => {});
    return this;
  }

  /**
   * Emit and wait for the ack (rejects after `ackTimeoutMs`).
   * @param {string} event @param {...any} args
   * @returns {Promise<any>}
   */
  async emitWithAck(event, ...args) {
    const socket = await this.ready();
    return this._ack(socket, event, ...args);
  }

  /**
   * Join a room; it is joined again after every reconnect while the gateway accepts it.
   * @param {string} room
   * @returns {Promise<{ok: boolean, error?: string, epoch?: any, offset?: any, retained?: any}>}
   */
  async join(room) {
    const ack = await this.emitWithAck("join", room);
    if (ack?.ok) {
      this.rooms.add(room);
      this._advance(ack.epoch, ack.offset);
    }
    return ack;
  }

  /**
   * Leave a room (and stop re-joining it).
   * @param {string} room
   * @returns {Promise<{ok: boolean, error?: string}>}
   */
  async leave(room) {
    this.rooms.delete(room);
    return this.emitWithAck("leave", room);
  }

  /**
   * Publish `event(data, {room, ...})` to every member of `room` (on every gateway).
   * @param {string} room @param {string} event @param {any} data
   * @param {{retain?: boolean}} [options]
   * @returns {Promise<{ok: boolean, error?: string, offset?: any}>}
   */
  publish(room, event, data, options = {}) {
    const msg = { room, event, data };
    if (options.retain !== undefined) msg.retain = options.retain;
    return this.emitWithAck("publish", msg);
  }

  /** Close for good: no reconnect after this. */
  close() {
    this._closed = true;
    if (this._timer) clearTimeout(this._timer);
    this._timer = null;
    const socket = this.socket;
    this.socket = null;
    socket?.close();
    for (const w of this._waiters) w();
    this._waiters = [];
  }
}

/**
 * Assign through placement and connect; keeps reconnecting until `close()`.
 * @param {object} options
 * @param {string} options.placementUrl placement's HTTP base URL
 * @param {string} [options.namespace="/"] Socket.IO namespace
 * @param {string[]} [options.transports] e.g. `["websocket"]` or `["polling"]` (default both)
 * @param {Function} [options.io] an `io` function to use instead of socket.io-client's
 * @param {typeof fetch} [options.fetch] a fetch to use for `/v1/assign`
 * @param {{base?: number, cap?: number}} [options.backoff] backoff policy in ms
 * @param {number} [options.ackTimeoutMs=10000] how long join/leave/publish wait for an ack
 * @param {(info: {rooms: string[], ack: any}) => void} [options.onResync] called when a resume
 *   after a reconnect could not recover (missed events are lost: fetch the state again)
 * @returns {SwitchyardClient} any other option goes to socket.io-client's `io()`
 */
export function connect(options) {
  return new SwitchyardClient(options);
}
