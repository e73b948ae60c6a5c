// One chat connection driven by a k6 VU (k6/experimental/websockets, k6 1.1).
//
// Server frames hold one event object or a JSON array of events (batching). k6 spends more CPU
// parsing a frame than the server spends sending it, so a frame of messages only is read
// without JSON.parse. Every member must see its room's messages with no gap from its `welcome`
// on, and the server sends a room's messages in seq order, each once: n message events whose
// first `seq` follows the last one seen and whose last is n further on missed none. Such a run
// is counted from a substring count of the fixed start of a message event
// (`{"type":"message","seq":N`) and two seq reads; this session's own messages in it are found
// by their `"id":"<prefix>` and their delivery lag by the first `,"ts":`. Every other frame
// (before the welcome, another event type in it, a gap, a repeat) is parsed, and each event
// handled and each message's seq checked.
//
// The welcome can be lost in k6 itself: k6/experimental/websockets (k6 1.1) starts reading a
// socket before it queues the socket's open event, and drops a frame it hands to the VU while
// the socket is not yet OPEN. The welcome, the server's first frame, is the one at risk (1 to 2
// connections in 1000 with k6 squeezed onto one busy core). A session whose first event is
// another one lost its welcome that way (the server sends nothing before it, and errors only
// answer frames the session sends after it): it counts the loss (chat_welcomes_lost), goes on
// as welcomed, and checks its room's seq from the first message it reads.
import { sleep } from 'k6';
import exec from 'k6/execution';
import { WebSocket } from 'k6/experimental/websockets';
import { WS_URLS } from './config.js';
import * as m from './metrics.js';

const LAG_SAMPLE_MS = 1000;
const FLUSH_MS = 1000;
// A session shorter than this is not worth opening: the VU idles to the end instead.
const MIN_SESSION_MS = 3000;
const IDLE_PAST_END_MS = 250;
const DRAIN_MS = 2000;
// After a failed upgrade or an unexpected close the iteration lingers this long, so a VU
// doesn't hammer a server that refuses it.
const RETRY_PAUSE_MS = 1000;
const OPEN = 1;

let sessions = 0; // per VU: module state lives in the VU's own JS runtime

// The chat endpoint for `room` and `user`, on this VU's instance (WS_URL may list several).
export function chatUrl(room, user) {
  const base = WS_URLS[exec.vu.idInTest % WS_URLS.length];
  const join = base.includes('?') ? '&' : '?';
  return `${base}${join}room=${encodeURIComponent(room)}&user=${encodeURIComponent(user)}`;
}

// Epoch ms at which the running scenario ends when it lasts `durationMs`.
export function scenarioEnd(durationMs) {
  return exec.scenario.startTime + durationMs;
}

// Opens one session that closes itself at `endAt`. When too little time is left for a useful
// session (its drain time plus a few seconds), it idles a little past `endAt` instead, so the
// executor starts no further iteration, and returns null. See ChatSession for the options.
export function sessionUntil(endAt, options) {
  const left = endAt - Date.now();
  if (left < (options.drainMs ?? DRAIN_MS) + MIN_SESSION_MS) {
    sleep((Math.max(0, left) + IDLE_PAST_END_MS) / 1000);
    return null;
  }
  return new ChatSession({ ...options, endAt });
}

// Every event object starts with its type (the server's encoding). Led by `{`, the head is
// found faster by k6's String split than one led by a quote, a byte frequent in JSON.
const MESSAGE_HEAD = '{"type":"message","seq":';
// An event of another type than `message` (every other type starts with another letter).
const OTHER_EVENT = /\{"type":"[^m]/;

// The key of a message's `id` and of its server time (`ts`, epoch ms), as the server encodes
// them. Quotes inside chat text are escaped, so text can't match either.
const ID_KEY = '"id":"';
const TS_KEY = ',"ts":';

// The whole number that starts `offset` characters after position `at` of `data`.
function intAt(data, at, offset) {
  return parseInt(data.substr(at + offset, 20), 10);
}

// A session's counts reach k6 as one sample per counter and flush, not one per event.
function addCount(counter, value) {
  if (value > 0) {
    counter.add(value);
  }
}

function parseEvents(data) {
  const parsed = JSON.parse(data);
  return Array.isArray(parsed) ? parsed : [parsed];
}

/**
 * A chat connection that lives until `endAt` (epoch ms).
 *
 * options:
 *   room, user      query parameters of the upgrade
 *   endAt           when the session closes itself (normal close, 1000)
 *   sendEveryMs     0: lurker (only reads); else one send every N ms once the welcome arrived
 *   sendFrom        epoch ms before which nothing is sent (default 0: from the welcome on)
 *   commands        symbols to cycle through as `/stock=SYM` bot commands instead of chat text
 *   drainMs         stop sending this long before endAt, then close as soon as every message
 *                   came back and every command was answered
 *
 * One interval timer drives a session (sends, drain, close, metric flushes), started at a
 * random phase so that VUs which connected together don't send in lockstep. A VU interrupted
 * by a ramp-down closes the socket; k6 then warns once about the stopped timer.
 */
export class ChatSession {
  constructor({
    room,
    user,
    endAt,
    sendEveryMs = 0,
    sendFrom = 0,
    commands = null,
    drainMs = DRAIN_MS,
  }) {
    sessions += 1;
    this.user = user;
    this.endAt = endAt;
    this.sendEveryMs = sendEveryMs;
    this.sendFrom = sendFrom;
    this.commands = commands;
    this.drainMs = drainMs;
    this.prefix = `k6:${exec.vu.idInTest}:${sessions}:`;
    this.ownId = `${ID_KEY}${this.prefix}`; // starts the `id` of each of its own messages
    this.sent = 0;
    this.nextSendAt = Infinity; // set once welcomed
    this.pendingMessages = new Map(); // id -> send time (epoch ms)
    this.pendingCommands = new Map();
    this.opened = false;
    this.welcomed = false;
    this.draining = false;
    this.closing = false;
    this.closeCode = null;
    // Counts since the last flush: events and message events received, messages missed,
    // chat messages sent, own messages read back.
    this.events = 0;
    this.messages = 0;
    this.missed = 0;
    this.chatsSent = 0;
    this.echoed = 0;
    // The room's last message seq this session saw (from welcome on); null after a lost
    // welcome, until the first message read.
    this.lastSeq = 0;
    this.lastFlush = 0;
    this.nextLagSample = 0;
    this.startTimer = null;
    this.tickTimer = null;

    this.ws = new WebSocket(chatUrl(room, user), null, { tags: { name: 'chat_ws' } });
    this.ws.onopen = () => this.handleOpen();
    this.ws.onmessage = (event) => this.handleFrame(event.data, event.timestamp);
    this.ws.onerror = (event) => this.handleError(event.error);
    this.ws.onclose = () => this.handleClose();
  }

  // Sends a chat message (or the next bot command) now; false when the socket isn't open.
  send(text) {
    if (this.ws.readyState !== OPEN || this.closing) {
      return false;
    }
    this.sent += 1;
    const id = `${this.prefix}${this.sent}`;
    const sent = Date.now();
    this.ws.send(JSON.stringify({ type: 'message', text, id, sent }));
    return { id, sent };
  }

  sendChat() {
    const out = this.send(`hello ${this.sent + 1} from ${this.user}`);
    if (out) {
      this.pendingMessages.set(out.id, out.sent);
      this.chatsSent += 1;
    }
  }

  sendCommand() {
    const symbol = this.commands[this.sent % this.commands.length];
    const out = this.send(`/stock=${symbol}`);
    if (out) {
      this.pendingCommands.set(out.id, out.sent);
      m.commandsSent.add(1);
    }
  }

  close() {
    if (this.closing) {
      return;
    }
    this.closing = true;
    this.ws.close();
  }

  handleOpen() {
    this.opened = true;
    m.upgrades.add(true);
    const period = Math.min(this.sendEveryMs || FLUSH_MS, FLUSH_MS);
    this.startTimer = setTimeout(() => {
      this.tickTimer = setInterval(() => this.tick(), period);
      this.tick();
    }, Math.random() * period);
  }

  tick() {
    const now = Date.now();
    if (now >= this.endAt) {
      this.close();
      return;
    }
    if (now >= this.endAt - this.drainMs) {
      if (!this.draining) {
        this.countUnsent(this.endAt - this.drainMs);
      }
      this.draining = true;
      this.closeIfDrained();
    } else if (now >= this.nextSendAt) {
      this.nextSendAt += this.sendEveryMs;
      if (this.commands) {
        this.sendCommand();
      } else {
        this.sendChat();
      }
    }
    if (now - this.lastFlush >= FLUSH_MS) {
      this.flush();
    }
  }

  // Chat messages due before `until` on this session's schedule that were never sent (whole
  // intervals only: a tick that comes a little late is not counted).
  countUnsent(until) {
    if (this.sendEveryMs && !this.commands && this.nextSendAt !== Infinity) {
      const unsent = Math.floor((until - this.nextSendAt) / this.sendEveryMs);
      if (unsent > 0) {
        m.messagesUnsent.add(unsent);
      }
      this.nextSendAt = Infinity;
    }
  }

  closeIfDrained() {
    if (this.draining && this.pendingMessages.size === 0 && this.pendingCommands.size === 0) {
      this.close();
    }
  }

  handleFrame(data, receivedAt) {
    if (!this.welcomed || !this.readRun(data, receivedAt)) {
      this.handleEvents(parseEvents(data), receivedAt);
    }
  }

  // Reads a frame of n events, all messages, with seqs lastSeq + 1 ... lastSeq + n (seqs rise,
  // so none is missing) without parsing it: counts them, records chat_rtt for this session's
  // own messages among them and, when a sample is due, the delivery lag of the first. Any other
  // frame: false, nothing read.
  readRun(data, receivedAt) {
    if (this.lastSeq === null || OTHER_EVENT.test(data)) {
      return false;
    }
    const n = data.charCodeAt(0) === 91 /* [ */ ? data.split(MESSAGE_HEAD).length - 1 : 1;
    const first = intAt(data, data.indexOf(MESSAGE_HEAD), MESSAGE_HEAD.length);
    const last = n === 1 ? first : intAt(data, data.lastIndexOf(MESSAGE_HEAD), MESSAGE_HEAD.length);
    if (first !== this.lastSeq + 1 || last !== this.lastSeq + n) {
      return false;
    }
    this.events += n;
    this.messages += n;
    this.lastSeq = last;
    if (receivedAt >= this.nextLagSample) {
      this.sampleLag(receivedAt, intAt(data, data.indexOf(TS_KEY), TS_KEY.length));
    }
    for (let at = data.indexOf(this.ownId); at !== -1; at = data.indexOf(this.ownId, at + 1)) {
      const start = at + ID_KEY.length;
      this.handleOwnMessage(data.substring(start, data.indexOf('"', start)), receivedAt);
    }
    this.closeIfDrained();
    return true;
  }

  // A live message with room sequence number `seq`: counted, and checked for a gap (the
  // first one after a lost welcome has nothing to be checked against).
  countMessage(seq) {
    this.messages += 1;
    if (this.lastSeq === null) {
      this.lastSeq = seq;
      return;
    }
    if (seq > this.lastSeq + 1) {
      this.missed += seq - this.lastSeq - 1;
    }
    this.lastSeq = Math.max(this.lastSeq, seq);
  }

  // A delivery lag sample: a message the server stamped `ts` (epoch ms), read at `receivedAt`.
  sampleLag(receivedAt, ts) {
    m.deliveryLag.add(Math.max(0, receivedAt - ts));
    this.nextLagSample = receivedAt + LAG_SAMPLE_MS;
  }

  handleEvents(events, receivedAt) {
    this.events += events.length;
    for (const event of events) {
      if (!this.welcomed && event.type !== 'welcome') {
        m.welcomesLost.add(1);
        this.welcome(null);
      }
      switch (event.type) {
        case 'welcome':
          this.welcome(event.seq);
          break;
        case 'message':
          this.countMessage(event.seq);
          this.handleOwnMessage(event.id, receivedAt);
          if (receivedAt >= this.nextLagSample) {
            this.sampleLag(receivedAt, event.ts);
          }
          break;
        case 'bot':
          this.handleBot(event, receivedAt);
          break;
        case 'error':
          this.handleErrorEvent(event);
          break;
        default:
          break;
      }
    }
    this.closeIfDrained();
  }

  // The session is in its room from `seq` on (null: not known, the welcome was lost).
  welcome(seq) {
    this.welcomed = true;
    this.lastSeq = seq;
    if (this.sendEveryMs) {
      this.nextSendAt = Math.max(Date.now(), this.sendFrom);
    }
  }

  // Records chat_rtt for the session's message `id` the first time it is read back.
  handleOwnMessage(id, receivedAt) {
    const sentAt = this.pendingMessages.get(id);
    if (sentAt !== undefined) {
      this.pendingMessages.delete(id);
      m.chatRtt.add(receivedAt - sentAt);
      this.echoed += 1;
    }
  }

  handleBot(event, receivedAt) {
    const sentAt = this.pendingCommands.get(event.reply_to);
    if (sentAt === undefined) {
      return;
    }
    this.pendingCommands.delete(event.reply_to);
    m.botRtt.add(receivedAt - sentAt);
    m.botReplies.add(1, { result: event.ok ? 'ok' : 'failed' });
    m.botReplyOk.add(event.ok === true);
  }

  handleErrorEvent(event) {
    const code = String(event.code);
    m.errorsReceived.add(1, { code });
    if (this.pendingCommands.delete(event.reply_to)) {
      m.botReplies.add(1, { result: code });
      m.botReplyOk.add(false);
    }
    this.pendingMessages.delete(event.reply_to);
  }

  handleError(message) {
    if (!this.opened) {
      m.upgrades.add(false);
      return;
    }
    const match = /close (\d+)/.exec(message || '');
    this.closeCode = match ? match[1] : 'error';
  }

  handleClose() {
    clearTimeout(this.startTimer);
    clearInterval(this.tickTimer);
    this.countUnsent(Math.min(Date.now(), this.endAt - this.drainMs));
    this.flush();
    if (!this.closing) {
      setTimeout(() => {}, RETRY_PAUSE_MS); // keeps the iteration (and the VU) waiting
      if (this.opened) {
        m.unexpectedCloses.add(1, { close_code: this.closeCode || '1000/1001' });
      }
    }
    if (this.pendingMessages.size > 0) {
      m.messagesLost.add(this.pendingMessages.size);
    }
    for (let i = 0; i < this.pendingCommands.size; i += 1) {
      m.botReplies.add(1, { result: 'lost' });
      m.botReplyOk.add(false);
    }
  }

  flush() {
    this.lastFlush = Date.now();
    addCount(m.eventsReceived, this.events);
    addCount(m.messagesReceived, this.messages);
    addCount(m.messagesMissed, this.missed);
    addCount(m.messagesSent, this.chatsSent);
    addCount(m.messagesEchoed, this.echoed);
    this.events = 0;
    this.messages = 0;
    this.missed = 0;
    this.chatsSent = 0;
    this.echoed = 0;
  }
}
