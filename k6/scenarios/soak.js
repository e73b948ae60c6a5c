// Soak: 200 users for 30 minutes, chatting at a moderate pace across 10 rooms and
// reconnecting every few minutes. Latency must stay flat; on the server, RSS, open fds and
// asyncio tasks must not creep up, and everything returns to idle once the users leave.
//
// Env: PROFILE, WS_URL, ROOM, RESULTS_DIR, VUS, DURATION (default 30m), ROOMS (default 10),
//      SEND_EVERY_MS (default 3000), SESSION (how long one connection lives, default 5m).
import exec from 'k6/execution';
import { sessionUntil, scenarioEnd } from '../lib/chat.js';
import { durationEnv, intEnv, pick, roomFor } from '../lib/config.js';
import { seedGuards, thresholds } from '../lib/health.js';
import { summaryWriter, TREND_STATS } from '../lib/summary.js';

const VUS = intEnv('VUS', pick({ full: 200, smoke: 50 }));
const DURATION_MS = durationEnv('DURATION', pick({ full: '30m', smoke: '30s' }));
const SESSION_MS = durationEnv('SESSION', pick({ full: '5m', smoke: '10s' }));
const ROOMS = intEnv('ROOMS', 10);
const SEND_EVERY_MS = intEnv('SEND_EVERY_MS', 3000);

const health = { chat: [{}] };

export const options = {
  scenarios: {
    soak: {
      executor: 'constant-vus',
      vus: VUS,
      duration: `${DURATION_MS / 1000}s`,
      gracefulStop: '5s',
      tags: { role: 'chatter' },
    },
  },
  thresholds: thresholds(health),
  summaryTrendStats: TREND_STATS,
};

export function setup() {
  seedGuards(health);
}

export default function () {
  const n = exec.vu.idInTest;
  // Sessions start spread out so reconnects don't come in waves.
  const length = SESSION_MS * (0.5 + Math.random());
  sessionUntil(Math.min(scenarioEnd(DURATION_MS), Date.now() + length), {
    room: roomFor('soak', n, ROOMS),
    user: `soaker-${n}`,
    sendEveryMs: SEND_EVERY_MS,
  });
}

export const handleSummary = summaryWriter('soak');
