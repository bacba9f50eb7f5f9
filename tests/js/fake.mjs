// A test double for the network: a fake WebSocket constructor and the room server behind it, in
// memory. It plays what the real server cannot be made to show on demand (a gap in the stream, an
// epoch change, a 1012 loop, a duplicate answer) and records every frame the client sends with its
// time. It follows docs/protocol.md and /work/spec16.md where a test does not override it.
// Used by tests/js/fake-server.test.mjs; needs no running server.

let sessions = 0;

/**
 * One room on one fake server. `room.WebSocket` is the constructor to pass to RoomClient. With
 * `autoAccept`, each new socket opens and gets its welcome (and resync and replay) on a microtask;
 * with `autoEcho`, each message frame is published to every open socket. Options: `epoch` (null: a
 * server from before epochs, which sends none), `echoIds` (false: a server from before ids).
 */
export class FakeRoom {
  constructor({ name = "fake", epoch = "E1", echoIds = true, autoAccept = true, autoEcho = true } = {}) {
    Object.assign(this, { name, epoch, echoIds, autoAccept, autoEcho });
    this.history = []; // message frames, in seq order, of the current epoch
    this.ids = new Map(); // "sender id" -> seq: what a resend of a published id is answered
    this.sockets = [];
    this.onaccept = null; // called with each socket once it has its welcome (and replay)
    const room = this;
    this.WebSocket = class FakeWebSocket extends FakeSocket {
      constructor(url) {
        super(url, room);
        room.sockets.push(this);
        if (room.autoAccept) queueMicrotask(() => room.accept(this));
      }
    };
  }

  get seq() {
    return this.history.length ? this.history.at(-1).seq : 0;
  }

  /** Every frame of a kind that clients sent, over all sockets. */
  sent(type) {
    return this.sockets.flatMap((s) => s.frames.filter((f) => f.type === type));
  }

  /** Open the socket and send what the server sends after a handshake. */
  accept(socket) {
    if (socket.readyState !== CONNECTING) return;
    socket.readyState = OPEN;
    socket.onopen?.({});
    const query = new URL(socket.url).searchParams;
    const since = query.has("since") ? Number(query.get("since")) : null;
    socket.send_({ type: "welcome", room: this.name, session: socket.session, color: "blue", replica: "fake",
                   version: "test", ...this.epochField(), seq: this.seq });
    if (since !== null) this.replay(socket, since, query.get("epoch"));
    this.onaccept?.(socket);
  }

  /** What follows the welcome of a resuming client: a resync when needed, then the replay. */
  replay(socket, since, epoch) {
    let from = since + 1;
    let reason = null;
    if (this.epoch !== null && epoch !== null && epoch !== this.epoch) reason = "epoch";
    else if (since > this.seq) reason = "ahead";
    if (reason) {
      from = this.history.length ? this.history[0].seq : this.seq + 1;
      socket.send_({ type: "resync", room: this.name, since, ...this.epochField(), from, seq: this.seq, reason });
    }
    for (const frame of this.history) if (frame.seq >= from) socket.send_(frame);
  }

  epochField() {
    return this.epoch === null ? {} : { epoch: this.epoch };
  }

  /** Publish a message as the server does: the next seq, to every open socket (live: false, to the
   * history only, as if its live copy were lost on the way). */
  publish(body, { session = "other", id = `~${Math.random().toString(36).slice(2, 17)}`, live = true } = {}) {
    const frame = { type: "message", room: this.name, ...this.epochField(), seq: this.seq + 1, body, session };
    if (this.echoIds) frame.id = id;
    frame.ts = Date.now() / 1000;
    this.history.push(frame);
    if (live) for (const socket of this.sockets) if (socket.readyState === OPEN) socket.send_(frame);
    return frame;
  }

  /** What the server does with a client's frame unless a test intercepts it (socket.onframe). */
  answer(socket, frame) {
    if (frame.type === "ping") queueMicrotask(() => socket.send_({ type: "pong" }));
    if (frame.type === "message" && this.autoEcho) queueMicrotask(() => this.take(socket, frame));
  }

  /** A client's message: published once per sender and id; a resend is answered `duplicate`. (Also
   * after the client closed: the server may still be handling a frame it received before.) */
  take(socket, frame) {
    const key = `${socket.query.get("sender")} ${frame.id}`;
    if (this.ids.has(key)) {
      socket.send_({ type: "duplicate", id: frame.id, ...this.epochField(), seq: this.ids.get(key) });
      return;
    }
    this.ids.set(key, this.publish(frame.body, { session: socket.session, id: frame.id }).seq);
  }
}

const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

/** The client's side of WebSocket (send, close, on* handlers, readyState), plus the server's. */
class FakeSocket {
  constructor(url, room) {
    this.url = url;
    this.room = room;
    this.readyState = CONNECTING;
    sessions += 1;
    this.session = `S${sessions}`;
    this.frames = []; // what the client sent, parsed
    this.times = []; // when (performance.now())
    this.log = []; // both directions in order: ">type" sent by the client, "<type" by the server
    this.closedBy = null; // {code, reason} when the client closed it
    this.onframe = null; // a test's own handler of client frames, instead of the room's
  }

  get query() {
    return new URL(this.url).searchParams;
  }

  send(data) {
    if (this.readyState !== OPEN) throw new Error(`send on a socket in state ${this.readyState}`);
    const frame = JSON.parse(data);
    this.frames.push(frame);
    this.times.push(performance.now());
    this.log.push(`>${frame.type}`);
    if (this.onframe) this.onframe(frame);
    else this.room.answer(this, frame);
  }

  close(code = 1005, reason = "") {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.closedBy = { code, reason };
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }

  // --- the server's side ---

  send_(frame) {
    if (this.readyState !== OPEN) return;
    this.log.push(`<${frame.type}`);
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The server closes the connection with this code (and the client hears it at once). */
  serverClose(code, reason = "") {
    if (this.readyState === CLOSED) return;
    this.readyState = CLOSED;
    this.onclose?.({ code, reason });
  }
}

export const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

export async function until(predicate, what, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}
