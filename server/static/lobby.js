// The lobby: remembers the user's name, opens a room, keeps the active-room list fresh.

const NAME_KEY = "roomhub.name";
const REFRESH_MS = 5000;

const form = document.getElementById("join");
const nameInput = document.getElementById("name");
const roomInput = document.getElementById("room");
const list = document.getElementById("rooms");
const empty = document.getElementById("no-rooms");

try {
  nameInput.value = localStorage.getItem(NAME_KEY) || "";
} catch {
  // storage disabled: the user types a name each time
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = nameInput.value.trim();
  const room = roomInput.value.trim();
  if (!name || !room) return;
  try {
    localStorage.setItem(NAME_KEY, name);
  } catch {
    // storage disabled: the name travels in the URL only
  }
  location.assign(`/rooms/${encodeURIComponent(room)}?user=${encodeURIComponent(name)}`);
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
