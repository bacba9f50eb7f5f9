// wsapp.js: the browser (and Node) client of the room protocol, docs/protocol.md "Browser client".
// One ES module, no dependencies. It joins a room, resumes with ?since=<last seq> after every
// reconnect, drops frames it has already seen, and resends its own messages that a reconnect may
// have cut off, so that an application sees each room message once and in order.
//
//   import { RoomClient } from "/static/wsapp.js";
//   const client = new RoomClient({ room: "lobby" });
//   client.addEventListener("message", (e) => show(e.detail));   // {seq, body, session, ts, ...}
//   client.connect();
//   client.send("hello");
//
// Events (CustomEvent, the frame or a small object in `detail`): open, message, reconnecting,
// resync, error, close.

export const CLOSE_NORMAL = 1000;
export const CLOSE_ABNORMAL = 1006;
export const CLOSE_POLICY_VIOLATION = 1008;
export const CLOSE_SERVICE_RESTART = 1012;
export const RELEASE_JITTER_MS = 250; // when a reconnect notice gives no retry_ms
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 15000;
export const HEARTBEAT_MS = 10000;

const ROOM_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
// Closes after which reconnecting would only repeat the problem: the server said no.
const FINAL_CLOSES = new Set([CLOSE_NORMAL, CLOSE_POLICY_VIOLATION]);
const CONNECTING = 0;
const OPEN = 1;

function defaultBase() {
  if (typeof location === "undefined") {
    throw new Error("RoomClient: pass `base` (e.g. ws://127.0.0.1:8000) outside a browser");
  }
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
}

export class RoomClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.room          room name, [A-Za-z0-9_-]{1,64}
   * @param {string} [options.base]        ws:// or wss:// origin; default: the page's own host
   * @param {number} [options.since]       resume after this seq (default: start live)
   * @param {Function} [options.WebSocket] WebSocket constructor (default: globalThis.WebSocket)
   * @param {Function} [options.random]    returns [0, 1); injectable for tests
   * @param {number} [options.baseDelayMs] backoff base (500)
   * @param {number} [options.maxDelayMs]  backoff cap (15000)
   * @param {number} [options.heartbeatMs] ping this often; a connection silent for two of these
   *                                       periods (or a handshake that long) counts as lost (10000)
   */
  constructor(options) {
    super();
    const { room, base, since = null, random = Math.random } = options || {};
    if (typeof room !== "string" || !ROOM_PATTERN.test(room)) {
      throw new TypeError(`RoomClient: room must match ${ROOM_PATTERN}, got ${JSON.stringify(room)}`);
    }
    if (since !== null && !(Number.isSafeInteger(since) && since >= 0)) {
      throw new TypeError(`RoomClient: since must be a non-negative integer, got ${since}`);
    }
    this.room = room;
    this.url = `${base || defaultBase()}/ws/rooms/${room}/`;
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.random = random;
    this.baseDelayMs = options.baseDelayMs ?? BACKOFF_BASE_MS;
    this.maxDelayMs = options.maxDelayMs ?? BACKOFF_CAP_MS;
    this.heartbeatMs = options.heartbeatMs ?? HEARTBEAT_MS;
    this.heard = false; // a frame arrived since the last heartbeat
    this.heartbeat = null;
    this.lastSeq = since; // the highest seq handed to the application; null until the first welcome
    this.welcome = null; // the current connection's welcome frame
    this.state = "idle"; // idle, connecting, open, waiting (to reconnect), closed
    this.attempt = 0; // failed connections since the last welcome
    this.ws = null;
    this.timer = null;
    this.notice = null; // the reconnect frame of a draining server, until its close
    this.pending = []; // {body, session}: sent, not yet seen back from the room
    this.queued = []; // bodies given to send() while not connected
  }

  /** Open the connection (again, after close()). */
  connect() {
    if (this.state === "connecting" || this.state === "open") return this;
    clearTimeout(this.timer);
    this.timer = null;
    this.state = "connecting";
    const url = this.lastSeq === null ? this.url : `${this.url}?since=${this.lastSeq}`;
    let ws;
    try {
      ws = new this.WebSocket(url);
    } catch (err) {
      this.stop({ code: 0, reason: String(err) });
      this.emit("error", { error: "connect_failed", detail: String(err) });
      return this;
    }
    this.ws = ws;
    this.heard = true;
    this.heartbeat = setInterval(() => this.beat(), this.heartbeatMs);
    ws.onmessage = (event) => {
      if (this.ws === ws) {
        this.heard = true;
        this.receive(event.data);
      }
    };
    ws.onclose = (event) => {
      if (this.ws === ws) this.closed(event.code, event.reason);
    };
    // A connection that fails before opening is reported as error, then close 1006, by browsers;
    // Node 20's WebSocket reports only the error for a refused connection. Treat it as that close.
    ws.onerror = () => {
      if (this.ws === ws && ws.readyState === CONNECTING) {
        this.closed(CLOSE_ABNORMAL, "connection failed");
        ws.close();
      }
    };
    return this;
  }

  /** Send a chat message. While reconnecting it waits and goes out after the next welcome. */
  send(body) {
    if (typeof body !== "string") throw new TypeError("RoomClient.send: body must be a string");
    if (this.state === "closed" || this.state === "idle") return false;
    this.queued.push(body); // behind anything a reconnect still has to resend: order is kept
    this.settle();
    return true;
  }

  /** Leave the room for good (no reconnect). */
  close() {
    const ws = this.ws;
    this.stop({ code: CLOSE_NORMAL, reason: "closed by the application" });
    if (ws) ws.close(CLOSE_NORMAL);
  }

  // --- internals ---

  /**
   * A server that vanished without closing (its machine or network gone) sends nothing more, and a
   * browser may not notice for minutes: ping, and give the connection up when nothing came back.
   */
  beat() {
    const ws = this.ws;
    if (!this.heard) {
      this.closed(CLOSE_ABNORMAL, "no answer from the server");
      ws.onmessage = ws.onclose = ws.onerror = null;
      ws.close();
      return;
    }
    this.heard = false;
    if (ws.readyState === OPEN) ws.send('{"type":"ping"}');
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  transmit(body) {
    this.ws.send(JSON.stringify({ type: "message", body }));
    this.pending.push({ body, session: this.welcome.session });
  }

  receive(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      this.emit("error", { error: "invalid_frame", detail: "the server sent a frame that is not JSON" });
      return;
    }
    switch (frame.type) {
      case "welcome":
        return this.welcomed(frame);
      case "message":
        return this.message(frame);
      case "resync":
        // The server cannot replay everything after our seq; it replays from `from`.
        this.lastSeq = frame.from - 1;
        this.emit("resync", frame);
        return this.settle();
      case "reconnect":
        this.notice = frame; // the close (1012) follows; until then, sends wait
        return;
      case "error":
        return this.emit("error", frame);
      case "pong":
        return;
      default:
        this.emit("error", { error: "unknown_frame", detail: `unknown frame type ${frame.type}` });
    }
  }

  welcomed(frame) {
    const resumed = this.welcome !== null;
    this.welcome = frame;
    this.state = "open";
    this.attempt = 0;
    this.notice = null;
    if (this.lastSeq === null && Number.isSafeInteger(frame.seq)) this.lastSeq = frame.seq;
    this.emit("open", { ...frame, resumed });
    this.settle();
  }

  message(frame) {
    if (this.lastSeq !== null && frame.seq <= this.lastSeq) return; // seen already (replay seam)
    this.lastSeq = frame.seq;
    const mine = this.pending.findIndex((p) => p.session === frame.session && p.body === frame.body);
    if (mine !== -1) this.pending.splice(mine, 1);
    this.emit("message", frame);
    this.settle();
  }

  /**
   * Once the replay has caught up with the room (lastSeq >= welcome.seq), every message an earlier
   * connection published has been seen: what is still pending from it never reached the room.
   * Send those again, then what was queued while away.
   */
  settle() {
    if (this.state !== "open" || this.notice !== null || this.ws.readyState !== OPEN) return;
    const caughtUp = !Number.isSafeInteger(this.welcome.seq) || this.lastSeq >= this.welcome.seq;
    if (!caughtUp) return;
    const session = this.welcome.session;
    const lost = this.pending.filter((p) => p.session !== session);
    if (lost.length === 0 && this.queued.length === 0) return;
    this.pending = this.pending.filter((p) => p.session === session);
    const bodies = [...lost.map((p) => p.body), ...this.queued];
    this.queued = [];
    for (const body of bodies) this.transmit(body);
  }

  closed(code, reason) {
    clearInterval(this.heartbeat);
    this.heartbeat = null;
    this.ws = null;
    const notice = this.notice;
    this.notice = null;
    if (this.state === "closed") return;
    if (FINAL_CLOSES.has(code)) {
      this.stop({ code, reason });
      return;
    }
    let delay;
    if (code === CLOSE_SERVICE_RESTART) {
      // A release: the server spreads its clients over the drain window already; come back at once.
      delay = this.random() * (notice?.retry_ms ?? RELEASE_JITTER_MS);
    } else {
      // Anything else abnormal (1006, 1011, 1013, a refused handshake): full-jitter backoff.
      delay = this.random() * Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** this.attempt);
      this.attempt += 1;
    }
    this.state = "waiting";
    this.emit("reconnecting", { code, reason, delay, attempt: this.attempt, release: code === CLOSE_SERVICE_RESTART });
    this.timer = setTimeout(() => {
      this.timer = null;
      this.state = "idle";
      this.connect();
    }, delay);
  }

  stop({ code, reason }) {
    clearTimeout(this.timer);
    clearInterval(this.heartbeat);
    this.timer = this.heartbeat = null;
    this.ws = null;
    if (this.state === "closed") return;
    this.state = "closed";
    this.emit("close", { code, reason, unsent: this.pending.length + this.queued.length });
  }
}
