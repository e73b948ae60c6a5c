// First real-load check: 300 connections join one room; once the room holds all of them, one
// sender broadcasts a single message, and every connection (the sender's included) must read
// it. Records how long the upgrades took (ws_connecting) and how long the one broadcast took
// to reach each connection (broadcast_delivery: sender's `sent` -> frame read).
//
// Env: WS_URL, ROOM, RESULTS_DIR, VUS (default 300), WAIT (how long a connection waits for
// the broadcast, default 45s).
import exec from 'k6/execution';
import { WebSocket } from 'k6/experimental/websockets';
import { Counter, Rate, Trend } from 'k6/metrics';
import { chatUrl } from '../lib/chat.js';
import { durationEnv, intEnv, ROOM_PREFIX } from '../lib/config.js';
import { upgrades } from '../lib/metrics.js';
import { summaryWriter, TREND_STATS } from '../lib/summary.js';

const VUS = intEnv('VUS', 300);
const WAIT_MS = durationEnv('WAIT', '45s');

const delivery = new Trend('broadcast_delivery', true);
const received = new Counter('broadcast_received');
const receivedOk = new Rate('broadcast_received_ok');

export const options = {
  scenarios: {
    broadcast: {
      executor: 'per-vu-iterations',
      vus: VUS,
      iterations: 1,
      maxDuration: `${Math.ceil(WAIT_MS / 1000) + 15}s`,
    },
  },
  thresholds: {
    chat_ws_upgrade_ok: ['rate==1'],
    broadcast_received: [`count==${VUS}`],
    broadcast_received_ok: ['rate==1'],
  },
  summaryTrendStats: TREND_STATS,
};

// One room and one message id per run, shared by every VU.
export function setup() {
  received.add(0);
  const run = Date.now().toString(36);
  return { room: `${ROOM_PREFIX}-broadcast-${run}`, id: `broadcast-${run}` };
}

function parseEvents(data) {
  const parsed = JSON.parse(data);
  return Array.isArray(parsed) ? parsed : [parsed];
}

export default function ({ room, id }) {
  const sender = exec.vu.idInTest === 1;
  const marker = `"${id}"`;
  const ws = new WebSocket(chatUrl(room, `listener-${exec.vu.idInTest}`), null, {
    tags: { name: 'chat_ws' },
  });
  let opened = false;
  let sent = false;
  let done = false;

  function send() {
    sent = true;
    ws.send(JSON.stringify({ type: 'message', text: 'hello, everyone', id, sent: Date.now() }));
  }

  // The sender waits for the room to fill, but not forever: a partial room still gets the
  // broadcast, so the thresholds report how many connections missed it.
  const sendAnyway = setTimeout(() => {
    if (sender && opened && !sent) {
      send();
    }
  }, WAIT_MS / 2);
  const giveUp = setTimeout(() => finish(false), WAIT_MS);

  function finish(ok) {
    if (done) {
      return;
    }
    done = true;
    receivedOk.add(ok);
    clearTimeout(giveUp);
    clearTimeout(sendAnyway);
    ws.close();
  }

  ws.onopen = () => {
    opened = true;
    upgrades.add(true);
  };
  ws.onerror = () => {
    if (!opened) {
      upgrades.add(false);
    }
  };
  ws.onclose = () => finish(false);
  ws.onmessage = (event) => {
    if (done) {
      return;
    }
    if (event.data.indexOf(marker) !== -1) {
      const ours = parseEvents(event.data).find((e) => e.id === id);
      if (ours) {
        delivery.add(event.timestamp - ours.sent);
        received.add(1);
        finish(true);
        return;
      }
    }
    if (sender && !sent) {
      const members = parseEvents(event.data)
        .map((e) => (Array.isArray(e.members) ? e.members.length : e.members))
        .filter(Number.isFinite);
      if (Math.max(...members) >= VUS) {
        send();
      }
    }
  };
}

export const handleSummary = summaryWriter('broadcast-300');
