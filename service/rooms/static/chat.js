// The chat page at /: a room, a name, the room's messages, built on RoomClient (wsapp.js).
// A message body is JSON {"name", "text"}; bodies from other clients are shown as they are.
// What the user sends leaves the input at once and waits under the list ("#outbox", "sending…")
// until the room has it; if it cannot be sent it stays there, "not sent", with Retry and Discard:
// nothing typed is lost without the user seeing it. Retry sends it under its first id, with the
// page's one sender token, so a message that did get through is not published twice.
import { RoomClient, senderToken } from "./wsapp.js";

const $ = (id) => document.getElementById(id);
const NAME_KEY = "wsapp.name";
// Why a message was not sent, for the user (the error codes of docs/protocol.md, and wsapp.js's own).
const NOT_SENT = {
  rate_limited: "too fast",
  body_too_long: "too long",
  unavailable: "the server could not take it",
  dropped: "too many messages waiting",
  closed: "disconnected",
};
const SENDER = senderToken(); // one per page, across joins: a retry's id is scoped to it
let client = null;
let joinedRoom = null;

function parseBody(body) {
  try {
    const value = JSON.parse(body);
    if (value && typeof value.text === "string") return { name: String(value.name || "anonymous"), text: value.text };
  } catch {
    // not ours: show it as plain text
  }
  return { name: null, text: body };
}

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

function showServer(welcome) {
  document.body.dataset.color = welcome.color;
  $("server-color").textContent = welcome.color;
  if (welcome.version) $("server-version").textContent = welcome.version;
  $("server-replica").textContent = welcome.replica;
}

function render(frame) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const { name, text } = parseBody(frame.body);
  const item = document.createElement("li");
  item.dataset.seq = frame.seq;
  if (frame.session === client.welcome?.session || name === $("name").value) item.classList.add("mine");
  const who = document.createElement("span");
  who.className = "who";
  // A name the server took from the sender's ticket is shown as such; one in the body is only typed.
  if (typeof frame.name === "string") who.classList.add("verified");
  who.textContent = typeof frame.name === "string" ? frame.name : (name ?? `session ${frame.session}`);
  const when = document.createElement("time");
  const date = new Date(frame.ts * 1000);
  when.dateTime = date.toISOString();
  when.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  const what = document.createElement("p");
  what.textContent = text;
  item.append(who, when, what);
  list.append(item);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

/** Own messages not yet in the room: the item for message `id`, if any. */
function outboxItem(id) {
  return [...$("outbox").children].find((item) => item.dataset.id === id);
}

/** Send `text` as this page's message (again: under `id`); "sending…" until the room has it. */
function sendText(text, id) {
  id = client?.send(JSON.stringify({ name: $("name").value.trim(), text }), id && { id });
  if (!id) return false;
  const item = document.createElement("li");
  item.dataset.id = id;
  const what = document.createElement("p");
  what.textContent = text;
  const state = document.createElement("span");
  state.className = "state";
  state.textContent = "sending…";
  item.append(what, state);
  $("outbox").append(item);
  return true;
}

/** The room refused it, or it could not be sent: say so, and offer to send it again. */
function notSent(id, { error, uncertain }) {
  const item = outboxItem(id);
  if (!item) return;
  item.className = "failed";
  item.querySelector(".state").textContent = `${uncertain ? "maybe not sent" : "not sent"}: ${NOT_SENT[error] || error}`;
  const retry = document.createElement("button");
  retry.type = "button";
  retry.textContent = "Retry";
  retry.addEventListener("click", () => {
    if (sendText(item.querySelector("p").textContent, id)) item.remove();
  });
  const discard = document.createElement("button");
  discard.type = "button";
  discard.className = "discard";
  discard.textContent = "Discard";
  discard.addEventListener("click", () => item.remove());
  item.append(retry, discard);
}

/** Who is in the room (wsapp.js keeps it: a release changes nothing here). */
function showMembers({ users, anonymous }) {
  $("members").hidden = false;
  $("member-list").replaceChildren(...users.map((user) => {
    const item = document.createElement("li");
    item.textContent = user.name;
    item.dataset.user = user.id;
    return item;
  }));
  $("anonymous-count").textContent = anonymous ? `${anonymous} anonymous` : "";
}

function setComposer(enabled) {
  for (const element of $("composer").elements) element.disabled = !enabled;
}

/** With accounts (a database): a connection ticket for the room, or null (not logged in: anonymous). */
async function roomTicket(room) {
  if (document.body.dataset.accounts !== "on") return null;
  const answer = await fetch(`/ticket/?room=${encodeURIComponent(room)}`, { credentials: "same-origin" });
  if (answer.status === 401) return null;
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) throw new Error(body.detail || `the ticket request failed (${answer.status})`);
  return body;
}

async function join(room, name) {
  let ticket = null;
  try {
    ticket = await roomTicket(room);
  } catch (err) {
    setStatus("warning", `Cannot join ${room}: ${err.message}`);
    return;
  }
  if (client) client.close(); // its unsent messages turn "not sent", to retry in the same room
  $("messages").replaceChildren();
  $("member-list").replaceChildren();
  $("anonymous-count").textContent = "";
  if (room !== joinedRoom) $("outbox").replaceChildren();
  joinedRoom = room;
  localStorage.setItem(NAME_KEY, name);
  history.replaceState(null, "", `?room=${encodeURIComponent(room)}`);
  document.title = `${room} · wsapp chat`;
  setStatus("connecting", `Joining ${room}…`);
  const current = (client = new RoomClient({ room, sender: SENDER, ticket: ticket?.ticket, ticketExpires: ticket?.expires }));
  const on = (type, handler) => current.addEventListener(type, (e) => client === current && handler(e.detail));
  on("open", (welcome) => {
    showServer(welcome);
    setStatus("open", `In ${room} as ${ticket?.name ?? name}.`);
    setComposer(true);
  });
  on("message", (frame) => {
    render(frame);
    outboxItem(frame.id)?.remove(); // one of ours: it is in the list now
  });
  on("presence", showMembers);
  on("status", ({ id, state, ...detail }) => {
    if (state === "published") outboxItem(id)?.remove(); // its message is, or was, in the list
    else if (state === "failed") notSent(id, detail);
  });
  on("reconnecting", ({ release, delay }) => {
    // A release is routine: the client resumes where it left off and nothing is lost.
    setStatus("reconnecting", release ? "Reconnecting…" : `Connection lost; reconnecting in ${Math.ceil(delay / 1000)} s…`);
  });
  on("resync", ({ from }) => setStatus("open", `Some older messages are no longer kept; showing from #${from}.`));
  on("error", ({ error, detail, id }) => {
    if (id === undefined) setStatus("warning", `Error: ${detail || error}`); // a message's own shows at it
  });
  on("close", ({ code }) => {
    setStatus("closed", `Disconnected (${code}). Join to try again.`);
    setComposer(false);
  });
  current.connect();
}

$("join").addEventListener("submit", (event) => {
  event.preventDefault();
  join($("room").value, $("name").value.trim());
  $("text").focus();
});

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  if (sendText(text)) $("text").value = "";
});

const params = new URLSearchParams(location.search);
$("room").value = params.get("room") || "lobby";
$("name").value = params.get("name") || localStorage.getItem(NAME_KEY) || "";
if ($("name").value) {
  join($("room").value, $("name").value);
} else {
  $("name").focus();
}
