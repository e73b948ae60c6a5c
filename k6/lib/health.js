// What "healthy" means, as k6 thresholds shared by every scenario.
//
// A scenario describes what it measures: `chat` and `bot` list the tag sets (e.g. [{}] or
// [{ role: 'chatter' }]) whose chat_rtt / chat_bot_rtt must be healthy, `read` the tag sets
// that must receive events. k6 passes a threshold
// on a metric with no samples, so each measured set also gets a count guard (count>0), and
// seedGuards() (called from setup()) adds a zero sample to every guarded series: a run that
// measured nothing fails instead of passing vacuously.
//
// k6's end-of-test data holds a tagged sub-metric (chat_errors_received{code:busy}) only when
// it has a threshold, so every documented tag value of the BREAKDOWNS gets an always-passing
// TALLY threshold: the summary can then count errors, closes and bot replies by code.
import * as m from './metrics.js';

export const CHAT_RTT = ['p(95)<100', 'p(99)<250'];
export const BOT_RTT = ['p(95)<500', 'p(99)<1000'];
export const BOT_REPLY_OK = ['rate>0.95'];

// The always-passing threshold that only makes k6 keep a sub-metric (summary.js hides it).
export const TALLY = 'count>=0';

// Error codes of the protocol's `error` event (docs/protocol.md, "error").
const ERROR_CODES = ['bad_json', 'bad_message', 'too_long', 'bad_command', 'rate_limited', 'busy'];

// metric -> [tag, values]: the counts the summary breaks down. Close codes are the tag values
// chat.js records: the code of an abnormal close (1002 ... 1013, 1006 without a close frame),
// '1000/1001' for a clean close the client didn't start (k6 doesn't tell the two apart), and
// 'error' for a connection error without a close code.
export const BREAKDOWNS = {
  chat_errors_received: ['code', ERROR_CODES],
  chat_unexpected_closes: [
    'close_code',
    ['1000/1001', '1002', '1006', '1007', '1008', '1009', '1011', '1013', 'error'],
  ],
  chat_bot_replies: ['result', ['ok', 'failed', 'lost', ...ERROR_CODES]],
};

function series(name, tags) {
  const pairs = Object.entries(tags).map(([key, value]) => `${key}:${value}`);
  return pairs.length ? `${name}{${pairs.join(',')}}` : name;
}

/**
 * Thresholds for a scenario.
 *
 * spec: { chat: [tags...], bot: [tags...], read: [tags...], upgradeRate: 'rate>0.99' }
 * Always: upgrades succeed (upgradeRate), no unexpected closes, no rate_limited errors, no
 * member misses a message of its room while connected (chat_messages_missed).
 * Without bot users: no error events at all (with them, `busy` counts against the reply rate).
 * Plus a TALLY threshold on every BREAKDOWNS sub-metric that has no real threshold.
 */
export function thresholds({ chat = [], bot = [], read = [], upgradeRate = 'rate>0.99' }) {
  const out = {
    chat_ws_upgrade_ok: [upgradeRate],
    chat_unexpected_closes: ['count==0'],
    chat_messages_missed: ['count==0'],
  };
  if (bot.length) {
    out['chat_errors_received{code:rate_limited}'] = ['count==0'];
  } else {
    out.chat_errors_received = ['count==0'];
  }
  for (const tags of chat) {
    out[series('chat_rtt', tags)] = CHAT_RTT;
    out[series('chat_messages_echoed', tags)] = ['count>0'];
    out[series('chat_messages_lost', tags)] = ['count==0'];
  }
  for (const tags of bot) {
    out[series('chat_bot_rtt', tags)] = BOT_RTT;
    out[series('chat_bot_reply_ok', tags)] = BOT_REPLY_OK;
    out[series('chat_bot_replies', { ...tags, result: 'ok' })] = ['count>0'];
  }
  for (const tags of read) {
    out[series('chat_events_received', tags)] = ['count>0'];
  }
  for (const [name, [tag, values]] of Object.entries(BREAKDOWNS)) {
    for (const value of values) {
      const key = series(name, { [tag]: value });
      out[key] = out[key] || [TALLY];
    }
  }
  return out;
}

// Adds the zero samples the count guards of `spec` need (call it from setup()).
export function seedGuards({ chat = [], bot = [], read = [] }) {
  for (const tags of chat) {
    m.messagesEchoed.add(0, tags);
  }
  for (const tags of bot) {
    m.botReplies.add(0, { ...tags, result: 'ok' });
  }
  for (const tags of read) {
    m.eventsReceived.add(0, tags);
  }
}
