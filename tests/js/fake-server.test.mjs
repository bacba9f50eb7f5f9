// RoomClient (service/rooms/static/wsapp.js) against a test double of the network (tests/js/fake.mjs):
// the behaviours a real server cannot be made to show on demand (a gap, an epoch change, a 1012
// loop, a duplicate answer, an exact send rate). Needs no server:
//   node --test tests/js/fake-server.test.mjs
// tests/integration/test_js_client.py runs it with the others.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { CLOSE_RESUME, RELEASE_JITTER_MS, RoomClient } from "../../service/rooms/static/wsapp.js";
import { FakeRoom, tick, until } from "./fake.mjs";

const EVENTS = ["open", "message", "status", "dropped", "reconnecting", "resync", "error", "close"];
const clients = [];
afterEach(() => {
  for (const client of clients.splice(0)) client.close();
});

/** A client of `room` that records every event it emits; fast reconnects unless told otherwise. */
function client(room, options = {}) {
  const c = new RoomClient({ room: room.name, base: "ws://fake", WebSocket: room.WebSocket, random: () => 0, ...options });
  c.events = [];
  for (const type of EVENTS) c.addEventListener(type, (e) => c.events.push({ type, detail: e.detail }));
  c.of = (type) => c.events.filter((e) => e.type === type).map((e) => e.detail);
  c.final = (id) => c.of("status").filter((s) => s.id === id && s.state !== "sent");
  clients.push(c);
  return c;
}

async function joined(room, options) {
  const c = client(room, options).connect();
  await until(() => c.of("open").length === 1, "welcome");
  return c;
}

const bodies = (c) => c.of("message").map((m) => m.body);

test("every connection carries the same sender token; a resume names its seq and epoch", async () => {
  const room = new FakeRoom();
  room.publish("before");
  const alice = await joined(room);
  room.publish("one");
  room.sockets[0].serverClose(1012);
  await until(() => room.sockets.length === 2 && alice.of("open").length === 2, "the second welcome");
  const [first, second] = room.sockets.map((s) => s.query);
  assert.match(first.get("sender"), /^[A-Za-z0-9_-]{16,64}$/);
  assert.equal(second.get("sender"), first.get("sender"), "one token for the client's life");
  assert.equal(first.has("since"), false);
  assert.equal(second.get("since"), "2");
  assert.equal(second.get("epoch"), "E1");
  assert.deepEqual(bodies(alice), ["one"]);
  assert.equal(alice.epoch, "E1");
});

test("a server without epochs or echoed ids: resume with since alone, own echo matched by body", async () => {
  const room = new FakeRoom({ epoch: null, echoIds: false });
  const alice = await joined(room);
  const id = alice.send("hi");
  await until(() => alice.final(id).length === 1, "the status");
  assert.equal(alice.final(id)[0].state, "published");
  assert.equal(alice.final(id)[0].seq, 1);
  room.sockets[0].serverClose(1012);
  await until(() => alice.of("open").length === 2, "the second welcome");
  assert.equal(room.sockets[1].query.get("since"), "1");
  assert.equal(room.sockets[1].query.has("epoch"), false);
  assert.equal(alice.epoch, null);
  room.publish("two");
  await until(() => bodies(alice).length === 2, "the next message");
  assert.deepEqual(bodies(alice), ["hi", "two"]);
});

test("sends are paced below the server's rate limit, pings included", async () => {
  const rate = 50;
  const burst = 5;
  const room = new FakeRoom();
  const alice = await joined(room, { ratePerSecond: rate, burst, heartbeatMs: 40 });
  const ids = Array.from({ length: 20 }, (_, i) => alice.send(`m${i}`));
  await until(() => ids.every((id) => alice.final(id).length === 1), "every message published");
  const socket = room.sockets[0];
  const pings = socket.frames.filter((f) => f.type === "ping").length;
  assert.ok(pings >= 5, `pings while the messages went out: ${pings}`);
  // Any run of frames from the i-th to the j-th fits what a bucket allows in their time, plus one
  // ping it may send into debt (the margin below the server's 20/s and 40 covers that).
  const t = socket.times.filter((_, i) => socket.frames[i].type === "message" || socket.frames[i].type === "ping");
  for (let i = 0; i < t.length; i += 1) {
    for (let j = i; j < t.length; j += 1) {
      const allowed = burst + ((t[j] - t[i]) / 1000) * rate + 1;
      assert.ok(j - i + 1 <= allowed, `${j - i + 1} frames in ${(t[j] - t[i]).toFixed(1)} ms`);
    }
  }
  assert.deepEqual(bodies(alice), ids.map((_, i) => `m${i}`), "in order");
});

test("a full outbox drops the new message: a dropped event, then its one failed status", async () => {
  const room = new FakeRoom({ autoAccept: false });
  const alice = client(room, { maxQueued: 3 }).connect();
  const kept = ["a", "b", "c"].map((body) => alice.send(body));
  const lost = alice.send("d");
  assert.equal(typeof lost, "string", "send() still names the message it dropped");
  assert.equal(alice.of("dropped").length, 0, "reported after send() returns, so the id is known");
  await tick();
  assert.deepEqual(alice.of("dropped"), [{ ids: [lost], reason: "queue_full" }]);
  assert.equal(alice.final(lost)[0].state, "failed");
  assert.equal(alice.final(lost)[0].error, "dropped");
  room.accept(room.sockets[0]);
  await until(() => kept.every((id) => alice.final(id).length === 1), "the kept ones published");
  assert.deepEqual(bodies(alice), ["a", "b", "c"]);
  assert.deepEqual(alice.of("status").filter((s) => s.id === lost).length, 1, "one status for the dropped one");
  assert.ok(alice.send("e"), "room again once they are settled");
});

test("each message gets exactly one final status: its echo, a duplicate, or an error with its id", async () => {
  const room = new FakeRoom();
  const alice = await joined(room);
  const socket = room.sockets[0];
  socket.onframe = (frame) => queueMicrotask(() => {
    if (frame.type !== "message") return room.answer(socket, frame);
    if (frame.body === "dup") socket.send_({ type: "duplicate", id: frame.id, epoch: "E1", seq: 7 });
    else if (frame.body === "refused") socket.send_({ type: "error", error: "rate_limited", detail: "over", id: frame.id });
    else room.publish(frame.body, { session: socket.session, id: frame.id });
  });
  const echoed = alice.send("echoed");
  const dup = alice.send("dup");
  const refused = alice.send("refused");
  await until(() => alice.outbox.length === 0, "every message settled");
  assert.deepEqual(alice.of("status").map((s) => [s.id, s.state]),
                   [[echoed, "sent"], [dup, "sent"], [refused, "sent"], [echoed, "published"], [dup, "published"], [refused, "failed"]]);
  assert.deepEqual(alice.final(echoed)[0], { id: echoed, state: "published", seq: 1, epoch: "E1" });
  assert.deepEqual(alice.final(dup)[0], { id: dup, state: "published", seq: 7, epoch: "E1", duplicate: true });
  assert.equal(alice.final(refused)[0].error, "rate_limited");
  // A later copy of an answered message (a replay, a stray answer) changes nothing.
  socket.send_({ type: "duplicate", id: echoed, epoch: "E1", seq: 1 });
  room.publish("refused", { session: socket.session, id: refused });
  assert.equal(alice.final(echoed).length + alice.final(refused).length, 2);
});

test("another member's message with the same id does not settle ours (ids are scoped to a sender)", async () => {
  const room = new FakeRoom({ autoEcho: false });
  const alice = await joined(room);
  const id = alice.send("mine");
  room.publish("theirs", { session: "mallory", id });
  assert.deepEqual(alice.final(id), [], "still waiting for its own answer");
  room.publish("mine", { session: room.sockets[0].session, id });
  assert.deepEqual(alice.final(id).map((s) => [s.state, s.seq]), [["published", 2]]);
  assert.deepEqual(bodies(alice), ["theirs", "mine"]);
});

test("a message cut off by a reconnect is sent again, with its id, after the replay, and settles once", async () => {
  const room = new FakeRoom({ autoEcho: false });
  const alice = await joined(room);
  const id = alice.send("cut off");
  room.publish("meanwhile", { live: false }); // she gets it by the replay
  room.autoEcho = true;
  room.sockets[0].serverClose(1012);
  await until(() => alice.final(id).length === 1, "published from the second connection");
  const second = room.sockets[1];
  assert.deepEqual(second.frames.filter((f) => f.type === "message").map((f) => f.id), [id], "the same id, once");
  assert.deepEqual(second.log.slice(0, 3), ["<welcome", "<message", ">message"], "resent once the replay reached welcome.seq");
  assert.deepEqual(alice.of("status").filter((s) => s.id === id).map((s) => [s.state, s.attempt]),
                   [["sent", 1], ["sent", 2], ["published", undefined]]);
  assert.deepEqual(bodies(alice), ["meanwhile", "cut off"]);
});

test("a message that failed uncertain, sent again under its id by the same sender, is published once", async () => {
  const room = new FakeRoom({ autoEcho: false });
  const alice = await joined(room);
  const id = alice.send("did it go?");
  const [frame] = room.sent("message");
  alice.close(); // the page left while it was on the wire
  assert.deepEqual(alice.final(id).map((s) => [s.state, s.error, s.uncertain]), [["failed", "closed", true]]);
  room.autoEcho = true;
  room.take(room.sockets[0], frame); // it had reached the server, which publishes it
  const again = await joined(room, { sender: alice.sender });
  assert.equal(again.send("did it go?", { id }), id);
  assert.equal(again.send("did it go?", { id }), false, "not twice at once");
  await until(() => again.final(id).length === 1, "the answer");
  assert.deepEqual(again.final(id), [{ id, state: "published", seq: 1, epoch: "E1", duplicate: true }]);
  assert.equal(room.history.length, 1, "published once");
  assert.throws(() => again.send("x", { id: "not an id!" }), /id must match/);
});

test("a seq gap makes the client resume instead of accepting the frame", async () => {
  const room = new FakeRoom();
  const alice = await joined(room);
  room.publish("1");
  room.publish("2", { live: false }); // its live copy lost on the way
  room.publish("3");
  await until(() => alice.of("open").length === 2, "the resume");
  const [reconnecting] = alice.of("reconnecting");
  assert.equal(reconnecting.code, CLOSE_RESUME);
  assert.equal(reconnecting.reason, "seq 3 after 1");
  assert.equal(reconnecting.release, true, "at once, like a release");
  assert.ok(reconnecting.delay <= RELEASE_JITTER_MS);
  assert.equal(room.sockets[0].closedBy.code, 1000, "the client closed the gapped connection itself");
  assert.equal(room.sockets[1].query.get("since"), "1");
  assert.equal(room.sockets[1].query.get("epoch"), "E1");
  assert.deepEqual(alice.of("message").map((m) => [m.seq, m.body]), [[1, "1"], [2, "2"], [3, "3"]]);
});

test("a message of another epoch makes the client resume instead of accepting it", async () => {
  const room = new FakeRoom();
  const alice = await joined(room);
  room.publish("old");
  room.epoch = "E2"; // Redis failed over: the room's history starts again, its seqs are new ones
  room.history = [];
  room.publish("new");
  await until(() => alice.of("open").length === 2, "the resume");
  assert.equal(alice.of("reconnecting")[0].code, CLOSE_RESUME);
  assert.equal(alice.of("reconnecting")[0].reason, "a message of epoch E2, not E1");
  assert.equal(room.sockets[1].query.get("epoch"), "E1", "it asks with the epoch of its seq");
  assert.equal(alice.of("resync")[0].reason, "epoch");
  assert.deepEqual(alice.of("message").map((m) => [m.epoch, m.seq, m.body]), [["E1", 1, "old"], ["E2", 1, "new"]],
                   "the live frame of E2 was not accepted; the replay brought it after the resync");
  assert.equal(alice.epoch, "E2");
  assert.equal(alice.lastSeq, 1);
});

test("an epoch resync: the new epoch, lastSeq = from - 1, replayed copies dropped by id, resends after it", async () => {
  const room = new FakeRoom({ autoEcho: false });
  const alice = await joined(room);
  for (const body of ["a", "b", "c"]) room.publish(body, { session: "bob", id: `id-${body}` });
  const pending = alice.send("mine");
  // Redis failed over and lost "c": the new epoch's history holds "a", "b" again (same ids and
  // sessions), then "d", which alice has not seen.
  room.epoch = "E2";
  room.history = [];
  for (const body of ["a", "b", "d"]) room.publish(body, { session: "bob", id: `id-${body}`, live: false });
  room.autoEcho = true;
  room.sockets[0].serverClose(1012);
  await until(() => alice.final(pending).length === 1, "her message published in the new epoch");
  assert.equal(room.sockets[1].query.get("epoch"), "E1");
  const [resync] = alice.of("resync");
  assert.deepEqual([resync.reason, resync.epoch, resync.from], ["epoch", "E2", 1]);
  assert.deepEqual(bodies(alice), ["a", "b", "c", "d", "mine"], "no second a or b");
  assert.equal(alice.epoch, "E2");
  assert.equal(alice.lastSeq, 4);
  assert.deepEqual(alice.final(pending)[0], { id: pending, state: "published", seq: 4, epoch: "E2" });
  // Its last seq (3, of E1) was not below the welcome's (3, of E2): the resend waited for the
  // resync and the replay all the same.
  assert.deepEqual(room.sockets[1].log.slice(0, 6), ["<welcome", "<resync", "<message", "<message", "<message", ">message"]);
});

test("the delivered-id memory is bounded (rememberIds)", async () => {
  const room = new FakeRoom();
  const alice = await joined(room, { rememberIds: 2 });
  for (const body of ["a", "b", "c"]) room.publish(body, { session: "bob", id: `id-${body}` });
  assert.equal(alice.delivered.size, 2);
  assert.deepEqual([...alice.delivered], ["bob id-b", "bob id-c"], "the oldest forgotten first");
});

test("1012s that bring no progress switch to backoff; a delivered message starts the count again", async () => {
  const room = new FakeRoom();
  let connections = 0;
  room.onaccept = (socket) => {
    connections += 1;
    if (connections <= 4) setTimeout(() => socket.serverClose(1012), 1); // a server in a loop
  };
  const alice = await joined(room, { random: () => 1, baseDelayMs: 10, restartLimit: 3 });
  await until(() => alice.of("open").length === 5, "the fifth connection", 10000);
  room.publish("progress");
  room.sockets[4].serverClose(1012);
  await until(() => alice.of("reconnecting").length === 5, "its close");
  const seen = alice.of("reconnecting").map((r) => [r.code, r.release, r.restarts, Math.round(r.delay)]);
  assert.deepEqual(seen, [
    [1012, true, 1, RELEASE_JITTER_MS], [1012, true, 2, RELEASE_JITTER_MS], // at once, twice
    [1012, false, 3, 10], [1012, false, 4, 20], // the third in a row without progress: backoff
    [1012, true, 1, RELEASE_JITTER_MS], // a message came in between: at once again
  ]);
});

test("a 1008 ends the client: no reconnect, and every unsettled message fails (uncertain if it went out)", async () => {
  const room = new FakeRoom({ autoEcho: false });
  const alice = await joined(room, { burst: 1, ratePerSecond: 1 });
  const out = alice.send("out");
  const waiting = alice.send("waiting"); // the bucket is empty: it waits a second
  assert.deepEqual(room.sent("message").map((f) => f.body), ["out"]);
  room.sockets[0].serverClose(1008);
  await tick();
  assert.equal(alice.state, "closed");
  assert.equal(alice.of("reconnecting").length, 0);
  assert.deepEqual(alice.of("close").map((c) => [c.code, c.unsent]), [[1008, 2]]);
  assert.deepEqual(alice.final(out), [{ id: out, state: "failed", error: "closed", detail: "", uncertain: true }]);
  assert.deepEqual(alice.final(waiting), [{ id: waiting, state: "failed", error: "closed", detail: "", uncertain: false }]);
  assert.equal(alice.send("after"), false);
});

test("a ticket goes on every handshake, is renewed at half its life, and the newest one is used next", async () => {
  const room = new FakeRoom();
  const expires = Date.now() / 1000 + 2.4; // renewed after 1.2 s
  const alice = await joined(room, { ticket: "T1", ticketExpires: expires });
  const renewed = [];
  alice.addEventListener("ticket", (e) => renewed.push(e.detail.ticket));
  assert.equal(room.sockets[0].query.get("ticket"), "T1");
  room.sockets[0].onframe = (frame) => {
    if (frame.type === "renew") queueMicrotask(() => room.sockets[0].send_({ type: "ticket", ticket: "T2", expires: expires + 300 }));
  };
  await until(() => renewed.length === 1, "the renewal", 4000);
  assert.deepEqual(room.sockets[0].frames.filter((f) => f.type === "renew"), [{ type: "renew" }]);
  room.sockets[0].serverClose(1012);
  await until(() => alice.of("open").length === 2, "the second welcome");
  assert.equal(room.sockets[1].query.get("ticket"), "T2");
  alice.setTicket("T3", expires + 600); // fetched over HTTP: handed to the open connection
  assert.deepEqual(room.sockets[1].frames.at(-1), { type: "renew", ticket: "T3" });
});

test("presence: asked for on every connection; the list, its joins and leaves, and a reconnect that is no change", async () => {
  const room = new FakeRoom();
  const alice = await joined(room);
  const seen = [];
  for (const type of ["presence", "join", "leave"]) alice.addEventListener(type, (e) => seen.push({ type, detail: e.detail }));
  assert.equal(room.sockets[0].query.get("presence"), "1");
  const socket = room.sockets[0];
  socket.send_({ type: "presence", room: room.name, users: [{ id: 2, name: "bob" }, { id: 1, name: "Alice" }], anonymous: 1 });
  assert.deepEqual(alice.roster(), { users: [{ id: 1, name: "Alice" }, { id: 2, name: "bob" }], anonymous: 1 });
  socket.send_({ type: "join", room: room.name, user: { id: 1, name: "Alice" }, anonymous: 1 }); // listed already
  socket.send_({ type: "join", room: room.name, user: { id: 3, name: "carol" }, anonymous: 1 });
  socket.send_({ type: "leave", room: room.name, user: null, anonymous: 0 });
  socket.send_({ type: "leave", room: room.name, user: { id: 2, name: "bob" }, anonymous: 0 });
  assert.deepEqual(seen.filter((e) => e.type !== "presence").map((e) => [e.type, e.detail.user?.name ?? null]),
    [["join", "carol"], ["leave", null], ["leave", "bob"]]);
  assert.deepEqual([...alice.members.keys()].sort(), [1, 3]);
  // A release: the new connection's snapshot replaces the list, with no join or leave event.
  const before = seen.length;
  socket.serverClose(1012);
  await until(() => room.sockets.length === 2 && alice.of("open").length === 2, "the second welcome");
  assert.equal(room.sockets[1].query.get("presence"), "1");
  room.sockets[1].send_({ type: "presence", room: room.name, users: [{ id: 1, name: "Alice" }, { id: 3, name: "carol" }], anonymous: 0 });
  assert.deepEqual(seen.slice(before).map((e) => e.type), ["presence"]);
  assert.equal(alice.members.size, 2);
  const quiet = await joined(room, { presence: false });
  assert.equal(room.sockets.at(-1).query.has("presence"), false);
  assert.equal(quiet.members.size, 0);
});
