// One connection to a router over WebTransport: the browser's side of
// docs/protocol.md section 3. The client opens one bidirectional stream
// first, for control frames (4-byte big-endian length + bincode, as over
// native QUIC); inputs and snapshots travel as datagrams.
//
// A Session only moves bytes and sorts messages; what they mean to the
// player is the App's business. Until `start` is called (after LoggedIn)
// control messages are queued, so nothing the router sends right behind
// LoggedIn (EntityAppeared, ...) is lost; datagrams before it are dropped,
// as the native client does.

import {
  CLOSE_PROTOCOL,
  CLOSE_RESTART,
  CodecError,
  FrameReader,
  MAX_DATAGRAM,
  PROTOCOL_VERSION,
  decodeServerDatagram,
  encodeInput,
  frameClientMsg,
  type ClientMsg,
  type ErrorCode,
  type Input,
  type ServerDatagram,
  type ServerMsg,
} from "./proto/index";
import { base64Bytes, type TesseraConfig } from "./config";

export type LoggedIn = Extract<ServerMsg, { type: "LoggedIn" }>;

/** Why a connection or a login did not work; `kind` says what to do. */
export type SessionErrorKind =
  | "unsupported" // no WebTransport in this browser
  | "unreachable" // the router did not answer or refused the connection
  | "refused" // the router said no (Error{code, message})
  | "protocol" // the router sent something we do not understand
  | "timeout"
  | "lost"; // the connection went away meanwhile

export class SessionError extends Error {
  constructor(
    readonly kind: SessionErrorKind,
    message: string,
    readonly code: ErrorCode | null = null,
    readonly close: CloseInfo | null = null,
  ) {
    super(message);
  }
}

/** How the connection ended. */
export interface CloseInfo {
  /** The application close code, when the router closed the session cleanly. */
  code: number | null;
  reason: string;
  /** The router is stopping (CLOSE_RESTART): the session is kept. */
  restart: boolean;
}

export interface SessionHandlers {
  message(msg: ServerMsg): void;
  datagram(d: ServerDatagram, size: number): void;
  closed(info: CloseInfo): void;
}

/** How long the router may take, in milliseconds (docs/protocol.md, "Timeouts"). */
const CONNECT_TIMEOUT_MS = 10_000;
const WELCOME_TIMEOUT_MS = 10_000;
const LOGIN_TIMEOUT_MS = 30_000;

function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new SessionError("timeout", `${what} took longer than ${ms / 1000} s`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}

export function webTransportSupported(): boolean {
  return typeof (globalThis as { WebTransport?: unknown }).WebTransport === "function";
}

export class Session {
  /** Bytes of control frames and datagrams, in and out (payload, without
   * QUIC and HTTP/3 overhead). */
  bytesIn = 0;
  bytesOut = 0;
  datagramsIn = 0;
  badDatagrams = 0;
  /** The world name from Welcome. */
  worldName = "";
  serverName = "";

  private readonly writer: WritableStreamDefaultWriter<Uint8Array>;
  private readonly dgramWriter: WritableStreamDefaultWriter<Uint8Array>;
  private readonly frames = new FrameReader();
  private queue: ServerMsg[] = [];
  private waiter: ((m: ServerMsg | null) => void) | null = null;
  private handlers: SessionHandlers | null = null;
  private closeInfo: CloseInfo | null = null;
  private closeListeners: Array<(c: CloseInfo) => void> = [];
  private inputSeq = 0;

  private constructor(
    private readonly transport: WebTransport,
    stream: WebTransportBidirectionalStream,
  ) {
    this.writer = stream.writable.getWriter();
    this.dgramWriter = transport.datagrams.writable.getWriter();
    void this.readControl(stream.readable);
    void this.readDatagrams();
    void this.watchClose();
  }

  /** Connects to the router `config` names and exchanges Hello/Welcome. */
  static async open(config: TesseraConfig, clientName: string): Promise<Session> {
    if (!webTransportSupported()) {
      throw new SessionError(
        "unsupported",
        window.isSecureContext
          ? "This browser cannot use WebTransport. Use a current Chrome, Edge or Firefox."
          : "WebTransport works only on a secure page: open this page with https://, or as http://localhost or http://127.0.0.1.",
      );
    }
    const wt = config.webtransport;
    const options: WebTransportOptions = { requireUnreliable: true };
    if (wt.certificate_hashes.length > 0) {
      options.serverCertificateHashes = wt.certificate_hashes.map((h) => ({
        algorithm: "sha-256",
        value: base64Bytes(h),
      }));
    }
    let transport: WebTransport;
    try {
      transport = new WebTransport(wt.url, options);
    } catch (e) {
      throw new SessionError("unreachable", `cannot connect to ${wt.url}: ${errText(e)}`);
    }
    // Keep an unhandled rejection of `closed` from reaching the console.
    transport.closed.catch(() => undefined);
    try {
      await withTimeout(transport.ready, CONNECT_TIMEOUT_MS, "connecting");
    } catch (e) {
      try {
        transport.close();
      } catch {
        // already closed
      }
      if (e instanceof SessionError) throw new SessionError("unreachable", `no answer from ${wt.url} within 10 s`);
      throw new SessionError("unreachable", `cannot reach the server at ${wt.url} (${errText(e)})`);
    }
    let stream: WebTransportBidirectionalStream;
    try {
      stream = await transport.createBidirectionalStream();
    } catch (e) {
      transport.close();
      throw new SessionError("lost", `the server closed the connection (${errText(e)})`);
    }
    const session = new Session(transport, stream);
    session.send({ type: "Hello", version: PROTOCOL_VERSION, client: clientName });
    let msg: ServerMsg;
    try {
      msg = await session.expect(WELCOME_TIMEOUT_MS, "the server's welcome");
    } catch (e) {
      session.close();
      throw e;
    }
    if (msg.type === "Welcome") {
      session.worldName = msg.world;
      session.serverName = msg.server;
      return session;
    }
    session.close();
    if (msg.type === "Error") throw new SessionError("refused", msg.message, msg.code);
    throw new SessionError("protocol", `expected Welcome, got ${msg.type}`);
  }

  /** Creates an account or logs in, and enters the world. On a refusal
   * (SessionError "refused") the connection stays open for another try. */
  login(create: boolean, name: string, password: string): Promise<LoggedIn> {
    this.send({ type: create ? "Create" : "Connect", name, password });
    return this.awaitLogin();
  }

  /** Logs in with the token of an earlier LoggedIn. */
  resume(token: string): Promise<LoggedIn> {
    this.send({ type: "Resume", token });
    return this.awaitLogin();
  }

  private async awaitLogin(): Promise<LoggedIn> {
    for (;;) {
      const msg = await this.expect(LOGIN_TIMEOUT_MS, "logging in");
      if (msg.type === "LoggedIn") return msg;
      if (msg.type === "Error") throw new SessionError("refused", msg.message, msg.code);
      // Pongs (and anything else harmless) before the answer are skipped.
      if (msg.type !== "Pong") throw new SessionError("protocol", `expected LoggedIn, got ${msg.type}`);
    }
  }

  /** From now on, control messages (first those queued), datagrams and
   * the close go to `handlers`. */
  start(handlers: SessionHandlers): void {
    this.handlers = handlers;
    const queued = this.queue;
    this.queue = [];
    for (const m of queued) handlers.message(m);
    if (this.closeInfo) handlers.closed(this.closeInfo);
  }

  /** The next control message before `start`. */
  private expect(ms: number, what: string): Promise<ServerMsg> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.closeInfo) return Promise.reject(this.lostError(this.closeInfo));
    const p = new Promise<ServerMsg>((resolve, reject) => {
      this.waiter = (m) => {
        this.waiter = null;
        if (m) resolve(m);
        else reject(this.lostError(this.closeInfo));
      };
    });
    return withTimeout(p, ms, what).catch((e: unknown) => {
      this.waiter = null;
      throw e;
    });
  }

  private lostError(c: CloseInfo | null): SessionError {
    const why = c ? describeClose(c) : "the connection closed";
    return new SessionError("lost", why, null, c);
  }

  /** Sends a control message (frames are written in order). */
  send(msg: ClientMsg): void {
    if (this.closeInfo) return;
    let bytes: Uint8Array;
    try {
      bytes = frameClientMsg(msg);
    } catch (e) {
      console.warn("tessera: cannot encode", msg.type, errText(e));
      return;
    }
    this.bytesOut += bytes.length;
    this.writer.write(bytes).catch(() => undefined);
  }

  /** Sends a movement input as a datagram; returns it with its sequence
   * number (1, 2, ... wrapping, never 0, as the native client numbers). */
  sendInput(move_x: number, move_z: number, yaw: number, jump: boolean): Input {
    this.inputSeq = ((this.inputSeq + 1) >>> 0) || 1;
    const input: Input = { seq: this.inputSeq, move_x, move_z, yaw, jump };
    if (!this.closeInfo) {
      try {
        const bytes = encodeInput(input);
        this.bytesOut += bytes.length;
        // A full send queue or a closing connection: the next input
        // (sent every tick) replaces this one anyway.
        this.dgramWriter.write(bytes).catch(() => undefined);
      } catch (e) {
        console.warn("tessera: cannot encode an input", errText(e));
      }
    }
    return input;
  }

  get closed(): CloseInfo | null {
    return this.closeInfo;
  }

  onClose(listener: (c: CloseInfo) => void): void {
    if (this.closeInfo) listener(this.closeInfo);
    else this.closeListeners.push(listener);
  }

  /** Closes the connection (code 0, as a leaving client does). */
  close(reason = "bye"): void {
    try {
      this.transport.close({ closeCode: 0, reason });
    } catch {
      // already closed
    }
  }

  private deliver(msg: ServerMsg): void {
    if (this.handlers) {
      this.handlers.message(msg);
    } else if (this.waiter) {
      this.waiter(msg);
    } else {
      this.queue.push(msg);
    }
  }

  private async readControl(readable: ReadableStream<Uint8Array>): Promise<void> {
    const reader = readable.getReader();
    let why = "the server finished the control stream";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        this.bytesIn += value.length;
        this.frames.push(value);
        for (let m = this.frames.next(); m !== null; m = this.frames.next()) this.deliver(m);
      }
    } catch (e) {
      if (e instanceof CodecError) {
        // As the native client: a frame we cannot read ends the session
        // (a reconnect would only read it again).
        const reason = `the server sent a frame this page cannot read (${e.message}); reload the page`;
        this.finish(closeFrom(CLOSE_PROTOCOL, reason));
        try {
          this.transport.close({ closeCode: CLOSE_PROTOCOL, reason: "malformed frame" });
        } catch {
          // already closed
        }
        return;
      }
      why = errText(e);
    }
    // A stopping router finishes the control stream just before it closes
    // the connection: wait (up to 1 s) for the close, to learn its code.
    const info = await Promise.race([
      this.transport.closed.then(
        (c) => closeFrom(c.closeCode ?? null, c.reason ?? ""),
        (e: unknown) => closeFrom(null, errText(e)),
      ),
      new Promise<CloseInfo>((r) => setTimeout(() => r(closeFrom(null, why)), 1000)),
    ]);
    this.finish(info);
    try {
      this.transport.close();
    } catch {
      // already closed
    }
  }

  private async readDatagrams(): Promise<void> {
    const reader = this.transport.datagrams.readable.getReader();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        if (!this.handlers) continue;
        this.bytesIn += value.length;
        this.datagramsIn += 1;
        if (value.length > MAX_DATAGRAM) {
          this.badDatagrams += 1;
          continue;
        }
        let d: ServerDatagram;
        try {
          d = decodeServerDatagram(value);
        } catch {
          this.badDatagrams += 1; // dropped, as the native client does
          continue;
        }
        this.handlers.datagram(d, value.length);
      }
    } catch {
      // the connection closed; watchClose reports it
    }
  }

  private async watchClose(): Promise<void> {
    let info: CloseInfo;
    try {
      const c = await this.transport.closed;
      info = closeFrom(c.closeCode ?? null, c.reason ?? "");
    } catch (e) {
      info = closeFrom(null, errText(e));
    }
    // Let the control reader hand out what it already has first.
    setTimeout(() => this.finish(info), 0);
  }

  private finish(info: CloseInfo): void {
    if (this.closeInfo) return;
    this.closeInfo = info;
    if (this.waiter) this.waiter(null);
    if (this.handlers) this.handlers.closed(info);
    const listeners = this.closeListeners;
    this.closeListeners = [];
    for (const l of listeners) l(info);
  }
}

function closeFrom(code: number | null, reason: string): CloseInfo {
  return { code, reason, restart: code === CLOSE_RESTART };
}

export function describeClose(c: CloseInfo): string {
  if (c.code === null) return c.reason ? `connection lost (${c.reason})` : "connection lost";
  return c.reason ? `${c.reason} (code ${c.code})` : `closed by the server (code ${c.code})`;
}

export function errText(e: unknown): string {
  if (e instanceof Error) return e.message || e.name;
  return String(e);
}
