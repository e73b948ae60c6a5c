// User and room names: the rules /ws applies to ?room= and ?user= (docs/protocol.md), checked
// in the page first so a name the server would refuse is never sent; and the remembered name.

const NAME_KEY = "roomhub.name";
const MAX_NAME = 32; // Unicode code points
// The white space the server trims: what Python's str.isspace() matches, less control characters.
const EDGE_SPACE =
  /^[\x20\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+|[\x20\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$/g;
// Control, format (zero-width, bidi controls), surrogate, private use, line/paragraph
// separator characters, U+FFFD.
const FORBIDDEN = /[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Zl}\p{Zp}\uFFFD]/u;
const ROOM = /^[A-Za-z0-9_.-]{1,64}$/;

/** The name as the server sees it: white space trimmed from both ends. */
export function trimName(raw) {
  return String(raw).replace(EDGE_SPACE, "");
}

/** Why the server would refuse this (trimmed) name, as a sentence; "" when it is fine. */
export function nameProblem(name) {
  const length = [...name].length;
  if (length === 0) return "Choose a name.";
  if (length > MAX_NAME) {
    return `A name can be at most ${MAX_NAME} characters long; this one has ${length}.`;
  }
  if (FORBIDDEN.test(name)) {
    return "A name can't contain control, invisible, private-use or line-break characters.";
  }
  return "";
}

/** Why the server would refuse this room name, as a sentence; "" when it is fine. */
export function roomProblem(room) {
  if (ROOM.test(room) && room !== "." && room !== "..") return "";
  return "A room name is 1 to 64 letters, digits, dots, dashes or underscores (not just . or ..).";
}

export function storedName() {
  try {
    return localStorage.getItem(NAME_KEY) || "";
  } catch {
    return ""; // storage disabled
  }
}

export function rememberName(name) {
  try {
    localStorage.setItem(NAME_KEY, name);
  } catch {
    // storage disabled: the name travels in the URL only
  }
}
