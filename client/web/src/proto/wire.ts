// The primitive encoding of Tessera's protocol: bincode 2 in its standard
// configuration, as proto/src/frame.rs configures it (docs/protocol.md,
// section 2, "Encoding"):
// - unsigned integers are varints: 0..250 in one byte, else a marker byte
//   (0xFB, 0xFC, 0xFD) and then 2, 4 or 8 little-endian bytes;
// - signed integers are ZigZag-mapped to unsigned ones first;
// - f32 is 4 bytes, IEEE 754, little-endian; a bool is one byte, 0 or 1;
// - a string or byte vector is a varint length and then its bytes; an
//   Option is 0, or 1 and the value; an enum is its variant index (a varint
//   u32) and then the variant's fields.
//
// The Reader checks everything Rust's decoder checks, so garbage is a
// CodecError, never a wrong value: lengths against the bytes left, a marker
// too wide for the integer, bool and Option bytes, UTF-8.

/** Bytes that are not a valid message, or a value that cannot be encoded. */
export class CodecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "CodecError";
  }
}

const U16_MARKER = 0xfb;
const U32_MARKER = 0xfc;
const U64_MARKER = 0xfd;
/** Largest value a varint writes in its marker byte alone. */
const SINGLE_BYTE_MAX = 250;
const U32_MAX = 0xffff_ffff;
const U64_MAX = (1n << 64n) - 1n;

const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const utf8Encoder = new TextEncoder();
/** In a `u` regex, a surrogate pair is one code point: this finds only
 * unpaired surrogates, which UTF-8 cannot carry. */
const LONE_SURROGATE = /\p{Cs}/u;

/** Reads one message's values from the front of `bytes`. */
export class Reader {
  private at = 0;
  private readonly view: DataView;

  constructor(private readonly bytes: Uint8Array) {
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Bytes not read yet. */
  get remaining(): number {
    return this.bytes.length - this.at;
  }

  /** Checks that the message used every byte: trailing bytes are an error. */
  end(): void {
    if (this.remaining !== 0) {
      throw new CodecError(`malformed message: ${this.remaining} trailing bytes`);
    }
  }

  /** Moves past `n` bytes and returns where they start. */
  private skip(n: number): number {
    if (n > this.remaining) {
      throw new CodecError(
        `malformed message: ends early at byte ${this.at} (${n} bytes wanted, ${this.remaining} left)`,
      );
    }
    const start = this.at;
    this.at += n;
    return start;
  }

  u8(): number {
    return this.bytes[this.skip(1)]!;
  }

  /** A varint of at most `maxMarker`'s width, as a number (up to u32). */
  private varint32(maxMarker: number, what: string): number {
    const at = this.at;
    const first = this.u8();
    if (first <= SINGLE_BYTE_MAX) {
      return first;
    }
    if (first === U16_MARKER && maxMarker >= U16_MARKER) {
      return this.view.getUint16(this.skip(2), true);
    }
    if (first === U32_MARKER && maxMarker >= U32_MARKER) {
      return this.view.getUint32(this.skip(4), true);
    }
    throw new CodecError(`malformed message: varint marker 0x${first.toString(16)} at byte ${at} is invalid for a ${what}`);
  }

  u16(): number {
    return this.varint32(U16_MARKER, "u16");
  }

  u32(): number {
    return this.varint32(U32_MARKER, "u32");
  }

  u64(): bigint {
    if (this.bytes[this.at] !== U64_MARKER) {
      return BigInt(this.varint32(U32_MARKER, "u64"));
    }
    this.skip(1);
    return this.view.getBigUint64(this.skip(8), true);
  }

  /** A length (a varint usize) of something made of at least one byte per
   * element: a length over the bytes left is an error before anything is
   * read or allocated. */
  length(): number {
    const at = this.at;
    const len = this.u64();
    if (len > BigInt(this.remaining)) {
      throw new CodecError(`malformed message: length ${len} at byte ${at} is over the ${this.remaining} bytes left`);
    }
    return Number(len);
  }

  i32(): number {
    const n = this.u32();
    return (n >>> 1) ^ -(n & 1);
  }

  f32(): number {
    return this.view.getFloat32(this.skip(4), true);
  }

  bool(): boolean {
    const at = this.at;
    const b = this.u8();
    if (b > 1) {
      throw new CodecError(`malformed message: bool byte ${b} at byte ${at}`);
    }
    return b === 1;
  }

  /** An Option: `null` for None. */
  option<T>(read: (r: Reader) => T): T | null {
    const at = this.at;
    const tag = this.u8();
    if (tag > 1) {
      throw new CodecError(`malformed message: Option tag ${tag} at byte ${at}`);
    }
    return tag === 1 ? read(this) : null;
  }

  string(): string {
    const len = this.length();
    const start = this.skip(len);
    try {
      return utf8Decoder.decode(this.bytes.subarray(start, start + len));
    } catch {
      throw new CodecError(`malformed message: invalid UTF-8 in the string at byte ${start}`);
    }
  }

  /** A `Vec<u8>` (or `serde_bytes`): a copy of its bytes. */
  byteBuf(): Uint8Array {
    const len = this.length();
    const start = this.skip(len);
    return this.bytes.slice(start, start + len);
  }

  /** A `Vec<T>` of elements that take at least one byte each. */
  vec<T>(read: (r: Reader) => T): T[] {
    const count = this.length();
    const out: T[] = [];
    for (let k = 0; k < count; k++) {
      out.push(read(this));
    }
    return out;
  }

  /** An enum's variant index. */
  variant(): number {
    return this.u32();
  }
}

/** Appends values to a growing buffer; `finish` returns the bytes. Values
 * out of their type's range are a CodecError, not silently wrapped. */
export class Writer {
  private buf = new Uint8Array(64);
  private view = new DataView(this.buf.buffer);
  private len = 0;

  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }

  /** Makes room for `n` more bytes and returns where they go. It may
   * replace `buf` and `view`: read them only after calling it. */
  private grow(n: number): number {
    const at = this.len;
    if (at + n > this.buf.length) {
      const bigger = new Uint8Array(Math.max(this.buf.length * 2, at + n));
      bigger.set(this.buf.subarray(0, at));
      this.buf = bigger;
      this.view = new DataView(bigger.buffer);
    }
    this.len += n;
    return at;
  }

  u8(v: number): void {
    const at = this.grow(1);
    this.buf[at] = v;
  }

  /** Bytes as they are, with no length. */
  raw(bytes: Uint8Array): void {
    const at = this.grow(bytes.length);
    this.buf.set(bytes, at);
  }

  private varint32(v: number): void {
    if (v <= SINGLE_BYTE_MAX) {
      this.u8(v);
    } else if (v <= 0xffff) {
      this.u8(U16_MARKER);
      const at = this.grow(2);
      this.view.setUint16(at, v, true);
    } else {
      this.u8(U32_MARKER);
      const at = this.grow(4);
      this.view.setUint32(at, v, true);
    }
  }

  u16(v: number): void {
    this.varint32(checkInt(v, 0, 0xffff, "a u16"));
  }

  u32(v: number): void {
    this.varint32(checkInt(v, 0, U32_MAX, "a u32"));
  }

  u64(v: bigint): void {
    if (typeof v !== "bigint" || v < 0n || v > U64_MAX) {
      throw new CodecError(`cannot encode ${String(v)} as a u64 (a bigint in 0..2^64-1)`);
    }
    if (v <= BigInt(U32_MAX)) {
      this.varint32(Number(v));
    } else {
      this.u8(U64_MARKER);
      const at = this.grow(8);
      this.view.setBigUint64(at, v, true);
    }
  }

  /** A length, as a varint usize. */
  length(n: number): void {
    this.u64(BigInt(n));
  }

  i32(v: number): void {
    checkInt(v, -0x8000_0000, 0x7fff_ffff, "an i32");
    this.varint32(((v << 1) ^ (v >> 31)) >>> 0);
  }

  /** Rounds to the nearest f32, as Rust's `as f32` does. */
  f32(v: number): void {
    if (typeof v !== "number") {
      throw new CodecError(`cannot encode ${String(v)} as an f32`);
    }
    const at = this.grow(4);
    this.view.setFloat32(at, v, true);
  }

  bool(v: boolean): void {
    if (typeof v !== "boolean") {
      throw new CodecError(`cannot encode ${String(v)} as a bool`);
    }
    this.u8(v ? 1 : 0);
  }

  option<T>(v: T | null, write: (w: Writer, v: T) => void): void {
    if (v === null) {
      this.u8(0);
    } else {
      this.u8(1);
      write(this, v);
    }
  }

  string(s: string): void {
    if (typeof s !== "string") {
      throw new CodecError(`cannot encode ${String(s)} as a string`);
    }
    // TextEncoder would quietly turn a lone surrogate into U+FFFD.
    if (LONE_SURROGATE.test(s)) {
      throw new CodecError("cannot encode a string with a lone surrogate as UTF-8");
    }
    this.byteBuf(utf8Encoder.encode(s));
  }

  byteBuf(bytes: Uint8Array): void {
    if (!(bytes instanceof Uint8Array)) {
      throw new CodecError("cannot encode a byte vector that is not a Uint8Array");
    }
    this.length(bytes.length);
    this.raw(bytes);
  }

  vec<T>(items: readonly T[], write: (w: Writer, v: T) => void): void {
    if (!Array.isArray(items)) {
      throw new CodecError("cannot encode a vector that is not an array");
    }
    this.length(items.length);
    for (const item of items) {
      write(this, item);
    }
  }

  variant(index: number): void {
    this.u32(index);
  }
}

/** `v` if it is an integer in `min..=max`, else a CodecError naming `what`
 * ("a u16"). */
export function checkInt(v: number, min: number, max: number, what: string): number {
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new CodecError(`cannot encode ${String(v)} as ${what}`);
  }
  return v;
}
