// The lobby: remembers the user's name, opens a room, keeps the active-room list fresh.

import { nameProblem, rememberName, roomProblem, storedName, trimName } from "./names.js";
import { rememberToken, storedToken, tokenProblem } from "./tokens.js";

const REFRESH_MS = 5000;

const form = document.getElementById("join");
const nameInput = document.getElementById("name");
const roomInput = document.getElementById("room");
const formError = document.getElementById("join-error");
const list = document.getElementById("rooms");
const empty = document.getElementById("no-rooms");

const tokenMode = form.dataset.auth === "token"; // the field holds an access token
nameInput.value = tokenMode ? storedToken() : storedName();

function refuse(input, problem) {
  input.setAttribute("aria-invalid", "true");
  formError.textContent = problem;
  formError.hidden = false;
  input.focus();
}

form.addEventListener("input", (event) => {
  event.target.removeAttribute("aria-invalid");
  formError.hidden = true;
});

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = tokenMode ? nameInput.value.trim() : trimName(nameInput.value);
  const room = roomInput.value.trim();
  const nameIssue = tokenMode ? tokenProblem(name) : nameProblem(name);
  const roomIssue = roomProblem(room);
  if (nameIssue) {
    refuse(nameInput, nameIssue);
  } else if (roomIssue) {
    refuse(roomInput, roomIssue);
  } else if (tokenMode) {
    rememberToken(name); // the room page reads it from this tab's storage, not the URL
    location.assign(`/rooms/${encodeURIComponent(room)}`);
  } else {
    rememberName(name);
    location.assign(`/rooms/${encodeURIComponent(room)}?user=${encodeURIComponent(name)}`);
  }
});

function render(rooms) {
  const items = rooms.map(({ name, members }) => {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = `/rooms/${encodeURIComponent(name)}`;
    link.textContent = name;
    const count = document.createElement("span");
    count.className = "count";
    count.dataset.members = String(members);
    count.textContent = `${members} online`;
    item.append(link, " ", count);
    return item;
  });
  list.replaceChildren(...items);
  empty.hidden = items.length > 0;
}

async function refresh() {
  if (document.hidden) return;
  try {
    const response = await fetch("/api/rooms", { headers: { Accept: "application/json" } });
    if (response.ok) render((await response.json()).rooms);
  } catch {
    // keep showing the last list; the next tick tries again
  }
}

setInterval(refresh, REFRESH_MS);
document.addEventListener("visibilitychange", refresh);
