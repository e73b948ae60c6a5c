// Access tokens for servers run with ROOMHUB_AUTH=token (docs/protocol.md, "Authentication
// with tokens"): the page checks a token's shape and expiry before it connects, and keeps it
// for this tab only (sessionStorage), never in the address bar.

const TOKEN_KEY = "roomhub.token";
const JWT = /^[A-Za-z0-9_-]+\.([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]*$/;

/** The claims of a JWT (unverified: the server checks the signature), or null. */
function claims(token) {
  const match = JWT.exec(token);
  if (!match) return null;
  try {
    const base64 = match[1].replaceAll("-", "+").replaceAll("_", "/");
    return JSON.parse(atob(base64.padEnd(Math.ceil(base64.length / 4) * 4, "=")));
  } catch {
    return null;
  }
}

/** Why this token can't be used, as a sentence; "" when it looks usable. */
export function tokenProblem(token) {
  if (!token) return "Paste your access token.";
  const payload = claims(token);
  if (!payload || typeof payload !== "object") return "That is not an access token (a JWT).";
  if (Number.isFinite(payload.exp) && payload.exp * 1000 <= Date.now()) {
    return "This token has expired: paste a new one.";
  }
  return "";
}

/** The roles a token claims (its `roles` list of strings), for what the page offers; the
 * server checks them again on every request. */
export function tokenRoles(token) {
  const roles = claims(token)?.roles;
  return Array.isArray(roles) ? roles.filter((role) => typeof role === "string") : [];
}

export function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function rememberToken(token) {
  try {
    sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // storage disabled: a reload asks again
  }
}
