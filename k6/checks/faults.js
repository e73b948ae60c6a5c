// Faults on purpose, for the live observability test: each VU sends messages far faster than
// the server's default rate limit (5/s, burst 10). The server answers with `error` events
// (rate_limited) and, after 20 refusals in a row, closes the connection with 1008; the VU
// then reconnects and does it again. The thresholds
// pass only when the client saw those errors and closes, so the load dashboard's "Unexpected
// closes and errors" panel has data to show.
//
// Env: WS_URL, ROOM, RESULTS_DIR, VUS (default 2), DURATION (default 15s).
import exec from 'k6/execution';
import { sessionUntil, scenarioEnd } from '../lib/chat.js';
import { durationEnv, intEnv, roomFor } from '../lib/config.js';
import { summaryWriter, TREND_STATS } from '../lib/summary.js';

const VUS = intEnv('VUS', 2);
const DURATION_MS = durationEnv('DURATION', '15s');
const SEND_EVERY_MS = 2; // 500 frames/s: 20 refusals in a row come long before a refill

export const options = {
  scenarios: {
    faults: {
      executor: 'constant-vus',
      vus: VUS,
      duration: `${DURATION_MS / 1000}s`,
      gracefulStop: '5s',
      tags: { role: 'abuser' },
    },
  },
  thresholds: {
    'chat_errors_received{code:rate_limited}': ['count>0'],
    'chat_unexpected_closes{close_code:1008}': ['count>0'],
  },
  summaryTrendStats: TREND_STATS,
};

export default function () {
  const n = exec.vu.idInTest;
  sessionUntil(scenarioEnd(DURATION_MS), {
    room: roomFor('faults', n),
    user: `abuser-${n}`,
    sendEveryMs: SEND_EVERY_MS,
    drainMs: 0,
  });
}

export const handleSummary = summaryWriter('faults');
