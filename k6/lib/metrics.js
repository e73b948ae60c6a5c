// Custom k6 metrics every scenario records. Names are part of the load lab's interface:
// thresholds, the summary JSON, bench/run.py and the tests read them.
import { Counter, Rate, Trend } from 'k6/metrics';

// Own message sent -> the same message (matched by its `id`) read back from the room broadcast.
export const chatRtt = new Trend('chat_rtt', true);
// `/stock=` command sent -> the `bot` event whose `reply_to` is that command's id.
export const botRtt = new Trend('chat_bot_rtt', true);
// Server `ts` of a message -> the frame holding it read by this client (same host clock).
// Sampled: the first message of at most one frame per second per connection.
export const deliveryLag = new Trend('chat_delivery_lag', true);

// Server events received (a batched frame counts each event in it).
export const eventsReceived = new Counter('chat_events_received');
// `error` events received, tagged `code` (rate_limited, busy, bad_message, ...).
export const errorsReceived = new Counter('chat_errors_received');
// Connections the server (or the network) closed while the client still wanted them,
// tagged `close_code` (1008, 1013, 1006, ... or "1000/1001" for a clean server close).
export const unexpectedCloses = new Counter('chat_unexpected_closes');
// WebSocket upgrades: true when the connection opened, false when the handshake failed.
export const upgrades = new Rate('chat_ws_upgrade_ok');

export const messagesSent = new Counter('chat_messages_sent');
// Chat messages that fell due on the session's schedule (one every sendEveryMs from the welcome
// until the drain) but were never sent: k6 fell a whole interval or more behind its own
// timers. chat_messages_sent / (sent + unsent) is the share of the planned load k6 produced.
export const messagesUnsent = new Counter('chat_messages_unsent');
// `message` events received live (after the welcome; history not included), counted by the
// client: every member's own receipts.
export const messagesReceived = new Counter('chat_messages_received');
// Messages a member never received: gaps in the room's `seq` between two it did receive
// (from its welcome on). The server promises none while a connection is open.
export const messagesMissed = new Counter('chat_messages_missed');
// Sessions whose welcome k6 itself dropped (k6/experimental/websockets discards a frame read
// before the socket's open event, k6/lib/chat.js): each counted its room's seq from the first
// message it read instead.
export const welcomesLost = new Counter('chat_welcomes_lost');
// Own messages read back (one per chat_rtt sample: thresholds use it to refuse an empty run).
export const messagesEchoed = new Counter('chat_messages_echoed');
// Own messages never read back before the connection closed.
export const messagesLost = new Counter('chat_messages_lost');
export const commandsSent = new Counter('chat_commands_sent');
// Bot command outcomes, tagged `result`: ok, failed (ok=false reply), busy, rate_limited, lost.
export const botReplies = new Counter('chat_bot_replies');
// Share of bot commands answered with an ok quote.
export const botReplyOk = new Rate('chat_bot_reply_ok');
