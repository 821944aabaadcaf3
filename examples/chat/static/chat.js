// The chat page: rooms, messages and presence over rtserver.js.
//
// Everything users typed is put in the page with textContent (never innerHTML), so a
// message like <img src=x onerror=...> shows as text and runs nothing.

import { connect } from "/rtserver.js";

const $ = (id) => document.getElementById(id);
const me = document.body.dataset.nick;
const maxMessage = Number($("text").dataset.max) || 500;
const rooms = new Set(document.body.dataset.rooms.split(",").filter(Boolean));

const rt = connect("/ws");
let current = null; // {name, channel}

// -- small DOM helpers ---------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(state, text) {
  const status = $("status");
  status.dataset.state = state;
  status.textContent = text;
}

function scrollToEnd() {
  const list = $("messages");
  list.scrollTop = list.scrollHeight;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

// -- rooms ------------------------------------------------------------------------------

function roomFromHash() {
  const name = decodeURIComponent(location.hash.slice(1));
  return /^[a-z0-9][a-z0-9-]{0,31}$/.test(name) ? name : "lobby";
}

function renderRooms() {
  const list = $("rooms");
  list.replaceChildren(
    ...[...rooms].sort().map((name) => {
      const item = el("li");
      const link = el("a", name === current?.name ? "active" : "", `#${name}`);
      link.href = `#${name}`;
      item.append(link);
      return item;
    }),
  );
}

const roomList = rt.join("rooms", { history: 100 });
roomList.on("message", (msg) => {
  if (msg.data && typeof msg.data.room === "string") {
    rooms.add(msg.data.room);
    renderRooms();
  }
});

$("new-room").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("room-name");
  const name = input.value.trim().toLowerCase();
  if (!name) return;
  const open = () => {
    input.value = "";
    location.hash = name;
  };
  if (rooms.has(name)) return open();
  roomList.publish({ create: name }).then(open, (err) => {
    if (err.code === "exists") open();
    else showError(err.message);
  });
});

function enterRoom(name) {
  if (current?.name === name) return;
  if (current) current.channel.leave();
  showError("");
  rooms.add(name);
  $("messages").replaceChildren();
  $("room-title").textContent = `#${name}`;
  $("leave").hidden = false;
  $("composer").hidden = false;
  const channel = rt.join(`room:${name}`, { history: 50 });
  current = { name, channel };
  channel.on("message", (msg) => addMessage(msg));
  channel.on("presence", (members) => renderPresence(members));
  channel.on("gap", () => addNotice("Some messages sent while you were away could not be recovered."));
  channel.on("error", (err) => showError(err.message));
  renderRooms();
}

$("leave").addEventListener("click", () => {
  if (!current) return;
  current.channel.leave();
  current = null;
  history.replaceState(null, "", location.pathname);
  $("messages").replaceChildren();
  $("room-title").textContent = "No room";
  $("leave").hidden = true;
  $("composer").hidden = true;
  renderPresence({});
  addNotice("You left the room. Pick one on the left.");
  renderRooms();
});

window.addEventListener("hashchange", () => enterRoom(roomFromHash()));

// -- messages and presence --------------------------------------------------------------

function addMessage(msg) {
  const { nick, text, ts } = msg.data ?? {};
  if (typeof text !== "string") return;
  const item = el("li", nick === me ? "message mine" : "message");
  item.dataset.id = String(msg.id);
  const head = el("div", "meta");
  head.append(el("span", "nick", nick ?? "?"));
  if (typeof ts === "number") {
    const time = el("time", "time", timeFormat.format(new Date(ts)));
    time.dateTime = new Date(ts).toISOString();
    head.append(time);
  }
  item.append(head, el("p", "text", text));
  $("messages").append(item);
  scrollToEnd();
}

function addNotice(text) {
  $("messages").append(el("li", "notice", text));
  scrollToEnd();
}

function renderPresence(members) {
  const nicks = [...new Set(Object.values(members).map((info) => info?.nick).filter(Boolean))];
  nicks.sort((a, b) => a.localeCompare(b));
  $("presence").replaceChildren(...nicks.map((nick) => el("li", nick === me ? "mine" : "", nick)));
  $("count").textContent = String(nicks.length);
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("text");
  const text = input.value;
  if (!text.trim() || !current) return;
  if (text.length > maxMessage) {
    showError(`Messages are at most ${maxMessage} characters (yours has ${text.length}).`);
    return;
  }
  // Cleared now, not on the server's answer: what the user types meanwhile (the next
  // message) must not be wiped by the previous one's acknowledgement.
  input.value = "";
  current.channel.publish(text).then(
    () => showError(""),
    (err) => {
      if (!input.value) input.value = text; // refused: give the text back to edit
      showError(err.message);
    },
  );
});

// -- the connection -------------------------------------------------------------------

rt.on("open", () => setStatus("online", "Connected"));
rt.on("reconnecting", ({ delay }) =>
  setStatus("offline", `Connection lost: reconnecting in ${Math.ceil(delay / 1000)} s…`),
);
// The session ended (a logout in another tab, expiry) or was never there: log in again.
rt.on("signed-out", () => location.assign("/login"));
rt.on("closed", ({ code }) => {
  if (code !== 4401) setStatus("offline", "Disconnected. Reload the page to reconnect.");
});
rt.on("error", (err) => showError(err.message));

enterRoom(roomFromHash());
