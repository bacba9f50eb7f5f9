// Shared by the client tests: the servers tests/integration/test_js_client.py started, and waits.
import { RoomClient } from "../../service/rooms/static/wsapp.js";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run these tests through tests/integration/test_js_client.py`);
  return value;
}

export const SERVERS = { blue: required("WSAPP_BLUE"), green: required("WSAPP_GREEN") };
export const ORIGIN = required("WSAPP_ORIGIN");
export const CONTROL = required("WSAPP_CONTROL");
export const HISTORY_MAX = Number(required("WSAPP_HISTORY_MAX"));

// Which color new connections reach, as Nginx's active color does.
export const route = { color: "blue" };

/** Node's WebSocket, sending the Origin header a browser would send, to the routed color. */
export class RoutedWebSocket extends WebSocket {
  constructor(url) {
    const target = url.replace(/^ws:\/\/[^/]+/, SERVERS[route.color]);
    super(target, { headers: { origin: ORIGIN } });
    RoutedWebSocket.urls.push(target);
  }
}
RoutedWebSocket.urls = [];

export async function control(action, color = "blue", query = "") {
  const response = await fetch(`${CONTROL}/${action}/${color}${query ? `?${query}` : ""}`, { method: "POST" });
  const body = await response.json();
  if (!response.ok) throw new Error(`control ${action} ${color}: ${body.error}`);
}

let rooms = 0;
export function uniqueRoom(prefix) {
  rooms += 1;
  return `${prefix}-${process.pid}-${Date.now() % 1e6}-${rooms}`;
}

export async function until(predicate, what, timeoutMs = 15000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A RoomClient that records every event it emits. */
export function recorded(options) {
  const client = new RoomClient({ base: SERVERS.blue, WebSocket: RoutedWebSocket, ...options });
  client.events = [];
  client.messages = [];
  for (const type of ["open", "message", "status", "dropped", "reconnecting", "resync", "error", "close"]) {
    client.addEventListener(type, (event) => {
      client.events.push({ type, detail: event.detail });
      if (type === "message") client.messages.push(event.detail);
    });
  }
  client.of = (type) => client.events.filter((event) => event.type === type).map((event) => event.detail);
  // The answers about this client's messages: every status but `sent`.
  client.final = () => client.of("status").filter((status) => status.state !== "sent");
  return client;
}

export async function joined(options, opens = 1) {
  const client = recorded(options).connect();
  await until(() => client.of("open").length >= opens, `${options.room}: welcome`);
  return client;
}

/** Every message exactly once, in seq order, and no gap from the first. */
export function assertComplete(assert, client, bodies) {
  const seqs = client.messages.map((m) => m.seq);
  for (let i = 1; i < seqs.length; i += 1) {
    assert.equal(seqs[i], seqs[i - 1] + 1, `seq ${seqs[i - 1]} then ${seqs[i]}`);
  }
  const got = client.messages.map((m) => m.body);
  assert.deepEqual([...got].sort(), [...bodies].sort(), "every message exactly once");
}
