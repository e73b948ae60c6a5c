// Mixed: a realistic blend as three parallel scenarios, each tagged with its role:
// 60% lurkers (only read), 30% chatters (a message every 2 s), 10% bot users (a `/stock=`
// command every 3 s), spread over a few rooms. Thresholds hold per role.
//
// Env: PROFILE, WS_URL, ROOM, RESULTS_DIR, VUS (total, default 500), DURATION, ROOMS (default 5).
import exec from 'k6/execution';
import { sessionUntil, scenarioEnd } from '../lib/chat.js';
import { durationEnv, intEnv, pick, roomFor } from '../lib/config.js';
import { seedGuards, thresholds } from '../lib/health.js';
import { summaryWriter, TREND_STATS } from '../lib/summary.js';

const VUS = intEnv('VUS', pick({ full: 500, smoke: 100 }));
const DURATION_MS = durationEnv('DURATION', pick({ full: '2m', smoke: '30s' }));
const ROOMS = intEnv('ROOMS', 5);
const LURKERS = Math.round(VUS * 0.6);
const CHATTERS = Math.round(VUS * 0.3);
const BOT_USERS = Math.max(1, VUS - LURKERS - CHATTERS);

const health = {
  chat: [{ role: 'chatter' }],
  bot: [{ role: 'bot' }],
  read: [{ role: 'lurker' }],
};

function role(name, vus, fn) {
  return {
    executor: 'constant-vus',
    exec: fn,
    vus,
    duration: `${DURATION_MS / 1000}s`,
    gracefulStop: '5s',
    tags: { role: name },
  };
}

export const options = {
  scenarios: {
    lurkers: role('lurker', LURKERS, 'lurker'),
    chatters: role('chatter', CHATTERS, 'chatter'),
    bot_users: role('bot', BOT_USERS, 'botUser'),
  },
  thresholds: thresholds(health),
  summaryTrendStats: TREND_STATS,
};

export function setup() {
  seedGuards(health);
}

function session(user, extra) {
  const n = exec.vu.idInTest;
  sessionUntil(scenarioEnd(DURATION_MS), {
    room: roomFor('mixed', n, ROOMS),
    user: `${user}-${n}`,
    ...extra,
  });
}

export function lurker() {
  session('lurker', {});
}

export function chatter() {
  session('chatter', { sendEveryMs: 2000 });
}

export function botUser() {
  session('bot', { sendEveryMs: 3000, commands: ['AAPL', 'MSFT'], drainMs: 4000 });
}

export const handleSummary = summaryWriter('mixed');
