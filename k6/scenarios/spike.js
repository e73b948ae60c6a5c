// Spike: 100 connected users, a sudden jump to 500, hold 1 min, back to 100. Everyone chats
// now and then; chat_rtt shows whether latency survives the surge of joins and the extra
// fan-out, and the server's connection gauge should follow the VU curve up and down.
//
// Env: PROFILE, WS_URL, ROOM, RESULTS_DIR, BASE_VUS, PEAK_VUS, ROOMS (default 10),
//      SEND_EVERY_MS (default 2000).
import exec from 'k6/execution';
import { sessionUntil, scenarioEnd } from '../lib/chat.js';
import { intEnv, parseDuration, pick, roomFor } from '../lib/config.js';
import { seedGuards, thresholds } from '../lib/health.js';
import { summaryWriter, TREND_STATS } from '../lib/summary.js';

const BASE = intEnv('BASE_VUS', pick({ full: 100, smoke: 20 }));
const PEAK = intEnv('PEAK_VUS', pick({ full: 500, smoke: 100 }));
const ROOMS = intEnv('ROOMS', 10);
const SEND_EVERY_MS = intEnv('SEND_EVERY_MS', 2000);
const STAGES = [
  { duration: pick({ full: '10s', smoke: '3s' }), target: BASE },
  { duration: pick({ full: '30s', smoke: '7s' }), target: BASE },
  { duration: '2s', target: PEAK },
  { duration: pick({ full: '60s', smoke: '10s' }), target: PEAK },
  { duration: '2s', target: BASE },
  { duration: pick({ full: '30s', smoke: '7s' }), target: BASE },
];
const TOTAL_MS = STAGES.reduce((sum, stage) => sum + parseDuration(stage.duration), 0);

const health = { chat: [{}] };

export const options = {
  scenarios: {
    spike: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: STAGES,
      gracefulRampDown: '0s',
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
  sessionUntil(scenarioEnd(TOTAL_MS), {
    room: roomFor('spike', n, ROOMS),
    user: `spiker-${n}`,
    sendEveryMs: SEND_EVERY_MS,
  });
}

export const handleSummary = summaryWriter('spike');
