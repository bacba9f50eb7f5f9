// RoomClient (service/rooms/static/wsapp.js) against real servers: see tests/integration/test_js_client.py.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";

import { BACKOFF_BASE_MS, RELEASE_JITTER_MS, RoomClient } from "../../service/rooms/static/wsapp.js";
import {
  HISTORY_MAX,
  ORIGIN,
  RoutedWebSocket,
  SERVERS,
  assertComplete,
  control,
  joined,
  recorded,
  route,
  sleep,
  uniqueRoom,
  until,
} from "./helpers.mjs";

const clients = [];
function track(client) {
  clients.push(client);
  return client;
}
let drained = false;
let paused = false;
afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  route.color = "blue";
  if (paused) await control("resume", "blue"); // leave blue serving for the next test
  if (drained) await control("undrain", "blue");
  drained = paused = false;
});

async function sendAll(client, prefix, count, gapMs = 0) {
  const bodies = [];
  for (let i = 0; i < count; i += 1) {
    const body = `${prefix}-${i}`;
    assert.ok(client.send(body), `send ${body}`);
    bodies.push(body);
    if (gapMs) await sleep(gapMs);
  }
  return bodies;
}

test("a new client starts at the room's seq and sees every later message once, in order", async () => {
  const room = uniqueRoom("live");
  const alice = track(await joined({ room }));
  const early = await sendAll(alice, "early", 3);
  await until(() => alice.messages.length === 3, "alice's own messages");
  const bob = track(await joined({ room }));
  assert.equal(bob.of("open")[0].seq, alice.lastSeq, "welcome carries the room's current seq");
  assert.equal(bob.of("open")[0].version, "it", "and the version the page shows");
  assert.equal(bob.lastSeq, alice.lastSeq);
  const later = await sendAll(alice, "later", 5);
  await until(() => bob.messages.length === 5, "bob: 5 messages");
  assertComplete(assert, alice, [...early, ...later]);
  assertComplete(assert, bob, later);
  assert.equal(bob.of("open")[0].resumed, false);
});

test("a release (drain, 1012) moves clients to the other color at once, resuming without loss", async () => {
  const room = uniqueRoom("release");
  const readers = [track(await joined({ room })), track(await joined({ room }))];
  const sender = track(await joined({ room }));
  let sending = true;
  const bodies = [];
  const sent = (async () => {
    for (let i = 0; sending; i += 1) {
      bodies.push(`m-${i}`);
      sender.send(`m-${i}`);
      await sleep(15);
    }
  })();
  await until(() => readers[0].messages.length >= 10, "traffic before the release");
  route.color = "green"; // Nginx switches first, then the old color drains
  drained = true;
  await control("drain", "blue", "seconds=0.5");
  for (const client of [...readers, sender]) {
    await until(() => client.of("open").length === 2, "welcome from green");
  }
  await sleep(300);
  sending = false;
  await sent;
  await until(() => readers.every((c) => c.messages.length === bodies.length), "every message everywhere");
  for (const client of [...readers, sender]) {
    const [reconnecting] = client.of("reconnecting");
    assert.equal(reconnecting.code, 1012);
    assert.equal(reconnecting.release, true);
    assert.ok(reconnecting.delay <= RELEASE_JITTER_MS, `released client waited ${reconnecting.delay} ms`);
    const welcome = client.of("open")[1];
    assert.equal(welcome.color, "green");
    assert.equal(welcome.resumed, true);
    assert.equal(client.of("error").length, 0, JSON.stringify(client.of("error")));
    assertComplete(assert, client, bodies);
  }
  assert.ok(RoutedWebSocket.urls.some((url) => url.includes("?since=")), "reconnects resume with ?since=");
  const senders = new Set(RoutedWebSocket.urls.filter((url) => url.includes(room))
    .map((url) => new URL(url).searchParams.get("sender")));
  assert.equal(senders.size, 3, "each client one sender token, on every connection");
});

test("frames the client has already seen are dropped (a server replaying too much)", async () => {
  const room = uniqueRoom("dedupe");
  const alice = track(await joined({ room }));
  const first = await sendAll(alice, "a", 8);
  await until(() => alice.messages.length === 8, "8 messages");
  // Reconnect through a socket that asks for 5 seqs more than the client needs.
  class Overlapping extends RoutedWebSocket {
    constructor(url) {
      super(url.replace(/since=(\d+)/, (_, n) => `since=${Number(n) - 5}`));
    }
  }
  const bob = track(recorded({ room, since: alice.lastSeq, WebSocket: Overlapping }).connect());
  await until(() => bob.of("open").length === 1, "bob's welcome");
  const more = await sendAll(alice, "b", 3);
  await until(() => bob.messages.length === 3, "bob: the live messages");
  await sleep(100);
  assert.deepEqual(bob.messages.map((m) => m.body), more, "the 5 replayed frames were dropped");
  assertComplete(assert, alice, [...first, ...more]);
});

test("resync when since is ahead of the room: the client starts again from what the server has", async () => {
  const room = uniqueRoom("ahead");
  const alice = track(await joined({ room }));
  const bodies = await sendAll(alice, "x", 4);
  await until(() => alice.messages.length === 4, "4 messages");
  const bob = track(recorded({ room, since: 1000000 }).connect());
  await until(() => bob.of("resync").length === 1 && bob.messages.length === 4, "resync and replay");
  const [resync] = bob.of("resync");
  assert.equal(resync.reason, "ahead");
  assert.equal(resync.since, 1000000);
  assert.equal(resync.from, 1);
  assert.equal(bob.lastSeq, 4);
  assertComplete(assert, bob, bodies);
});

test("resync when the client is further behind than the history keeps", async () => {
  const room = uniqueRoom("tooold");
  const alice = track(await joined({ room }));
  await sendAll(alice, "old", 2);
  await until(() => alice.messages.length === 2, "alice: 2 messages");
  const behind = alice.lastSeq;
  const sender = track(await joined({ room }));
  const bodies = [];
  for (let i = 0; i < HISTORY_MAX + 10; i += 1) {
    bodies.push(`new-${i}`);
    sender.send(`new-${i}`);
    if (i % 10 === 9) await sleep(600); // under the server's rate limit
  }
  await until(() => sender.messages.length === bodies.length, "sender: every message");
  const bob = track(recorded({ room, since: behind }).connect());
  await until(() => bob.of("resync").length === 1, "resync");
  const [resync] = bob.of("resync");
  assert.equal(resync.reason, "too_old");
  assert.equal(resync.seq, sender.lastSeq);
  assert.equal(resync.from, sender.lastSeq - HISTORY_MAX + 1, "replays what is kept");
  await until(() => bob.lastSeq === sender.lastSeq, "the replay");
  assert.equal(bob.messages.length, HISTORY_MAX);
  assert.deepEqual(bob.messages.map((m) => m.body), bodies.slice(-HISTORY_MAX));
});

test("a lost connection (1006) is retried with exponential backoff and full jitter, reset by a welcome", async () => {
  const room = uniqueRoom("backoff");
  const alice = track(await joined({ room, random: () => 1 }));
  await control("kill", "blue");
  await until(() => alice.of("reconnecting").length >= 3, "three failed reconnects", 20000);
  await control("start", "blue");
  await until(() => alice.of("open").length === 2, "welcome after the restart", 30000);
  const delays = alice.of("reconnecting").map((r) => r.delay);
  delays.forEach((delay, i) => assert.equal(delay, Math.min(15000, BACKOFF_BASE_MS * 2 ** i)));
  assert.ok(alice.of("reconnecting").every((r) => r.code === 1006 && !r.release));
  assert.equal(alice.attempt, 0, "a welcome resets the backoff");
  assert.equal(alice.of("close").length, 0);
});

test("backoff delays are random below an exponential bound, up to the cap", async () => {
  const draws = [1, 0.5, 1, 1, 0.25, 1];
  class Direct extends WebSocket {
    constructor(url) {
      super(url, { headers: { origin: ORIGIN } });
    }
  }
  // Nothing listens on port 9 here: every attempt is refused, which a WebSocket reports as 1006.
  const client = track(new RoomClient({ room: "nowhere", base: "ws://127.0.0.1:9", WebSocket: Direct,
                                        random: () => draws.shift() ?? 1, baseDelayMs: 10, maxDelayMs: 40 }));
  const delays = [];
  client.addEventListener("reconnecting", (e) => delays.push(e.detail.delay));
  client.connect();
  await until(() => delays.length >= 6, "six attempts");
  assert.deepEqual(delays.slice(0, 6), [10, 10, 40, 40, 10, 40]);
});

test("a message sent while reconnecting goes out once after the welcome", async () => {
  const room = uniqueRoom("queued");
  const alice = track(await joined({ room }));
  const bob = track(await joined({ room }));
  const restarted = control("restart", "blue");
  await until(() => alice.of("reconnecting").length === 1, "alice: the server's 1012");
  assert.equal(alice.of("reconnecting")[0].code, 1012);
  assert.ok(alice.send("while-away"));
  await restarted;
  await until(() => bob.messages.length === 1, "bob: the queued message", 20000);
  await sleep(200);
  assert.deepEqual(bob.messages.map((m) => m.body), ["while-away"]);
  assertComplete(assert, alice, ["while-away"]);
});

test("a message the server never published before it died is sent again after the resume", async () => {
  const room = uniqueRoom("inflight");
  const alice = track(await joined({ room }));
  const bob = track(await joined({ room }));
  await sendAll(alice, "before", 2);
  await until(() => bob.messages.length === 2, "bob: 2 messages");
  await control("pause", "blue");
  assert.ok(alice.send("in-flight"));
  assert.equal(alice.outbox.length, 1);
  await control("kill", "blue");
  await control("start", "blue");
  await until(() => bob.messages.length === 3 && alice.messages.length === 3, "the resent message", 30000);
  await sleep(200);
  assertComplete(assert, bob, ["before-0", "before-1", "in-flight"]);
  assertComplete(assert, alice, ["before-0", "before-1", "in-flight"]);
  assert.equal(alice.outbox.length, 0);
  assert.deepEqual(alice.final().map((s) => s.state), ["published", "published", "published"]);
});

test("a server that stops answering is given up by the heartbeat, and the client resumes elsewhere", async () => {
  const room = uniqueRoom("silent");
  route.color = "green";
  const bob = track(await joined({ room }));
  route.color = "blue";
  const alice = track(await joined({ room, heartbeatMs: 300 }));
  paused = true;
  await control("pause", "blue"); // no FIN, no close frame: as if its machine vanished
  await until(() => alice.of("reconnecting").length >= 2, "the lost connection and a handshake that hangs");
  const [lost, hung] = alice.of("reconnecting");
  assert.equal(lost.code, 1006);
  assert.equal(lost.reason, "no answer from the server");
  assert.equal(hung.reason, "no answer from the server", "a handshake without an answer is given up too");
  const bodies = await sendAll(bob, "meanwhile", 3);
  route.color = "green";
  await until(() => alice.messages.length === 3, "alice: the messages sent while she was away", 20000);
  assert.equal(alice.welcome.color, "green");
  assertComplete(assert, alice, bodies);
});

test("a burst of sends is paced within the server's rate limit: every one published, none refused", async () => {
  const room = uniqueRoom("burst");
  const alice = track(await joined({ room }));
  const started = Date.now();
  const ids = [];
  for (let i = 0; i < 80; i += 1) ids.push(alice.send(`burst-${i}`)); // twice the server's burst of 40
  await until(() => alice.final().length === ids.length, "an answer for every message", 20000);
  const seconds = (Date.now() - started) / 1000;
  assert.deepEqual(alice.final().map((s) => [s.id, s.state]), ids.map((id) => [id, "published"]));
  assert.equal(alice.of("error").length, 0, JSON.stringify(alice.of("error")));
  assert.ok(seconds >= (80 - 30) / 15 - 0.5, `paced at 15/s after a burst of 30: ${seconds} s`);
  assertComplete(assert, alice, ids.map((_, i) => `burst-${i}`));
  assert.deepEqual(alice.messages.map((m) => m.id), ids, "in the order sent");
});

test("a close for breaking the rules (1008) ends the client: no reconnect", async () => {
  const room = uniqueRoom("policy");
  const alice = track(await joined({ room }));
  // The client paces its own frames; these go around it, straight to the socket: exactly the frames
  // that close it (the burst of 40, then 21 refused in a row), back to back. More would still be in
  // flight when the server closes, and be answered with a TCP reset that discards the close frame:
  // the client would see 1006.
  const ping = '{"type":"ping"}';
  for (let i = 0; i < 40; i += 1) alice.ws.send(ping);
  const id = alice.send("caught in it"); // the client's bucket is full; the server's is empty
  for (let i = 0; i < 20; i += 1) alice.ws.send(ping);
  const summary = () => alice.events.map((e) => `${e.type}:${e.detail.code ?? e.detail.error ?? ""}`).join(" ");
  await until(() => alice.of("close").length === 1, "close", 5000).catch((error) => {
    throw new Error(`${error.message}; events: ${summary()}; state ${alice.state}`);
  });
  assert.equal(alice.of("close")[0].code, 1008);
  assert.ok(alice.of("error").some((e) => e.error === "rate_limited"));
  await sleep(BACKOFF_BASE_MS + 200);
  assert.equal(alice.of("reconnecting").length, 0);
  assert.equal(alice.state, "closed");
  assert.deepEqual(alice.final().map((s) => [s.id, s.state, s.error]), [[id, "failed", "rate_limited"]]);
  assert.equal(alice.send("after"), false);
});

test("close() leaves the room for good", async () => {
  const alice = track(await joined({ room: uniqueRoom("bye") }));
  alice.close();
  assert.equal(alice.state, "closed");
  assert.deepEqual(alice.of("close").map((c) => c.code), [1000]);
  await sleep(300);
  assert.equal(alice.of("reconnecting").length, 0);
});

test("bad options are refused with a clear error", () => {
  assert.throws(() => new RoomClient({ room: "a b", base: SERVERS.blue }), /room must match/);
  assert.throws(() => new RoomClient({ room: "a", base: SERVERS.blue, since: -1 }), /since must be/);
  assert.throws(() => new RoomClient({ room: "a" }), /pass `base`/);
  assert.throws(() => new RoomClient({ room: "a", base: SERVERS.blue, epoch: "E1" }), /epoch must .* come with since/);
  assert.throws(() => new RoomClient({ room: "a", base: SERVERS.blue, since: 1, epoch: "E-1" }), /epoch must/);
  assert.throws(() => new RoomClient({ room: "a", base: SERVERS.blue, sender: "too-short" }), /sender must/);
});

test("presence: a release shows no member leaving or joining, and the list is whole after it", async () => {
  const room = uniqueRoom("presence");
  const members = [];
  for (let i = 0; i < 3; i += 1) {
    const client = recorded({ room });
    client.changes = [];
    for (const type of ["join", "leave"]) client.addEventListener(type, (e) => client.changes.push({ type, ...e.detail }));
    client.connect();
    members.push(track(client));
  }
  await until(() => members.every((c) => c.of("open").length === 1 && c.anonymous === 3), "everyone listed");
  const before = members.map((c) => c.changes.length);
  route.color = "green";
  drained = true;
  await control("drain", "blue", "seconds=0.5");
  for (const client of members) await until(() => client.of("open").length === 2, "welcome from green");
  await sleep(Number(process.env.WSAPP_PRESENCE_SETTLE_MS || 5000));
  for (const [i, client] of members.entries()) {
    assert.deepEqual(client.changes.slice(before[i]), [], "no leave or join across the release");
    assert.equal(client.anonymous, 3);
    assert.deepEqual(client.roster(), { users: [], anonymous: 3 });
  }
  // A member that really leaves is seen leaving, after the grace.
  members[2].close();
  await until(() => members[0].changes.some((c) => c.type === "leave"), "a real leave", 15000);
  assert.equal(members[0].anonymous, 2);
});
