// The chat page at /: a room, a name, the room's messages, built on RoomClient (wsapp.js).
// A message body is JSON {"name", "text"}; bodies from other clients are shown as they are.
import { RoomClient } from "./wsapp.js";

const $ = (id) => document.getElementById(id);
const NAME_KEY = "wsapp.name";
let client = null;

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
  who.textContent = name ?? `session ${frame.session}`;
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

function setComposer(enabled) {
  for (const element of $("composer").elements) element.disabled = !enabled;
}

function join(room, name) {
  if (client) client.close();
  $("messages").replaceChildren();
  localStorage.setItem(NAME_KEY, name);
  history.replaceState(null, "", `?room=${encodeURIComponent(room)}`);
  document.title = `${room} · wsapp chat`;
  setStatus("connecting", `Joining ${room}…`);
  const current = (client = new RoomClient({ room }));
  const on = (type, handler) => current.addEventListener(type, (e) => client === current && handler(e.detail));
  on("open", (welcome) => {
    showServer(welcome);
    setStatus("open", `In ${room} as ${name}.`);
    setComposer(true);
  });
  on("message", render);
  on("reconnecting", ({ release, delay }) => {
    // A release is routine: the client resumes where it left off and nothing is lost.
    setStatus("reconnecting", release ? "Reconnecting…" : `Connection lost; reconnecting in ${Math.ceil(delay / 1000)} s…`);
  });
  on("resync", ({ from }) => setStatus("open", `Some older messages are no longer kept; showing from #${from}.`));
  on("error", ({ error, detail }) => setStatus("warning", `Not sent: ${detail || error}`));
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
  if (!text.trim() || !client) return;
  if (client.send(JSON.stringify({ name: $("name").value.trim(), text }))) $("text").value = "";
});

const params = new URLSearchParams(location.search);
$("room").value = params.get("room") || "lobby";
$("name").value = params.get("name") || localStorage.getItem(NAME_KEY) || "";
if ($("name").value) {
  join($("room").value, $("name").value);
} else {
  $("name").focus();
}
