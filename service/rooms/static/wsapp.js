// wsapp.js: the browser (and Node) client of the room protocol, docs/protocol.md "Browser client".
// One ES module, no dependencies. It joins a room, resumes with ?since=<last seq>&epoch=<epoch>
// after every reconnect (and whenever the stream has a gap), drops frames it has already seen, and
// resends its own messages that a reconnect may have cut off, so that an application sees each room
// message once and in order. It sends within the server's rate limit, keeps a bounded outbox, and
// reports the fate of every message it sends: exactly one final `status` (published or failed).
//
//   import { RoomClient } from "/static/wsapp.js";
//   const client = new RoomClient({ room: "lobby" });
//   client.addEventListener("message", (e) => show(e.detail));   // {seq, epoch, body, session, id, ts}
//   client.addEventListener("status", (e) => mark(e.detail));    // {id, state: sent|published|failed}
//   client.connect();
//   const id = client.send("hello");
//
// Events (CustomEvent, the frame or a small object in `detail`): open, message, status, dropped,
// reconnecting, resync, error, close, ticket, and presence, join, leave (who is in the room:
// `client.members`, a Map of user id to {id, name}, and `client.anonymous`, a count).
//
// With a connection ticket (a server with a database: GET /ticket/), pass `ticket` and `ticketExpires`:
// the client sends it on every handshake, renews it over the socket at half its life (`renew`) and
// uses the newest one on the next reconnect.

export const CLOSE_NORMAL = 1000;
export const CLOSE_ABNORMAL = 1006;
export const CLOSE_POLICY_VIOLATION = 1008;
export const CLOSE_SERVICE_RESTART = 1012;
// Not a server's code: this client closed the connection itself to resume after a gap in the stream.
export const CLOSE_RESUME = 4000;
export const RELEASE_JITTER_MS = 250; // when a reconnect notice gives no retry_ms
export const BACKOFF_BASE_MS = 500;
export const BACKOFF_CAP_MS = 15000;
export const HEARTBEAT_MS = 10000;
// The server allows 20 frames/s with a burst of 40 per connection (docs/protocol.md, "Rate
// limiting"); the client keeps below it, so that network jitter bunching its frames stays allowed.
export const RATE_PER_SECOND = 15;
export const RATE_BURST = 30;
export const MAX_QUEUED = 1000; // messages sent or waiting, not yet published or refused
export const RESTART_LIMIT = 3; // this many 1012s in a row with no progress: back off
export const REMEMBER_IDS = 5000; // delivered messages remembered, to drop a replay's copies

const ROOM_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const EPOCH_PATTERN = /^[A-Za-z0-9]{1,40}$/;
const SENDER_PATTERN = /^[A-Za-z0-9_-]{16,64}$/;
const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const ID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
// Closes after which reconnecting would only repeat the problem: the server said no.
const FINAL_CLOSES = new Set([CLOSE_NORMAL, CLOSE_POLICY_VIOLATION]);
// Closes after which the client comes back at once (no backoff), unless they repeat without progress.
const RESTART_CLOSES = new Set([CLOSE_SERVICE_RESTART, CLOSE_RESUME]);
const CONNECTING = 0;
const OPEN = 1;

function randomToken(length) {
  const bytes = new Uint8Array(length);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i += 1) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => ID_ALPHABET[b & 63]).join("");
}

/** A message id: 16 random characters of [A-Za-z0-9_-] (96 bits), unique enough per sender. */
export function messageId() {
  return randomToken(16);
}

/** A sender token: 22 random characters of [A-Za-z0-9_-] (132 bits); the server scopes ids to it. */
export function senderToken() {
  return randomToken(22);
}

function defaultBase() {
  if (typeof location === "undefined") {
    throw new Error("RoomClient: pass `base` (e.g. ws://127.0.0.1:8000) outside a browser");
  }
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
}

const epochOf = (frame) => (typeof frame.epoch === "string" ? frame.epoch : null);

/**
 * The server's rate limit, mirrored: `rate` tokens a second up to `burst`, one per frame. take()
 * spends one and returns 0, or returns the milliseconds until one is there. take(true) spends one
 * even into debt (a ping must go out; the client's margin below the server's limit covers it).
 */
export class TokenBucket {
  constructor(rate, burst, now = () => performance.now()) {
    if (!(rate > 0 && burst >= 1)) throw new TypeError(`TokenBucket: need rate > 0 and burst >= 1, got ${rate}, ${burst}`);
    this.rate = rate;
    this.burst = burst;
    this.now = now;
    this.fill();
  }

  /** Full: a new connection has a full bucket on the server. */
  fill() {
    this.tokens = this.burst;
    this.at = this.now();
  }

  take(force = false) {
    const now = this.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.at) / 1000) * this.rate);
    this.at = now;
    if (this.tokens >= 1 || force) {
      this.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - this.tokens) / this.rate) * 1000);
  }
}

export class RoomClient extends EventTarget {
  /**
   * @param {object} options
   * @param {string} options.room            room name, [A-Za-z0-9_-]{1,64}
   * @param {string} [options.base]          ws:// or wss:// origin; default: the page's own host
   * @param {number} [options.since]         resume after this seq (default: start live)
   * @param {string} [options.epoch]         the epoch of `since` (default: none, the server compares seqs)
   * @param {string} [options.sender]        this client's sender token (default: a random one)
   * @param {Function} [options.WebSocket]   WebSocket constructor (default: globalThis.WebSocket)
   * @param {Function} [options.random]      returns [0, 1); injectable for tests
   * @param {number} [options.baseDelayMs]   backoff base (500)
   * @param {number} [options.maxDelayMs]    backoff cap (15000)
   * @param {number} [options.heartbeatMs]   ping this often; a connection silent for two of these
   *                                         periods (or a handshake that long) counts as lost (10000)
   * @param {number} [options.ratePerSecond] frames a second the client sends at most, pings included (15)
   * @param {number} [options.burst]         frames it may send at once (30)
   * @param {number} [options.maxQueued]     messages sent or waiting, not yet settled, at most (1000)
   * @param {number} [options.restartLimit]  the Nth 1012 in a row without progress backs off (3)
   * @param {number} [options.rememberIds]   delivered messages remembered by id (5000)
   * @param {string} [options.ticket]        connection ticket (docs/protocol.md "Connection tickets")
   * @param {number} [options.ticketExpires] its expiry, Unix seconds (renewed at half its remaining life)
   * @param {boolean} [options.presence]     ask for the member list and its join/leave frames (true)
   */
  constructor(options) {
    super();
    const { room, base, since = null, epoch = null, sender = senderToken(), random = Math.random } = options || {};
    if (typeof room !== "string" || !ROOM_PATTERN.test(room)) {
      throw new TypeError(`RoomClient: room must match ${ROOM_PATTERN}, got ${JSON.stringify(room)}`);
    }
    if (since !== null && !(Number.isSafeInteger(since) && since >= 0)) {
      throw new TypeError(`RoomClient: since must be a non-negative integer, got ${since}`);
    }
    if (epoch !== null && !(typeof epoch === "string" && EPOCH_PATTERN.test(epoch) && since !== null)) {
      throw new TypeError(`RoomClient: epoch must match ${EPOCH_PATTERN} and come with since, got ${JSON.stringify(epoch)}`);
    }
    if (typeof sender !== "string" || !SENDER_PATTERN.test(sender)) {
      throw new TypeError(`RoomClient: sender must match ${SENDER_PATTERN}`);
    }
    this.room = room;
    this.url = `${base || defaultBase()}/ws/rooms/${room}/`;
    this.sender = sender; // sent on every connection, never shown to others
    this.WebSocket = options.WebSocket || globalThis.WebSocket;
    this.random = random;
    this.baseDelayMs = options.baseDelayMs ?? BACKOFF_BASE_MS;
    this.maxDelayMs = options.maxDelayMs ?? BACKOFF_CAP_MS;
    this.heartbeatMs = options.heartbeatMs ?? HEARTBEAT_MS;
    this.bucket = new TokenBucket(options.ratePerSecond ?? RATE_PER_SECOND, options.burst ?? RATE_BURST);
    this.maxQueued = options.maxQueued ?? MAX_QUEUED;
    this.restartLimit = options.restartLimit ?? RESTART_LIMIT;
    this.rememberIds = options.rememberIds ?? REMEMBER_IDS;
    this.heard = false; // a frame arrived since the last heartbeat
    this.heartbeat = null;
    this.ticket = options.ticket ?? null; // the newest connection ticket, sent on every handshake
    this.ticketExpires = options.ticketExpires ?? null;
    this.presence = options.presence ?? true;
    // Who is in the room (docs/protocol.md, "Presence"): each connection's `presence` frame replaces
    // it; `join` and `leave` frames change it. A reconnect (a release) is not a change: its snapshot
    // replaces the list without a join or leave event.
    this.members = new Map(); // user id -> {id, name}
    this.anonymous = 0;
    this.renewTimer = null;
    // The position in the room's stream: changed only by position() (welcome, message, resync).
    this.epoch = epoch; // the epoch of lastSeq; null until a server names one
    this.lastSeq = since; // the seq of the last message handed to the application; null until the first welcome
    this.progress = 0; // counts position changes and settled messages: a 1012 loop makes none
    this.delivered = new Set(); // "session id" of the newest delivered messages, at most rememberIds
    this.welcome = null; // the current connection's welcome frame
    this.awaitingResync = false; // the welcome says a resync comes next: send nothing before it
    this.state = "idle"; // idle, connecting, open, waiting (to reconnect), closed
    this.attempt = 0; // failed connections since the last welcome
    this.restarts = 0; // 1012s (or gap resumes) in a row with no progress between them
    this.restartMark = -1; // `progress` at the last of those
    this.ws = null;
    this.timer = null;
    this.pumpTimer = null;
    this.notice = null; // the reconnect frame of a draining server, until its close
    // Every message given to send() and not yet settled, in order: {id, body, on, sessions}. `on` is
    // the session of the connection it was last sent on; `sessions` every one it was sent on.
    this.outbox = [];
  }

  /** Open the connection (again, after close()). */
  connect() {
    if (this.state === "connecting" || this.state === "open") return this;
    clearTimeout(this.timer);
    this.timer = null;
    this.state = "connecting";
    const query = new URLSearchParams();
    if (this.lastSeq !== null) {
      query.set("since", String(this.lastSeq));
      if (this.epoch !== null) query.set("epoch", this.epoch);
    }
    query.set("sender", this.sender);
    if (this.presence) query.set("presence", "1");
    if (this.ticket) query.set("ticket", this.ticket);
    let ws;
    try {
      ws = new this.WebSocket(`${this.url}?${query}`);
    } catch (err) {
      this.stop({ code: 0, reason: String(err) });
      this.emit("error", { error: "connect_failed", detail: String(err) });
      return this;
    }
    this.ws = ws;
    this.bucket.fill(); // the server's bucket for this connection starts full too
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

  /**
   * Send a chat message; returns its id (false when the client is closed or not connected yet, or
   * a message with that id is waiting already). It goes out, paced within the rate limit, once the
   * connection is open and caught up; while reconnecting it waits. Its fate comes as `status`
   * events with detail.id === id: `sent` (each time it goes on the wire), then exactly one of
   * `published` or `failed`. With maxQueued messages unsettled already, it is not queued:
   * `dropped` and `failed` follow (after this returns). `options.id` sends it again under the id
   * of a message that failed: published already (a failure that was `uncertain`), the server
   * answers `duplicate` (for the same sender token) and it is not published twice.
   */
  send(body, { id = messageId() } = {}) {
    if (typeof body !== "string") throw new TypeError("RoomClient.send: body must be a string");
    if (typeof id !== "string" || !ID_PATTERN.test(id)) throw new TypeError(`RoomClient.send: id must match ${ID_PATTERN}`);
    if (this.state === "closed" || this.state === "idle") return false;
    if (this.outbox.some((m) => m.id === id)) return false;
    if (this.outbox.length >= this.maxQueued) {
      queueMicrotask(() => {
        this.emit("dropped", { ids: [id], reason: "queue_full" });
        this.emit("status", { id, state: "failed", error: "dropped", detail: `${this.maxQueued} messages are waiting already` });
      });
      return id;
    }
    this.outbox.push({ id, body, on: null, sessions: [] }); // behind what a reconnect resends: order is kept
    this.pump();
    return id;
  }

  /** A new ticket (fetched over HTTP): used from now on, and given to the open connection (`renew`). */
  setTicket(ticket, expires = null) {
    this.ticket = ticket;
    this.ticketExpires = expires;
    if (this.ws?.readyState === OPEN) {
      this.bucket.take(true);
      this.ws.send(JSON.stringify({ type: "renew", ticket }));
    }
  }

  /** Renew the ticket over the socket at half its remaining life (a minute if its expiry is unknown). */
  scheduleRenew() {
    clearTimeout(this.renewTimer);
    this.renewTimer = null;
    if (!this.ticket) return;
    const left = this.ticketExpires === null ? 120000 : this.ticketExpires * 1000 - Date.now();
    this.renewTimer = setTimeout(() => {
      this.renewTimer = null;
      if (this.ws?.readyState === OPEN) {
        this.bucket.take(true);
        this.ws.send('{"type":"renew"}');
      }
    }, Math.max(1000, left / 2));
  }

  /** Leave the room for good (no reconnect). Messages not settled yet fail (error "closed"). */
  close() {
    const ws = this.ws;
    this.stop({ code: CLOSE_NORMAL, reason: "closed by the application" });
    if (ws) ws.close(CLOSE_NORMAL);
  }

  // --- internals ---

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /**
   * A server that vanished without closing (its machine or network gone) sends nothing more, and a
   * browser may not notice for minutes: ping, and give the connection up when nothing came back.
   */
  beat() {
    if (!this.heard) {
      this.abandon(CLOSE_ABNORMAL, "no answer from the server");
      return;
    }
    this.heard = false;
    if (this.ws.readyState === OPEN) {
      this.bucket.take(true); // a ping costs the server a token like any frame
      this.ws.send('{"type":"ping"}');
    }
  }

  /** Stop listening to this connection, close it, and carry on as if it had closed with `code`. */
  abandon(code, reason) {
    const ws = this.ws;
    ws.onmessage = ws.onclose = ws.onerror = null;
    ws.close(CLOSE_NORMAL);
    this.closed(code, reason);
  }

  /** The one place the stream position (epoch, lastSeq) changes. */
  position(epoch, seq) {
    if (epoch !== this.epoch || seq !== this.lastSeq) this.progress += 1;
    this.epoch = epoch;
    this.lastSeq = seq;
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
        // The server cannot replay everything after our seq (or our epoch is not the room's); it
        // replays from `from`, in its epoch.
        this.position(epochOf(frame) ?? this.epoch, frame.from - 1);
        this.awaitingResync = false;
        this.emit("resync", frame);
        return this.pump();
      case "reconnect":
        this.notice = frame; // the close (1012) follows; until then, sends wait
        return;
      case "error":
        if (typeof frame.id === "string") {
          // Refused: not published, and not sent again. The application decides.
          this.settle(frame.id, { state: "failed", error: frame.error, detail: frame.detail });
        }
        return this.emit("error", frame);
      case "duplicate":
        // A resend of a message the room already has (its first send was published after all):
        // the original is (or was) delivered by seq like any other.
        return this.settle(frame.id, { state: "published", seq: frame.seq, epoch: epochOf(frame), duplicate: true });
      case "pong":
        return;
      case "ticket":
        this.ticket = frame.ticket;
        this.ticketExpires = frame.expires;
        this.scheduleRenew();
        return this.emit("ticket", frame);
      case "presence":
        this.members = new Map((Array.isArray(frame.users) ? frame.users : []).map((user) => [user.id, user]));
        this.anonymous = Number.isSafeInteger(frame.anonymous) ? frame.anonymous : 0;
        return this.emit("presence", this.roster());
      case "join":
      case "leave":
        return this.membership(frame);
      default:
        this.emit("error", { error: "unknown_frame", detail: `unknown frame type ${frame.type}` });
    }
  }

  /** The member list as events carry it: users sorted by name, and the anonymous count. */
  roster() {
    const users = [...this.members.values()].sort((a, b) => String(a.name).localeCompare(String(b.name)) || a.id - b.id);
    return { users, anonymous: this.anonymous };
  }

  /** A join or leave: an event only if it changes the list (one published just before this
   * connection's snapshot may come after it, and changes nothing). */
  membership(frame) {
    const user = frame.user && typeof frame.user === "object" ? frame.user : null;
    const before = this.anonymous;
    if (Number.isSafeInteger(frame.anonymous)) this.anonymous = frame.anonymous;
    let changed = this.anonymous !== before;
    if (user !== null && frame.type === "join" && !this.members.has(user.id)) {
      this.members.set(user.id, user);
      changed = true;
    } else if (user !== null && frame.type === "leave" && this.members.has(user.id)) {
      this.members.delete(user.id);
      changed = true;
    }
    if (!changed) return;
    this.emit(frame.type, { user, anonymous: this.anonymous });
    this.emit("presence", this.roster());
  }

  welcomed(frame) {
    const resumed = this.welcome !== null;
    const asked = this.lastSeq !== null; // this connection asked for ?since=
    const epoch = epochOf(frame);
    this.welcome = frame;
    this.state = "open";
    this.scheduleRenew();
    this.attempt = 0;
    this.notice = null;
    if (!asked && Number.isSafeInteger(frame.seq)) this.position(epoch, frame.seq);
    else if (this.epoch === null && epoch !== null) this.position(epoch, this.lastSeq); // seqs compared only
    // Another epoch, or a seq above the room's: the server sends a resync before its replay.
    this.awaitingResync = asked && ((epoch !== null && epoch !== this.epoch) || this.lastSeq > frame.seq);
    this.emit("open", { ...frame, resumed });
    this.pump();
  }

  message(frame) {
    const epoch = epochOf(frame);
    // Ours? Its echo says it was published, whatever happens to this frame below.
    const mine = typeof frame.id === "string"
      ? this.outbox.find((m) => m.id === frame.id && m.sessions.includes(frame.session))
      : this.outbox.find((m) => m.sessions.includes(frame.session) && m.body === frame.body); // a server without ids
    if (mine) this.settle(mine.id, { state: "published", seq: frame.seq, epoch });
    if (this.ws === null) return; // a status handler closed the client
    if (epoch !== null && this.epoch !== null && epoch !== this.epoch) {
      return this.abandon(CLOSE_RESUME, `a message of epoch ${epoch}, not ${this.epoch}`);
    }
    if (this.lastSeq !== null && frame.seq <= this.lastSeq) return; // seen already (replay seam)
    if (this.lastSeq !== null && frame.seq > this.lastSeq + 1) {
      return this.abandon(CLOSE_RESUME, `seq ${frame.seq} after ${this.lastSeq}`);
    }
    this.position(epoch ?? this.epoch, frame.seq);
    // After an epoch change the replay may hold messages delivered already (same id and session).
    const key = typeof frame.id === "string" ? `${frame.session} ${frame.id}` : null;
    if (key !== null && this.delivered.has(key)) return this.pump();
    if (key !== null) {
      this.delivered.add(key);
      if (this.delivered.size > this.rememberIds) this.delivered.delete(this.delivered.values().next().value);
    }
    this.emit("message", frame);
    this.pump();
  }

  /** The message with this id (if still unsettled) is published or refused: its final status. */
  settle(id, detail) {
    const index = this.outbox.findIndex((m) => m.id === id);
    if (index === -1) return;
    this.outbox.splice(index, 1);
    this.progress += 1;
    this.emit("status", { id, ...detail });
  }

  /**
   * Send what is due, as fast as the bucket allows. Once the replay has caught up with the room
   * (lastSeq >= welcome.seq), every message an earlier connection published has been seen: what is
   * still unsettled was lost with that connection and goes again first, with its id, then the rest.
   */
  pump() {
    clearTimeout(this.pumpTimer);
    this.pumpTimer = null;
    for (;;) {
      if (this.state !== "open" || this.notice !== null || this.awaitingResync || this.ws.readyState !== OPEN) return;
      if (Number.isSafeInteger(this.welcome.seq) && this.lastSeq < this.welcome.seq) return; // replaying
      const session = this.welcome.session;
      const message = this.outbox.find((m) => m.on !== session);
      if (!message) return;
      const wait = this.bucket.take();
      if (wait > 0) {
        clearTimeout(this.pumpTimer); // a status handler may have pumped meanwhile
        this.pumpTimer = setTimeout(() => this.pump(), wait);
        return;
      }
      message.on = session; // before it goes: its echo is matched by the sessions it went out on
      message.sessions.push(session);
      this.ws.send(JSON.stringify({ type: "message", body: message.body, id: message.id }));
      this.emit("status", { id: message.id, state: "sent", session, attempt: message.sessions.length });
    }
  }

  closed(code, reason) {
    clearInterval(this.heartbeat);
    clearTimeout(this.pumpTimer);
    clearTimeout(this.renewTimer);
    this.heartbeat = this.pumpTimer = this.renewTimer = null;
    this.ws = null;
    const notice = this.notice;
    this.notice = null;
    if (this.state === "closed") return;
    if (FINAL_CLOSES.has(code)) {
      this.stop({ code, reason });
      return;
    }
    let delay;
    let release = false;
    if (RESTART_CLOSES.has(code)) {
      // A release (or our own resume): come back at once, the server spreads its clients already.
      // But a server that does it again and again with nothing gained in between gets backoff.
      this.restarts = this.progress === this.restartMark ? this.restarts + 1 : 1;
      this.restartMark = this.progress;
      release = this.restarts < this.restartLimit;
      delay = release ? this.random() * (notice?.retry_ms ?? RELEASE_JITTER_MS) : this.backoff(this.restarts - this.restartLimit);
    } else {
      // Anything else abnormal (1006, 1011, 1013, a refused handshake): full-jitter backoff.
      delay = this.backoff(this.attempt);
      this.attempt += 1;
    }
    this.state = "waiting";
    this.emit("reconnecting", { code, reason, delay, attempt: this.attempt, restarts: this.restarts, release });
    this.timer = setTimeout(() => {
      this.timer = null;
      this.state = "idle";
      this.connect();
    }, delay);
  }

  backoff(exponent) {
    return this.random() * Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** exponent);
  }

  /** The end: every unsettled message fails (`uncertain` when it went out and no answer came). */
  stop({ code, reason }) {
    clearTimeout(this.timer);
    clearTimeout(this.pumpTimer);
    clearInterval(this.heartbeat);
    clearTimeout(this.renewTimer);
    this.timer = this.pumpTimer = this.heartbeat = this.renewTimer = null;
    this.ws = null;
    if (this.state === "closed") return;
    this.state = "closed";
    const unsent = this.outbox.splice(0);
    for (const message of unsent) {
      this.emit("status", { id: message.id, state: "failed", error: "closed", detail: reason,
                            uncertain: message.sessions.length > 0 });
    }
    this.emit("close", { code, reason, unsent: unsent.length });
  }
}
