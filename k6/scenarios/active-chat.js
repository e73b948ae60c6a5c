// Active chat: 200 users in one room, each sending a message every 500 ms: 400 messages/s in,
// 80,000 events/s out. Measures chat_rtt under sustained fan-out; a server that can't keep up
// shows it as rising RTT, lost messages or slow-consumer closes (1013).
//
// Env: PROFILE, WS_URL, ROOM, RESULTS_DIR, VUS, DURATION, ROOMS (default 1), SEND_EVERY_MS,
// WARMUP_MS (default 0: each user sends from its welcome on; else from this long after the
// start, so that the figures leave the join burst out).
import exec from 'k6/execution';
import { sessionUntil, scenarioEnd } from '../lib/chat.js';
import { durationEnv, intEnv, pick, roomFor } from '../lib/config.js';
import { seedGuards, thresholds } from '../lib/health.js';
import { summaryWriter, TREND_STATS } from '../lib/summary.js';

const VUS = intEnv('VUS', pick({ full: 200, smoke: 50 }));
const DURATION_MS = durationEnv('DURATION', pick({ full: '60s', smoke: '20s' }));
const ROOMS = intEnv('ROOMS', 1);
const SEND_EVERY_MS = intEnv('SEND_EVERY_MS', 500);
const WARMUP_MS = intEnv('WARMUP_MS', 0);

const health = { chat: [{}] };

export const options = {
  scenarios: {
    chat: {
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
  sessionUntil(scenarioEnd(DURATION_MS), {
    room: roomFor('chat', n, ROOMS),
    user: `chatter-${n}`,
    sendEveryMs: SEND_EVERY_MS,
    sendFrom: exec.scenario.startTime + WARMUP_MS,
  });
}

export const handleSummary = summaryWriter('active-chat');
