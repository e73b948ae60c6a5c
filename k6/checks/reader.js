// One member that only reads its room for DURATION, counting what arrives as every scenario's
// members do (k6/lib/chat.js): events, messages, and gaps in the room's seq. The tests run it
// against a scripted server to check that counting.
//
// Env: WS_URL, RESULTS_DIR, DURATION (default 4s).
import { sessionUntil, scenarioEnd } from '../lib/chat.js';
import { durationEnv } from '../lib/config.js';
import { summaryWriter, TREND_STATS } from '../lib/summary.js';

const DURATION_MS = durationEnv('DURATION', '4s');

export const options = {
  scenarios: {
    reader: {
      executor: 'constant-vus',
      vus: 1,
      duration: `${DURATION_MS / 1000}s`,
      gracefulStop: '5s',
    },
  },
  summaryTrendStats: TREND_STATS,
};

export default function () {
  sessionUntil(scenarioEnd(DURATION_MS), { room: 'reader', user: 'reader', drainMs: 0 });
}

export const handleSummary = summaryWriter('reader');
