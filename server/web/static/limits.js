// What the server takes from a connection, as welcome.limits tells it (docs/protocol.md,
// "welcome"): the page refuses locally a message the server would refuse or close on.

const encoder = new TextEncoder();

/** UTF-8 bytes of `text`: how the server counts a message against max_message_bytes. */
export function utf8Bytes(text) {
  return encoder.encode(text).length;
}

/** Why the server would refuse the message `text` sent as a frame of `bytes` UTF-8 bytes,
 * given `limits` ({max_text_chars, max_message_bytes}), as {code, detail} (the codes of the
 * server's error events); null when it fits or `limits` is not known yet. */
export function messageProblem(text, bytes, limits) {
  if (!limits) return null;
  const chars = [...text].length; // code points, as the server counts them
  if (chars > limits.max_text_chars) {
    return {
      code: "too_long",
      detail:
        `This message has ${chars.toLocaleString("en")} characters; the server takes at most ` +
        `${limits.max_text_chars.toLocaleString("en")}. Shorten it and send it again.`,
    };
  }
  if (bytes > limits.max_message_bytes) {
    return {
      code: "too_big",
      detail:
        `This message is ${bytes.toLocaleString("en")} bytes as sent; the server takes at most ` +
        `${limits.max_message_bytes.toLocaleString("en")}. Shorten it and send it again.`,
    };
  }
  return null;
}
