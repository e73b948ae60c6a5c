// Run settings read from the environment (`-e NAME=value` or the shell env).
//
//   WS_URL       chat endpoint (default ws://localhost:8080/ws); a comma-separated list spreads
//                the VUs over several instances (VU n uses entry n mod count)
//   PROFILE      full (default: the scenario's real size) | smoke (same shape, <= 40 s, <= 100 VUs)
//   ROOMS        how many rooms a scenario spreads its users over, where it allows it
//   ROOM         room name prefix (default "load")
//   RESULTS_DIR  where handleSummary writes <scenario>-summary.json/.txt/.html (default
//                "results"; `make k6` passes a new results/<date>-<time>-<scenario> per run)

export const WS_URL = __ENV.WS_URL || 'ws://localhost:8080/ws';
export const WS_URLS = WS_URL.split(',').map((u) => u.trim());
export const ROOM_PREFIX = __ENV.ROOM || 'load';
export const RESULTS_DIR = (__ENV.RESULTS_DIR || 'results').replace(/\/+$/, '');

const PROFILES = ['full', 'smoke'];
export const PROFILE = (__ENV.PROFILE || 'full').toLowerCase();
if (!PROFILES.includes(PROFILE)) {
  throw new Error(`PROFILE must be one of ${PROFILES.join(', ')}, got "${__ENV.PROFILE}"`);
}

// The value for the active profile: pick({ full: 1000, smoke: 100 }).
export function pick(byProfile) {
  return byProfile[PROFILE];
}

// A positive integer from env `name`, or `fallback` when unset. Throws on anything else.
export function intEnv(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') {
    return fallback;
  }
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1) {
    throw new Error(`${name} must be a positive integer, got "${raw}"`);
  }
  return value;
}

// A k6 duration string ("90s", "30m") from env `name`, or `fallback`; returns milliseconds.
export function durationEnv(name, fallback) {
  return parseDuration(__ENV[name] || fallback, name);
}

// "1m30s" / "45s" / "500ms" / "2h" -> milliseconds. Throws on anything else.
export function parseDuration(text, what = 'duration') {
  const parts = String(text).match(/^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?$/);
  if (!parts || text === '') {
    throw new Error(`${what} must look like 90s, 30m or 1m30s, got "${text}"`);
  }
  const [h, m, s, ms] = parts.slice(1).map((part) => Number(part || 0));
  return ((h * 60 + m) * 60 + s) * 1000 + ms;
}

// "90000" ms -> "90s", the form k6 options take.
export function seconds(ms) {
  return `${Math.ceil(ms / 1000)}s`;
}

// Room of user number `n` of a scenario whose users are spread over `rooms` rooms:
// "<ROOM>-<scope>-<n mod rooms>", so scenarios run against one server don't share rooms.
export function roomFor(scope, n, rooms = 1) {
  return `${ROOM_PREFIX}-${scope}-${n % rooms}`;
}
