// Server API: a backend publishing into many rooms over HTTP (POST /api/v1/publish with
// X-API-Key, docs/api.md) at a steady rate while members listen in every room. Measures the
// publish call's latency (http_req_duration{name:publish}) and publish-to-delivery: the
// backend's clock when it sent the call (the message's `data.sent`) to the frame holding the
// message read by a member (same host clock, 1 ms resolution). The server must run with
// ROOMHUB_API_KEY set to this run's API_KEY.
//
// Env: PROFILE, WS_URL (the API is at the same host: ws://host:port/ws -> http://host:port),
//      ROOM, RESULTS_DIR, API_KEY (required), VUS (listeners, default 200; smoke 80),
//      ROOMS (default 100; smoke 40), RATE (publishes per second, default 200; smoke 50),
//      DURATION (default 60s; smoke 20s).
import { check, sleep } from 'k6';
import exec from 'k6/execution';
import { WebSocket } from 'k6/experimental/websockets';
import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';
import { chatUrl } from '../lib/chat.js';
import { WS_URLS, durationEnv, intEnv, pick, roomFor } from '../lib/config.js';
import * as m from '../lib/metrics.js';
import { summaryWriter, TREND_STATS } from '../lib/summary.js';

const VUS = intEnv('VUS', pick({ full: 200, smoke: 80 }));
const ROOMS = intEnv('ROOMS', pick({ full: 100, smoke: 40 }));
const RATE = intEnv('RATE', pick({ full: 200, smoke: 50 }));
const DURATION_MS = durationEnv('DURATION', pick({ full: '60s', smoke: '20s' }));
const API_KEY = __ENV.API_KEY || '';
const JOIN_MS = 3000; // listeners join before the backend starts publishing
// and stay this long after it stopped: past its gracefulStop (2 s), so that a publish still
// answering when the backend stops is delivered before the listeners leave
const DRAIN_MS = 4000;
const BACKEND_VUS = pick({ full: 20, smoke: 10 });


// Backend's send -> a member read the message (each member of the room counts once).
const apiDelivery = new Trend('chat_api_delivery', true);
// Messages the backend published (answered 200), and member receipts of them.
const apiPublished = new Counter('chat_api_published');
const apiDelivered = new Counter('chat_api_delivered');

export const options = {
  scenarios: {
    listeners: {
      executor: 'constant-vus',
      vus: VUS,
      duration: `${(JOIN_MS + DURATION_MS + DRAIN_MS) / 1000}s`,
      gracefulStop: '5s',
      tags: { role: 'listener' },
    },
    backend: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${DURATION_MS / 1000}s`,
      startTime: `${JOIN_MS / 1000}s`,
      preAllocatedVUs: BACKEND_VUS,
      maxVUs: BACKEND_VUS,
      gracefulStop: '2s',
      exec: 'publish',
      tags: { role: 'backend' },
    },
  },
  thresholds: {
    'http_req_duration{name:publish}': ['p(95)<100', 'p(99)<250'],
    'http_req_failed{name:publish}': ['rate<0.01'],
    chat_api_delivery: ['p(95)<250', 'p(99)<500'],
    chat_api_published: ['count>0'],
    chat_api_delivered: ['count>0'],
    chat_ws_upgrade_ok: ['rate>0.99'],
    chat_unexpected_closes: ['count==0'],
  },
  summaryTrendStats: TREND_STATS,
};

// Without a key every publish would be a 401: stop before anything runs (k6 inspect too).
if (!API_KEY) {
  throw new Error(
    "API_KEY must be set to the server's ROOMHUB_API_KEY (make lab sets one, and make k6 passes it)",
  );
}

// ws://host:port/ws -> http://host:port (the first WS_URL: any instance takes API calls).
const API_URL = WS_URLS[0].replace(/^ws/, 'http').replace(/\/ws(\?.*)?$/, '');

// One call with an empty body before the run: a wrong key (401) or an API that is off (404)
// stops the run at once, naming the cause; a right key gets 400 (no room named).
export function setup() {
  const response = http.post(`${API_URL}/api/v1/publish`, '{}', {
    headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
    tags: { name: 'key-check' },
  });
  if (response.status === 401) {
    throw new Error(`API_KEY is not the server's ROOMHUB_API_KEY (${API_URL} answers 401)`);
  }
  if (response.status === 404) {
    throw new Error(`the server API is off at ${API_URL}: start it with ROOMHUB_API_KEY set`);
  }
}

export function publish() {
  const n = exec.scenario.iterationInTest;
  const body = JSON.stringify({
    room: roomFor('api', n, ROOMS),
    text: `api ${n}`,
    data: { sent: Date.now() },
  });
  const response = http.post(`${API_URL}/api/v1/publish`, body, {
    headers: { 'Content-Type': 'application/json', 'X-API-Key': API_KEY },
    tags: { name: 'publish' },
  });
  if (check(response, { 'publish answered 200': (r) => r.status === 200 })) {
    apiPublished.add(1);
  }
}

function onFrame(data) {
  const now = Date.now();
  const parsed = JSON.parse(data);
  for (const ev of Array.isArray(parsed) ? parsed : [parsed]) {
    m.eventsReceived.add(1);
    if (ev.type === 'message' && ev.server && ev.data && Number.isFinite(ev.data.sent)) {
      apiDelivery.add(now - ev.data.sent);
      apiDelivered.add(1);
    }
  }
}

// This VU's room and name, fixed at its first iteration. VU ids are shared with the backend's
// VUs, so they need not fill the rooms evenly; the listeners' first iterations are numbered
// 0..VUS-1 (all start at once), which puts VUS/ROOMS listeners in each room.
let listener = null;

// One listener: joins its room, reads until the scenario's end, then closes.
export default function () {
  if (listener === null) listener = exec.scenario.iterationInTest;
  const n = listener;
  const endAt = exec.scenario.startTime + JOIN_MS + DURATION_MS + DRAIN_MS;
  if (Date.now() >= endAt - 1000) {
    sleep(Math.max(0, endAt - Date.now()) / 1000 + 0.25); // too late to join: idle to the end
    return;
  }
  const ws = new WebSocket(chatUrl(roomFor('api', n, ROOMS), `listener-${n}`));
  let closing = false;
  ws.onopen = () => {
    m.upgrades.add(true);
    setTimeout(() => {
      closing = true;
      ws.close();
    }, endAt - Date.now());
  };
  ws.onmessage = (event) => onFrame(event.data);
  ws.onerror = () => {
    if (!closing) m.upgrades.add(false);
    sleep(1); // a refused upgrade: no tight loop of retries
  };
  ws.onclose = (event) => {
    if (!closing) m.unexpectedCloses.add(1, { close_code: String(event.code || 'error') });
  };
}

export const handleSummary = summaryWriter('api');
