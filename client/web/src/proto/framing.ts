// Control-stream framing (docs/protocol.md, section 2, "Framing"): each
// frame is a 4-byte big-endian payload length, then one encoded message.
// A length over MAX_CONTROL_FRAME is refused before its payload is buffered.

import { decodeServerMsg, encodeClientMsg, encodeServerMsg, MAX_CONTROL_FRAME } from "./messages";
import type { ClientMsg, ServerMsg } from "./messages";
import { CodecError } from "./wire";

const PREFIX = 4;

function frame(payload: Uint8Array): Uint8Array {
  if (payload.length > MAX_CONTROL_FRAME) {
    throw new CodecError(`frame of ${payload.length} bytes is over the limit of ${MAX_CONTROL_FRAME} bytes`);
  }
  const out = new Uint8Array(PREFIX + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length, false);
  out.set(payload, PREFIX);
  return out;
}

/** A ClientMsg as one control-stream frame: length prefix and payload. */
export function frameClientMsg(msg: ClientMsg): Uint8Array {
  return frame(encodeClientMsg(msg));
}

/** Test/tooling use: a ServerMsg as the router frames it. */
export function frameServerMsg(msg: ServerMsg): Uint8Array {
  return frame(encodeServerMsg(msg));
}

/** Collects control-stream bytes as they arrive, in chunks of any size, and
 * yields the router's messages one at a time. Memory is bounded by one
 * frame plus what was pushed since the last `next`. */
export class FrameReader {
  private buf = new Uint8Array(0);
  private start = 0;
  private end = 0;

  /** Adds bytes read from the stream. */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) {
      return;
    }
    if (this.end + chunk.length > this.buf.length) {
      const pending = this.end - this.start;
      const need = pending + chunk.length;
      if (need > this.buf.length) {
        const bigger = new Uint8Array(Math.max(need, 2 * this.buf.length));
        bigger.set(this.buf.subarray(this.start, this.end));
        this.buf = bigger;
      } else {
        this.buf.copyWithin(0, this.start, this.end);
      }
      this.start = 0;
      this.end = pending;
    }
    this.buf.set(chunk, this.end);
    this.end += chunk.length;
  }

  /** The next whole message, or null until more bytes arrive. Throws a
   * CodecError for a length over MAX_CONTROL_FRAME (every later call
   * throws it too: the stream cannot be read on) or a malformed payload
   * (that frame is skipped). */
  next(): ServerMsg | null {
    const pending = this.end - this.start;
    if (pending < PREFIX) {
      return null;
    }
    const len = new DataView(this.buf.buffer, this.buf.byteOffset + this.start, PREFIX).getUint32(0, false);
    if (len > MAX_CONTROL_FRAME) {
      throw new CodecError(`malformed frame: frame of ${len} bytes is over the limit of ${MAX_CONTROL_FRAME} bytes`);
    }
    if (pending < PREFIX + len) {
      return null;
    }
    const payload = this.buf.subarray(this.start + PREFIX, this.start + PREFIX + len);
    this.start += PREFIX + len;
    if (this.start === this.end) {
      this.start = 0;
      this.end = 0;
    }
    return decodeServerMsg(payload);
  }
}
