// The room page: one WebSocket speaking protocol v1 (docs/protocol.md).
// Every piece of user text goes into the page through textContent, never as markup.

import { nameProblem, rememberName, storedName, trimName } from "./names.js";

const BACKOFF_BASE_MS = 500;
const BACKOFF_CAP_MS = 10_000;
const MAX_ATTEMPTS = 40; // about five minutes of retries, then "offline" and a button
// Attempts that fail before opening, while none of this page's connections has opened yet,
// before the page stops retrying: the browser cannot tell an HTTP 4xx/5xx answer to the upgrade from an unreachable server.
const MAX_FIRST_ATTEMPTS = 3;
const COMMAND = /^\/stock=/i; // sent like a message, answered by a bot event, never echoed

const $ = (id) => document.getElementById(id);
const chat = $("chat");
const log = $("log");
const statusEl = $("status");
const membersEl = $("members");
const meEl = $("me");
const retryButton = $("retry");
const nameForm = $("name-form");
const nameInput = $("name");
const nameError = $("name-error");
const composer = $("composer");
const textInput = $("text");
const sendButton = $("send");

const room = chat.dataset.room;
const pageId = Math.random().toString(36).slice(2, 10);
const state = {
  user: "",
  socket: null,
  lastSeq: 0, // highest message seq shown; anything at or below it is a duplicate
  epoch: "", // the room epoch lastSeq counts in (welcome.epoch)
  attempt: 0, // retries since the last welcome (or Reconnect)
  opened: false, // some connection of this page has opened
  retryTimer: 0,
  countdownTimer: 0,
  sent: 0,
  pending: new Map(), // command id -> its <li>, until the bot answers
};

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function timeEl(ts) {
  const date = new Date(Number.isFinite(ts) ? ts : Date.now());
  const node = el("time", "ts", date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  node.dateTime = date.toISOString();
  return node;
}

function meta(user, ts, badge) {
  const node = el("div", "meta");
  node.append(el("span", "user", user));
  if (badge) node.append(el("span", "badge", badge));
  node.append(timeEl(ts));
  return node;
}

function append(item) {
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
  log.append(item);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function notice(text, ts, className = "notice") {
  const item = el("li", className);
  item.append(el("span", "text", text), timeEl(ts));
  append(item);
}

function setStatus(name, label = name) {
  statusEl.dataset.state = name;
  statusEl.textContent = label;
  sendButton.disabled = name !== "online";
  retryButton.hidden = name !== "offline" || !state.user;
}

function setMembers(count) {
  if (Number.isInteger(count)) membersEl.textContent = `${count} online`;
}

function showMessage(ev) {
  if (!Number.isInteger(ev.seq) || ev.seq <= state.lastSeq) return;
  state.lastSeq = ev.seq;
  const item = el("li", ev.user === state.user ? "msg own" : "msg");
  item.dataset.seq = String(ev.seq);
  item.append(meta(ev.user, ev.ts), el("div", "text", ev.text));
  append(item);
}

function showCommand(id, text) {
  const item = el("li", "command own pending");
  item.append(meta(state.user, Date.now(), "command"), el("div", "text", text));
  state.pending.set(id, item);
  append(item);
}

function settle(id, outcome) {
  const item = state.pending.get(id);
  if (!item) return;
  state.pending.delete(id);
  item.classList.replace("pending", outcome);
}

function showBot(ev) {
  const item = el("li", ev.ok ? "bot" : "bot failed");
  item.append(meta(ev.user, ev.ts, "bot"), el("div", "text", ev.text));
  append(item);
  settle(ev.reply_to, ev.ok ? "answered" : "failed");
}

function showError(ev) {
  const item = el("li", "error");
  const code = String(ev.code || "error").replaceAll("_", " ");
  item.append(el("span", "badge", code), el("span", "text", ev.detail || ""));
  append(item);
  settle(ev.reply_to, "failed");
}

function onWelcome(ev) {
  // Another epoch: the room started over (reaped or server restarted) and its seq numbers
  // with it. The history then holds all it has; count afresh.
  if (ev.reset) {
    state.lastSeq = 0;
    notice("The room restarted: messages sent while you were away may be missing.", Date.now());
  }
  if (typeof ev.epoch === "string") state.epoch = ev.epoch;
  state.user = ev.user;
  meEl.textContent = `as ${ev.user}`;
  meEl.hidden = false;
  setMembers(ev.members);
  for (const message of ev.history || []) showMessage(message);
  state.attempt = 0;
  setStatus("online");
}

function handle(ev) {
  switch (ev.type) {
    case "welcome":
      onWelcome(ev);
      break;
    case "message":
      showMessage(ev);
      break;
    case "join":
    case "leave":
      setMembers(ev.members);
      notice(`${ev.user} ${ev.type === "join" ? "joined" : "left"}`, ev.ts);
      break;
    case "bot":
      showBot(ev);
      break;
    case "error":
      showError(ev);
      break;
  }
}

function clearTimers() {
  clearTimeout(state.retryTimer);
  clearInterval(state.countdownTimer);
}

function connect() {
  clearTimers();
  setStatus("connecting");
  const params = new URLSearchParams({ room, user: state.user });
  if (state.epoch) {
    params.set("since", String(state.lastSeq));
    params.set("epoch", state.epoch);
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws?${params}`);
  state.socket = socket;
  socket.addEventListener("open", () => {
    state.opened = true;
  });
  socket.addEventListener("message", (event) => {
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    for (const ev of Array.isArray(data) ? data : [data]) {
      if (ev && typeof ev === "object") handle(ev);
    }
  });
  socket.addEventListener("close", (event) => onClose(socket, event));
}

function onClose(socket, event) {
  if (socket !== state.socket) return;
  state.socket = null;
  if (statusEl.dataset.state === "online") notice("Connection lost.", Date.now());
  for (const id of [...state.pending.keys()]) settle(id, "lost");
  if (event.code === 1008) {
    goOffline(`The server closed the connection: ${event.reason || "policy violation"}.`);
  } else if (!navigator.onLine) {
    goOffline("No network connection.");
  } else if (!state.opened && state.attempt + 1 >= MAX_FIRST_ATTEMPTS) {
    goOffline(
      "Could not connect: the server refused the connection or could not be reached. " +
        "Check the name and the room, or try Reconnect later.",
    );
  } else {
    if (event.code === 1009) notice("That message was too big for the server.", Date.now(), "error");
    scheduleReconnect();
  }
}

function scheduleReconnect() {
  if (state.attempt >= MAX_ATTEMPTS) {
    goOffline("The server is unreachable.");
    return;
  }
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** state.attempt);
  const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
  const due = Date.now() + delay;
  state.attempt += 1;
  const tick = () => {
    const seconds = Math.max(1, Math.ceil((due - Date.now()) / 1000));
    setStatus("reconnecting", `reconnecting in ${seconds}s`);
  };
  tick();
  state.countdownTimer = setInterval(tick, 1000);
  state.retryTimer = setTimeout(connect, delay);
}

function goOffline(reason) {
  clearTimers();
  notice(reason, Date.now(), "error");
  setStatus("offline");
}

function reconnectNow() {
  if (state.socket || !state.user) return;
  state.attempt = 0;
  connect();
}

function askName(name, problem) {
  setStatus("offline", "choose a name");
  nameInput.value = name;
  nameInput.setAttribute("aria-invalid", String(Boolean(problem)));
  nameError.textContent = problem;
  nameError.hidden = !problem;
  nameForm.hidden = false;
  nameInput.focus();
}

function start(name) {
  state.user = name;
  rememberName(name);
  const url = new URL(location.href);
  if (url.searchParams.has("user") && url.searchParams.get("user") !== name) {
    url.searchParams.set("user", name); // a reload keeps this name, not the one it replaced
    history.replaceState(null, "", url);
  }
  nameForm.hidden = true;
  composer.hidden = false;
  textInput.focus();
  connect();
}

composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = textInput.value.trim();
  const socket = state.socket;
  if (!text || !socket || socket.readyState !== WebSocket.OPEN) return;
  state.sent += 1;
  const id = `${pageId}-${state.sent}`;
  socket.send(JSON.stringify({ type: "message", text, id, sent: Date.now() }));
  if (COMMAND.test(text)) showCommand(id, text);
  textInput.value = "";
});

// A name the server would refuse is never sent: the name form says why instead.
function choose(raw) {
  const name = trimName(raw);
  const problem = nameProblem(name);
  if (problem) askName(name, problem);
  else start(name);
}

nameForm.addEventListener("submit", (event) => {
  event.preventDefault();
  choose(nameInput.value);
});

retryButton.addEventListener("click", reconnectNow);
window.addEventListener("online", reconnectNow);

const requested = trimName(new URLSearchParams(location.search).get("user") || storedName());
if (requested) choose(requested);
else askName("", "");
