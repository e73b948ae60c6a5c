// The room page: one WebSocket speaking protocol v1 (docs/protocol.md).
// Every piece of user text goes into the page through textContent, never as markup.

import { reconnectDelay } from "./backoff.js";
import { messageProblem, utf8Bytes } from "./limits.js";
import { nameProblem, rememberName, storedName, trimName } from "./names.js";
import { rememberToken, storedToken, tokenProblem, tokenRoles } from "./tokens.js";

// Reconnect attempts in a row before "offline" and a button: about five minutes (once at the
// 30 s ceiling, an attempt waits 15 s on average).
const MAX_ATTEMPTS = 25;
const STABLE_MS = 10_000; // a connection that stayed up this long starts the backoff afresh
// Attempts that fail before opening while the server says it is ready (/readyz), while none
// of this page's connections has opened yet, before the page stops retrying: the browser
// cannot tell an HTTP 4xx/5xx answer to the upgrade from an unreachable server. Attempts
// made while the server says it is unavailable do not count, and neither does the one that
// finds it back: that one was refused while it was still down.
const MAX_FIRST_ATTEMPTS = 3;
// A command word opening the text, as the server reads it (server/bot/commands.py): /stock=,
// /help, /nope... sent like a message, answered by a bot event, never echoed.
const COMMAND = /^\/[A-Za-z][A-Za-z0-9_-]*(?=$|\s|=)/;
const RESEND_MS = 400; // gap between two resends of text the rate limiter refused
const ONLINE_SHOWN = 100; // most names the online list shows; the count covers the rest

const $ = (id) => document.getElementById(id);
const chat = $("chat");
const log = $("log");
const statusEl = $("status");
const membersEl = $("members");
const onlineList = $("online-list");
const onlineMore = $("online-more");
const meEl = $("me");
const retryButton = $("retry");
const nameForm = $("name-form");
const nameInput = $("name");
const nameError = $("name-error");
const composer = $("composer");
const textInput = $("text");
const sendButton = $("send");

const room = chat.dataset.room;
const tokenMode = chat.dataset.auth === "token"; // the server names us from a signed token
const TOKEN_EXPIRED = 4001; // close code: the token reached its exp
// Close codes 4500-4999: the server (its API or a moderator) ended this page's stay; the page
// says why and does not reconnect by itself (docs/api.md, "Close codes").
const ENDED = {
  4500: "You were disconnected by the server.",
  4501: "You were removed from this room by a moderator.",
  4502: "You are banned from this room for now.",
};
const BAN_SECONDS = 3600; // how long a moderator's ban from the online list lasts
const pageId = Math.random().toString(36).slice(2, 10);
const state = {
  user: "",
  socket: null,
  lastSeq: 0, // highest message seq shown; anything at or below it is a duplicate
  epoch: "", // the room epoch lastSeq counts in (welcome.epoch)
  attempt: 0, // reconnects since the last connection that stayed up (or Reconnect)
  opened: false, // some connection of this page has opened
  connects: 0, // connections this page started: tells a stale close apart
  welcomedAt: 0, // when the current connection got its welcome (0: none yet)
  limits: null, // what the server takes from a connection (welcome.limits, less tooBig)
  tooBig: Infinity, // the smallest message (UTF-8 bytes) refused with 1009: never sent again
  outage: "", // why the server said it is unavailable, while it does
  refused: 0, // attempts that failed while the server said it was ready (MAX_FIRST_ATTEMPTS)
  retryTimer: 0,
  countdownTimer: 0,
  sent: 0,
  pending: new Map(), // command id -> its <li>, until the bot answers
  mine: new Set(), // ids of the messages this page sent: what "own" means, never the name
  typed: 0, // texts the user sent: each one's place in the order they were typed
  unconfirmed: new Map(), // id -> {text, order, bytes} sent, neither echoed nor refused yet
  waiting: [], // {text, order, item} refused as rate_limited, resent in typing order
  resendTimer: 0,
  members: null, // the room's member count from the last welcome or presence event; null: unknown
  online: new Set(), // names shown in the online list
  seenOwnJoin: false, // presence events before our own join are already in the welcome
  moderator: false, // the token claims the role "mod": delete any message, kick, ban
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
  // Text still waiting to be sent stays at the bottom, below everything that arrived.
  const firstWaiting = state.waiting.length ? state.waiting[0].item : null;
  if (firstWaiting && !item.classList.contains("waiting")) log.insertBefore(item, firstWaiting);
  else log.append(item);
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function notice(text, ts, className = "notice") {
  const item = el("li", className);
  item.append(el("span", "text", text), timeEl(ts));
  append(item);
}

function canJoin() {
  return Boolean(tokenMode ? state.token && !tokenProblem(state.token) : state.user);
}

function online() {
  return statusEl.dataset.state === "online";
}

function updateSend() {
  sendButton.disabled = !online() || !textInput.value.trim();
}

function setStatus(name, label = name) {
  statusEl.dataset.state = name;
  statusEl.textContent = label;
  updateSend();
  retryButton.hidden = name !== "offline" || !canJoin();
  if (name === "online") scheduleResend(0);
}

// A request to the server about another member or message (docs/protocol.md, "Moderation
// requests"); the server checks the page's roles again.
function moderate(frame) {
  const socket = state.socket;
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
}

function actionButton(label, title, onClick) {
  const button = el("button", "mod-action", label);
  button.type = "button";
  button.title = title;
  button.addEventListener("click", onClick);
  return button;
}

function onlineItem(name) {
  const item = el("li", name === state.user ? "me" : "");
  item.append(el("span", "name", name));
  if (state.moderator && name !== state.user) {
    item.append(
      actionButton("kick", `Remove ${name} from this room`, () =>
        moderate({ type: "kick", user: name }),
      ),
      actionButton("ban", `Ban ${name} from this room for an hour`, () =>
        moderate({ type: "ban", user: name, duration: BAN_SECONDS }),
      ),
    );
  }
  return item;
}

function renderOnline() {
  const names = [...state.online].sort((a, b) => a.localeCompare(b));
  const items = names.map(onlineItem);
  onlineList.replaceChildren(...items);
  const known = Number.isInteger(state.members);
  const more = known ? state.members - names.length : 0;
  onlineMore.textContent = more > 0 ? `and ${more} more` : "";
  onlineMore.hidden = more <= 0;
  membersEl.textContent = known ? `${state.members} online` : "–"; // unknown until a welcome
}

function setMembers(count) {
  if (Number.isInteger(count)) state.members = count;
  renderOnline();
}

function onPresence(ev) {
  // One's own name: this page is online, whatever a stale leave says (an instance that
  // stalled gets the leaves another published for its members, then their joins).
  if (ev.user === state.user) state.seenOwnJoin ||= ev.type === "join";
  else if (state.seenOwnJoin && typeof ev.user === "string") {
    if (ev.type === "leave") state.online.delete(ev.user);
    else if (state.online.size < ONLINE_SHOWN) state.online.add(ev.user);
  }
  setMembers(ev.members);
  notice(`${ev.user} ${ev.type === "join" ? "joined" : "left"}`, ev.ts);
}

function showMessage(ev) {
  if (!Number.isInteger(ev.seq) || ev.seq <= state.lastSeq) return;
  state.lastSeq = ev.seq;
  state.unconfirmed.delete(ev.id);
  const item = el("li", state.mine.has(ev.id) ? "msg own" : "msg");
  item.dataset.seq = String(ev.seq);
  item.append(meta(ev.user, ev.ts, ev.server ? "server" : ""), el("div", "text", ev.text));
  const ownByName = tokenMode && ev.user === state.user && !ev.server;
  if (state.moderator || ownByName) {
    const seq = ev.seq;
    const remove = () => moderate({ type: "delete", seq });
    item.append(actionButton("delete", "Delete this message", remove));
  }
  append(item);
}

// A message left the room's history: "message deleted" in its place.
function onDeleted(ev) {
  const item = log.querySelector(`li[data-seq="${Number(ev.seq)}"]`);
  if (!item) return;
  item.classList.add("deleted");
  item.querySelector(".text").textContent = "message deleted";
  item.querySelector(".mod-action")?.remove();
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
  const head = meta(ev.user, ev.ts, "bot");
  if (ev.asker) head.insertBefore(el("span", "asker", `to ${ev.asker}`), head.lastChild);
  item.append(head, el("div", "text", ev.text));
  state.unconfirmed.delete(ev.reply_to);
  append(item);
  settle(ev.reply_to, ev.ok ? "answered" : "failed");
}

// Text the server refused for a reason it names in an error with reply_to: rate_limited
// text waits in the log and is sent again when allowed; any other refusal puts the text back
// into an empty box (the error line says why).
function refused(ev) {
  const sent = state.unconfirmed.get(ev.reply_to);
  if (sent === undefined) return false;
  state.unconfirmed.delete(ev.reply_to);
  const { text, order } = sent;
  const command = state.pending.get(ev.reply_to);
  if (command) {
    state.pending.delete(ev.reply_to);
    command.remove();
  }
  if (ev.code !== "rate_limited") {
    giveBack(text);
    return false;
  }
  wait(text, order);
  scheduleResend(RESEND_MS);
  return true;
}

// Puts text the server will not take back into the box, unless the user typed something new.
function giveBack(text) {
  if (textInput.value) return;
  textInput.value = text;
  updateSend();
}

function showProblem(code, detail) {
  const item = el("li", "error");
  item.append(el("span", "badge", code.replaceAll("_", " ")), el("span", "text", detail));
  append(item);
}

// The server (or a proxy on the way) closed with 1009: a message was bigger than it takes,
// although the page checks welcome.limits. The biggest text still unconfirmed is that message:
// it goes back to the box with the reason, and from now on nothing that big is sent.
function refusedAsTooBig() {
  let biggest = null;
  for (const [id, sent] of state.unconfirmed) {
    if (!biggest || sent.bytes > biggest.sent.bytes) biggest = { id, sent };
  }
  if (!biggest) {
    showProblem("too_big", "The server closed the connection: a message was too big for it.");
    return;
  }
  state.unconfirmed.delete(biggest.id);
  const { text, bytes } = biggest.sent;
  state.tooBig = Math.min(state.tooBig, bytes);
  setLimits(state.limits);
  showProblem(
    "too_big",
    `The server refused this message as too big (${bytes.toLocaleString("en")} bytes as sent). ` +
      "Shorten it and send it again.",
  );
  giveBack(text);
}

// Shows `text` as waiting in the log and queues it for scheduleResend, in typing order: a
// resend that is refused again goes back before the text typed after it.
function wait(text, order) {
  const item = el("li", "msg own waiting");
  item.append(meta(state.user, Date.now(), "waiting: sending slower"), el("div", "text", text));
  const at = state.waiting.findIndex((entry) => entry.order > order);
  if (at === -1) {
    append(item);
    state.waiting.push({ text, order, item });
  } else {
    log.insertBefore(item, state.waiting[at].item);
    state.waiting.splice(at, 0, { text, order, item });
  }
}

function scheduleResend(delay) {
  if (state.resendTimer || !state.waiting.length) return;
  state.resendTimer = setTimeout(() => {
    state.resendTimer = 0;
    if (!online() || !state.waiting.length) return;
    const { text, order, item } = state.waiting.shift();
    item.remove();
    const problem = transmit(text, order);
    if (problem) {
      showProblem(problem.code, problem.detail);
      giveBack(text);
    }
    scheduleResend(RESEND_MS);
  }, delay);
}

function showError(ev) {
  if (refused(ev)) return;
  showProblem(String(ev.code || "error"), ev.detail || "");
  settle(ev.reply_to, "failed");
}

// What the page lets through: the server's limits (none known: no check) less what a 1009
// taught it.
function setLimits(given) {
  const limits = given && typeof given === "object" ? given : {};
  state.limits = {
    max_text_chars: limits.max_text_chars ?? Infinity,
    max_message_bytes: Math.min(limits.max_message_bytes ?? Infinity, state.tooBig - 1),
  };
}

function onWelcome(ev) {
  // Another epoch: the room started over (reaped or server restarted) and its seq numbers
  // with it. The history then holds all it has; count afresh.
  if (ev.reset) {
    state.lastSeq = 0;
    notice("The room restarted: messages sent while you were away may be missing.", Date.now());
  }
  if (typeof ev.epoch === "string") state.epoch = ev.epoch;
  setLimits(ev.limits);
  state.user = ev.user;
  meEl.textContent = `as ${ev.user}`;
  meEl.hidden = false;
  state.online = new Set((ev.online || []).slice(0, ONLINE_SHOWN));
  state.seenOwnJoin = false;
  setMembers(ev.members);
  const history = ev.history || [];
  // The replay covers everything since our last message seen (or the room started over):
  // text sent but never echoed is in it, or never arrived.
  const covered =
    ev.reset || (history.length ? history[0].seq <= state.lastSeq + 1 : ev.seq <= state.lastSeq);
  for (const message of history) showMessage(message);
  requeueUnconfirmed(covered);
  state.welcomedAt = Date.now();
  state.outage = "";
  setStatus("online");
}

// After a reconnect: chat text the old connection sent that neither came back nor was refused
// is sent again (first, in typing order) when the replay shows it never arrived; when the
// replay cannot tell, the page says so instead of risking a double. Commands are not resent.
function requeueUnconfirmed(covered) {
  const lost = [...state.unconfirmed.values()].filter(({ text }) => !COMMAND.test(text));
  state.unconfirmed.clear();
  if (!lost.length) return;
  if (!covered) {
    const text = `${lost.length} message(s) sent as the connection dropped may not have arrived.`;
    notice(text, Date.now(), "error");
    return;
  }
  for (const { text, order } of lost) wait(text, order);
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
      onPresence(ev);
      break;
    case "bot":
      showBot(ev);
      break;
    case "deleted":
      onDeleted(ev);
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
  state.connects += 1;
  setStatus("connecting");
  const params = new URLSearchParams(
    tokenMode ? { room, token: state.token } : { room, user: state.requested },
  );
  if (state.epoch) {
    params.set("since", String(state.lastSeq));
    params.set("epoch", state.epoch);
  }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/ws?${params}`);
  state.socket = socket;
  let opened = false;
  socket.addEventListener("open", () => {
    opened = true;
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
  socket.addEventListener("close", (event) => onClose(socket, event, opened));
}

function onClose(socket, event, opened) {
  if (socket !== state.socket) return;
  state.socket = null;
  if (statusEl.dataset.state === "online") notice("Connection lost.", Date.now());
  if (state.welcomedAt && Date.now() - state.welcomedAt >= STABLE_MS) state.attempt = 0;
  state.welcomedAt = 0;
  state.members = null; // nobody tells this page who comes and goes until the next welcome
  renderOnline();
  for (const id of [...state.pending.keys()]) settle(id, "lost");
  if (event.code === TOKEN_EXPIRED || (tokenMode && tokenProblem(state.token))) {
    clearTimers();
    askName("", "Your token has expired: paste a new one to reconnect.");
  } else if (ENDED[event.code] || (event.code >= 4500 && event.code <= 4999)) {
    goOffline(ENDED[event.code] || `The server ended the connection: ${event.reason}.`);
  } else if (event.code === 1008) {
    goOffline(`The server closed the connection: ${event.reason || "policy violation"}.`);
  } else if (!navigator.onLine) {
    goOffline("No network connection.");
  } else if (!opened) {
    notOpened();
  } else {
    if (event.code === 1009) refusedAsTooBig();
    scheduleReconnect();
  }
}

// What the server says of itself: "ready", the status of a 503 from /readyz
// ("broker_unavailable", "shutting_down", ...), or "unreachable" when nothing answers.
async function serverState() {
  try {
    const response = await fetch("/readyz", { cache: "no-store" });
    if (response.status !== 503) return "ready";
    const body = await response.json().catch(() => ({}));
    return typeof body.status === "string" ? body.status : "unavailable";
  } catch {
    return "unreachable";
  }
}

const OUTAGES = {
  broker_unavailable: "The server is unavailable: its message broker is down.",
  shutting_down: "The server is unavailable: it is restarting.",
  unreachable: "The server cannot be reached.",
};

// A connection that never opened: the browser cannot read the HTTP answer to the upgrade, so
// the page asks /readyz whether the server is unavailable (then it retries with backoff)
// or up and refusing this page's request (then, before any connection opened, it stops).
async function notOpened() {
  const connects = state.connects;
  setStatus("reconnecting", "reconnecting");
  const why = await serverState();
  if (state.connects !== connects || state.socket) return; // Reconnect was pressed meanwhile
  if (why !== "ready") {
    if (state.outage !== why) {
      const what = OUTAGES[why] || `The server is unavailable (${why}).`;
      notice(`${what} The page keeps retrying and joins once it is back.`, Date.now(), "error");
      state.outage = why;
    }
    scheduleReconnect("unavailable, retrying");
    return;
  }
  if (state.outage) {
    state.outage = ""; // back: this attempt was refused while it was still unavailable
    scheduleReconnect();
    return;
  }
  state.refused += 1;
  if (!state.opened && state.refused >= MAX_FIRST_ATTEMPTS) {
    goOffline(
      "Could not connect: the server refused the connection. " +
        (tokenMode
          ? "Check the token (valid, not expired, allowed in this room), or try Reconnect later."
          : "Check the name and the room, or try Reconnect later."),
    );
  } else {
    scheduleReconnect();
  }
}

function scheduleReconnect(label = "reconnecting") {
  if (state.attempt >= MAX_ATTEMPTS) {
    goOffline("The server is unreachable.");
    return;
  }
  const delay = reconnectDelay(state.attempt);
  const due = Date.now() + delay;
  state.attempt += 1;
  const tick = () => {
    const seconds = Math.max(1, Math.ceil((due - Date.now()) / 1000));
    setStatus("reconnecting", `${label} in ${seconds}s`);
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
  if (state.socket || !canJoin()) return;
  state.attempt = 0;
  state.refused = 0;
  connect();
}

function askName(name, problem) {
  setStatus("offline", tokenMode ? "token needed" : "choose a name");
  composer.hidden = true;
  nameInput.value = name;
  nameInput.setAttribute("aria-invalid", String(Boolean(problem)));
  nameError.textContent = problem;
  nameError.hidden = !problem;
  nameForm.hidden = false;
  nameInput.focus();
}

function start(name) {
  state.user = name;
  state.requested = name; // asked for on every reconnect; the server may answer another name
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

// The frame that would carry `text` now, with its id and its size in UTF-8 bytes.
function outgoing(text) {
  const id = `${pageId}-${state.sent + 1}`;
  const frame = JSON.stringify({ type: "message", text, id, sent: Date.now() });
  return { id, frame, bytes: utf8Bytes(frame) };
}

// Sends `text` unless the server's limits would refuse it; returns that problem
// ({code, detail}), or null once sent.
function transmit(text, order) {
  const { id, frame, bytes } = outgoing(text);
  const problem = messageProblem(text, bytes, state.limits);
  if (problem) return problem;
  state.sent += 1;
  state.socket.send(frame);
  state.mine.add(id);
  state.unconfirmed.set(id, { text, order, bytes });
  if (COMMAND.test(text)) showCommand(id, text);
  return null;
}

composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = textInput.value.trim();
  const socket = state.socket;
  if (!text || !socket || socket.readyState !== WebSocket.OPEN) return;
  const order = state.typed + 1;
  const problem = state.waiting.length
    ? messageProblem(text, outgoing(text).bytes, state.limits)
    : transmit(text, order);
  if (problem) {
    showProblem(problem.code, problem.detail); // the text stays in the box
    return;
  }
  state.typed = order;
  if (state.waiting.length) wait(text, order); // behind text already refused
  textInput.value = "";
  updateSend();
});

textInput.addEventListener("input", updateSend);

function startWithToken(token) {
  state.token = token;
  state.moderator = tokenRoles(token).includes("mod");
  rememberToken(token);
  nameForm.hidden = true;
  composer.hidden = false;
  textInput.focus();
  state.attempt = 0;
  state.refused = 0;
  state.opened = false;
  connect();
}

// A name (or token) the server would refuse is never sent: the form says why instead.
function choose(raw) {
  if (tokenMode) {
    const token = raw.trim();
    const problem = tokenProblem(token);
    if (problem) askName(token, problem);
    else startWithToken(token);
    return;
  }
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

if (tokenMode) {
  // A token in the address (?token=) is used once and taken out of the address bar.
  const url = new URL(location.href);
  const given = url.searchParams.get("token") || storedToken();
  if (url.searchParams.has("token")) {
    url.searchParams.delete("token");
    history.replaceState(null, "", url);
  }
  if (given) choose(given);
  else askName("", "");
} else {
  const requested = trimName(new URLSearchParams(location.search).get("user") || storedName());
  if (requested) choose(requested);
  else askName("", "");
}
