// Abuse at the door (docs/limits.md): one role per k6 process, so that the attacker and the
// legitimate user leave from different loopback addresses (k6's --local-ips is per process):
//
//   k6 run -e ROLE=user k6/checks/door.js                                   (127.0.0.1)
//   k6 run --local-ips 127.0.0.2 -e ROLE=rooms -e MAX_OPENED=61 k6/checks/door.js
//   k6 run --local-ips 127.0.0.2 -e ROLE=connections -e MAX_OPENED=500 k6/checks/door.js
//
// user:        joins a room, says one message, sees it come back, leaves; again and again
//              (three rooms in turn, every twentieth join a new one). Every join must succeed
//              and the join time (connect to welcome) stay under 100 ms at p95.
// rooms:       opens and leaves ATTEMPTS distinct rooms; at most MAX_OPENED may open (the
//              server's ROOMHUB_NEW_ROOMS_PER_MINUTE burst, plus its refill meanwhile).
// connections: opens up to ATTEMPTS connections into one room and holds them to the end; at
//              most MAX_OPENED may open (ROOMHUB_MAX_CONNECTIONS_PER_ADDRESS).
// An attacker goes on for at most DURATION, pausing 20 ms after each refusal.
// A slow-header attack needs raw TCP, which k6 has not: tests/test_attacks.py runs it.
//
// Env: ROLE, WS_URL, DURATION (default 10s), ATTEMPTS (default 500), MAX_OPENED.
import { sleep } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';
import { WebSocket } from 'k6/experimental/websockets';
import { durationEnv, intEnv, WS_URL } from '../lib/config.js';

const ROLE = __ENV.ROLE || 'user';
const DURATION_MS = durationEnv('DURATION', '10s');
const ATTEMPTS = intEnv('ATTEMPTS', 500);
const MAX_OPENED = intEnv('MAX_OPENED', ATTEMPTS);
const JOIN_TIMEOUT_MS = 5000;
const USER_PAUSE_S = 0.1; // ten joins a second: a busy user, well under ROOMHUB_UPGRADE_RATE
const REFUSED_PAUSE_MS = 20; // an attacker told 429 waits this long before its next try

const joinTime = new Trend('door_join', true);
const joinOk = new Rate('door_join_ok');
const opened = new Counter('door_opened');
const refused = new Counter('door_refused');

const THRESHOLDS = {
  user: { door_join_ok: ['rate==1'], door_join: ['p(95)<100'] },
  rooms: { door_opened: [`count<=${MAX_OPENED}`], door_refused: ['count>0'] },
  connections: { door_opened: [`count<=${MAX_OPENED}`], door_refused: ['count>0'] },
};

export const options = {
  scenarios: {
    [ROLE]: {
      executor: ROLE === 'user' ? 'constant-vus' : 'per-vu-iterations',
      vus: 1,
      ...(ROLE === 'user'
        ? { duration: `${DURATION_MS / 1000}s` }
        : { iterations: 1, maxDuration: `${DURATION_MS / 1000 + 10}s` }),
      gracefulStop: '5s',
    },
  },
  thresholds: THRESHOLDS[ROLE],
};

function url(room, user) {
  return `${WS_URL}?room=${encodeURIComponent(room)}&user=${encodeURIComponent(user)}`;
}

let joins = 0; // the user's joins so far (module state is per VU)

function userJoin() {
  const n = joins++;
  const room = n % 20 === 0 ? `door-new-${Date.now()}-${n}` : `door-user-${n % 3}`;
  const started = Date.now();
  const ws = new WebSocket(url(room, `user-${n}`));
  let welcomed = false;
  const giveUp = setTimeout(() => ws.close(), JOIN_TIMEOUT_MS);
  ws.addEventListener('message', (e) => {
    // The server sends nothing before the welcome, and k6 can drop the welcome itself
    // (k6/lib/chat.js says why): the first frame read shows the join succeeded.
    if (!welcomed) {
      welcomed = true;
      joinTime.add(Date.now() - started);
      ws.send(JSON.stringify({ type: 'message', text: 'hello', id: `m${n}` }));
    } else if (welcomed && e.data.includes(`"id":"m${n}"`)) {
      ws.close();
    }
  });
  ws.addEventListener('close', () => {
    clearTimeout(giveUp);
    joinOk.add(welcomed);
  });
}

// Opens `count` sockets one after another (each once the previous one opened or failed);
// `hold`: keep the open ones until the end, else close each at once.
function attack(count, roomOf, hold) {
  let n = 0;
  const held = [];
  const endAt = Date.now() + DURATION_MS;
  const next = () => {
    if (n >= count || Date.now() >= endAt) {
      setTimeout(() => held.forEach((ws) => ws.close()), hold ? 1000 : 0);
      return;
    }
    const ws = new WebSocket(url(roomOf(n), `attacker-${n}`));
    n += 1;
    let open = false;
    ws.addEventListener('open', () => {
      open = true;
      opened.add(1);
      if (hold) held.push(ws);
      else ws.close();
      next();
    });
    ws.addEventListener('error', () => {
      if (!open) {
        refused.add(1);
        setTimeout(next, REFUSED_PAUSE_MS);
      }
    });
  };
  next();
}

export default function () {
  if (ROLE === 'user') {
    sleep(USER_PAUSE_S); // first: k6 handles the socket's events only once the function returns
    userJoin();
  } else if (ROLE === 'rooms') {
    attack(ATTEMPTS, (n) => `door-squat-${n}`, false);
  } else if (ROLE === 'connections') {
    attack(ATTEMPTS, () => 'door-flood', true);
  } else {
    throw new Error(`ROLE must be user, rooms or connections, not ${ROLE}`);
  }
}
