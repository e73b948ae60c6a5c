// Stock bot: 50 users sending `/stock=AAPL` and `/stock=MSFT` as fast as the server's rate
// limit allows (default token bucket 5 msg/s, burst 10 per connection: one command every
// 200 ms; faster earns `rate_limited` errors and, kept up, a 1008 close). Measures
// chat_bot_rtt and how many commands come back `busy` (bot queue full) or failed.
//
// Env: PROFILE, WS_URL, ROOM, RESULTS_DIR, VUS, DURATION, ROOMS (default 1),
//      SEND_EVERY_MS (default 200, matching ROOMHUB_RATE_LIMIT=5).
import exec from 'k6/execution';
import { sessionUntil, scenarioEnd } from '../lib/chat.js';
import { durationEnv, intEnv, pick, roomFor } from '../lib/config.js';
import { seedGuards, thresholds } from '../lib/health.js';
import { summaryWriter, TREND_STATS } from '../lib/summary.js';

const VUS = intEnv('VUS', pick({ full: 50, smoke: 20 }));
const DURATION_MS = durationEnv('DURATION', pick({ full: '60s', smoke: '20s' }));
const ROOMS = intEnv('ROOMS', 1);
const SEND_EVERY_MS = intEnv('SEND_EVERY_MS', 200);
const SYMBOLS = ['AAPL', 'MSFT'];

const health = { bot: [{}] };

export const options = {
  scenarios: {
    bot: {
      executor: 'constant-vus',
      vus: VUS,
      duration: `${DURATION_MS / 1000}s`,
      gracefulStop: '5s',
      tags: { role: 'bot' },
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
  sessionUntil(scenarioEnd(DURATION_MS), {
    room: roomFor('stock', n, ROOMS),
    user: `trader-${n}`,
    sendEveryMs: SEND_EVERY_MS,
    commands: SYMBOLS,
    drainMs: 4000,
  });
}

export const handleSummary = summaryWriter('stock-bot');
