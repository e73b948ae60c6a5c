// Connection storm: 0 -> 1000 connections in 10 s into ONE room, hold 30 s, down in 10 s.
// Every join and leave is broadcast to the room, so the storm is also a fan-out storm.
// A few probe users keep chatting through it and measure chat_rtt; the storm users only read.
//
// Env: PROFILE, WS_URL, ROOM, RESULTS_DIR, VUS (storm users), PROBES, PROBE_EVERY_MS,
//      RAMP, HOLD, DOWN (the three stages' durations; make story ramps slower).
import exec from 'k6/execution';
import { sessionUntil, scenarioEnd } from '../lib/chat.js';
import { durationEnv, intEnv, pick, roomFor, seconds } from '../lib/config.js';
import { seedGuards, thresholds } from '../lib/health.js';
import { summaryWriter, TREND_STATS } from '../lib/summary.js';

const VUS = intEnv('VUS', pick({ full: 1000, smoke: 95 }));
const PROBES = intEnv('PROBES', 5);
const PROBE_EVERY_MS = intEnv('PROBE_EVERY_MS', 1000);
const RAMP_MS = durationEnv('RAMP', pick({ full: '10s', smoke: '5s' }));
const HOLD_MS = durationEnv('HOLD', pick({ full: '30s', smoke: '10s' }));
const DOWN_MS = durationEnv('DOWN', pick({ full: '10s', smoke: '5s' }));
const TOTAL_MS = RAMP_MS + HOLD_MS + DOWN_MS;
const ROOM = roomFor('storm', 0);

const health = { chat: [{}], upgradeRate: 'rate==1' };

export const options = {
  scenarios: {
    storm: {
      executor: 'ramping-vus',
      exec: 'stormUser',
      startVUs: 0,
      stages: [
        { duration: seconds(RAMP_MS), target: VUS },
        { duration: seconds(HOLD_MS), target: VUS },
        { duration: seconds(DOWN_MS), target: 0 },
      ],
      // A VU removed by the ramp-down closes its connection at once.
      gracefulRampDown: '0s',
      gracefulStop: '5s',
      tags: { role: 'lurker' },
    },
    probes: {
      executor: 'constant-vus',
      exec: 'probe',
      vus: PROBES,
      duration: `${TOTAL_MS / 1000}s`,
      gracefulStop: '5s',
      tags: { role: 'probe' },
    },
  },
  thresholds: thresholds(health),
  summaryTrendStats: TREND_STATS,
};

export function setup() {
  seedGuards(health);
}

export function stormUser() {
  sessionUntil(scenarioEnd(TOTAL_MS), { room: ROOM, user: `storm-${exec.vu.idInTest}` });
}

export function probe() {
  sessionUntil(scenarioEnd(TOTAL_MS), {
    room: ROOM,
    user: `probe-${exec.vu.idInTest}`,
    sendEveryMs: PROBE_EVERY_MS,
  });
}

export const handleSummary = summaryWriter('connection-storm');
