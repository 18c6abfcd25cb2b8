// The browser client: the session flow of client/src/lib.rs and the
// viewer of client/viewer/src/app.rs, over WebTransport.
//
//   login ──submit──> connecting ──LoggedIn──> playing
//     ^                   │ Error                 │ closed with CLOSE_RESTART,
//     └───────────────────┘                       │ or the connection lost
//     ^                                           v
//     └──── Resume refused / 60 s passed ──── reconnecting ──LoggedIn──> playing
//
// A closed connection with any other code (0 after Logout, `quit` or a
// kick; 1 or 2 for protocol trouble) ends the session: back to the form.
// The session token lives in sessionStorage, so reloading the page resumes
// the session as a reconnect does.

import {
  CLOSE_NORMAL,
  CLOSE_PROTOCOL,
  CLOSE_VERSION,
  PROTOCOL_VERSION,
  decodeSnapshotEntities,
  posFromCm,
  velFromCm,
  yawToRadians,
  type EntityKind,
  type ErrorCode,
  type Input,
  type ServerDatagram,
  type ServerMsg,
} from "./proto/index";
import { ConfigError, fetchConfig, type TesseraConfig } from "./config";
import { Controls } from "./controls";
import { Interpolator } from "./interp";
import { Predictor, seqNewer } from "./predict";
import { ATTEMPT_TIMEOUT_MS, Backoff } from "./reconnect";
import { WorldScene, type AvatarKind } from "./scene";
import { Session, SessionError, describeClose, errText, type CloseInfo, type LoggedIn } from "./session";
import { chatLineKind, lineToMessage, renderChat, renderHeard, type LineKind } from "./chat";
import { ChatPanel, Hud, LoginForm, type LoginError } from "./ui";
import { PerfRecorder, installHook, onScreen, type ClientState, type EntityView } from "./hook";
import { cellOf, formatCell, zoneAt, type CellXZ } from "./world";
import { ZERO, type V3 } from "./vec";

const CLIENT_NAME = "tessera-web 0.1.0";
const TOKEN_KEY = "tessera.token";
const NAME_KEY = "tessera.name";
/** Speech bubbles last this long, seconds. */
const BUBBLE_SECONDS = 6;
/** Entities known before a resume that were not announced again within
 * this long are dropped, seconds. */
const STALE_SECONDS = 3;
/** How long a hand-off banner shows without the overlay, seconds. */
const TRANSITION_BANNER_SECONDS = 2.5;
/** The own avatar's updates may pause this long before the link counts as bad. */
const LINK_BAD_SECONDS = 0.5;
const LINK_SLOW_MS = 200;

interface Known {
  id: string;
  kind: EntityKind;
  name: string;
  pos: V3;
  vel: V3;
  yaw: number;
  /** Server tick of the newest update (0: only the EntityAppeared). */
  tick: number;
  /** Where it was drawn this frame. */
  drawn: V3;
  /** Known from before a resume and not announced again yet (since when). */
  staleSince: number | null;
}

interface Transition {
  at: number;
  text: string;
}

/** Counters over the last second. */
interface LinkRate {
  windowStart: number;
  in0: number;
  out0: number;
  inPerS: number;
  outPerS: number;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function storage(): Storage | null {
  try {
    return window.sessionStorage;
  } catch {
    return null; // storage disabled
  }
}

export class App {
  private state: ClientState = "login";
  private config: TesseraConfig | null = null;
  private readonly scene: WorldScene;
  private readonly controls: Controls;
  private readonly login: LoginForm;
  private readonly chat: ChatPanel;
  private readonly hud: Hud;

  /** Bumped whenever a new connect/reconnect flow starts; older flows stop. */
  private generation = 0;
  /** A connection that said Welcome but is not logged in (kept between tries). */
  private loginSession: Session | null = null;
  private session: Session | null = null;
  private me: LoggedIn | null = null;
  private myId = "";
  private predictor = new Predictor(ZERO);
  private interp = new Interpolator(30);
  private readonly known = new Map<string, Known>();
  private readonly slots = new Map<number, string>();
  private ackInput = 0;
  private selfUpdated: number | null = null;
  private lastCorrection = 0;
  private snapshots = 0;
  private cell: CellXZ | null = null;
  private shard: string | null = null;
  private handoffs = 0;
  private transitions: Transition[] = [];
  /** An Error that came just before the server closed (Kicked, ...). */
  private endError: LoginError | null = null;
  private inputAcc = 0;
  private debug = false;

  private pingNonce = 0n;
  private readonly pingsSent = new Map<bigint, number>();
  private rttMs: number | null = null;
  private link: LinkRate = { windowStart: 0, in0: 0, out0: 0, inPerS: 0, outPerS: 0 };

  private frames = 0;
  private lastFrame = performance.now() / 1000;
  private readonly frameTimes: number[] = [];
  private perf = new PerfRecorder();
  private overlayAt = 0;

  constructor(root: HTMLElement) {
    const view = document.createElement("div");
    view.className = "stage";
    root.appendChild(view);
    this.scene = new WorldScene(view);
    this.controls = new Controls(this.scene.canvas);
    this.hud = new Hud(root);
    this.chat = new ChatPanel(
      root,
      (line) => this.sendLine(line),
      (typing) => {
        this.controls.release();
        this.controls.enabled = !typing && this.state === "playing";
      },
    );
    this.login = new LoginForm(root, (create, name, pw) => void this.submitLogin(create, name, pw));
    window.addEventListener("keydown", (e) => this.onKey(e));
    setInterval(() => this.ping(), 1000);
    setInterval(() => this.stopWhenStalled(), 250);
    installHook({
      state: () => this.state,
      world: () => this.config?.world_name ?? "",
      name: () => this.me?.name ?? null,
      position: () => (this.me ? this.predictor.position() : null),
      cell: () => this.cell,
      shard: () => this.shard,
      entities: () => this.entityViews(),
      chat: () => this.chat.last(50),
      frames: () => this.frames,
      error: () => this.login.lastError?.message ?? null,
      handoffs: () => this.handoffs,
      corrections: () => this.predictor.stats.corrections,
      pingMs: () => this.rttMs,
      bytesIn: () => this.session?.bytesIn ?? 0,
      bytesOut: () => this.session?.bytesOut ?? 0,
      perf: () => this.perf.view(),
    });
  }

  /** Loads the world and shows the form, or resumes the stored session. */
  async boot(): Promise<void> {
    this.setState("login");
    requestAnimationFrame(() => this.frame());
    if (storage()?.getItem(TOKEN_KEY)) {
      // A reload: resume (each attempt fetches /tessera.json itself).
      void this.reconnect("Resuming your session…");
      return;
    }
    this.login.show(storage()?.getItem(NAME_KEY) ?? undefined);
    try {
      await this.loadConfig();
    } catch (e) {
      if (this.state === "login") this.login.showError({ code: null, message: errText(e) });
    }
  }

  private async loadConfig(): Promise<TesseraConfig> {
    const c = await fetchConfig();
    if (c.protocol_version !== PROTOCOL_VERSION) {
      throw new ConfigError(
        `This page speaks protocol version ${PROTOCOL_VERSION} and the server ${c.protocol_version}: reload the page.`,
        true,
      );
    }
    this.config = c;
    this.scene.setWorld(c.world);
    this.login.setWorldName(c.world_name);
    document.title = `${c.world_name} · Tessera`;
    return c;
  }

  private setState(s: ClientState): void {
    this.state = s;
    document.body.dataset["state"] = s;
    this.controls.enabled = s === "playing" && !this.chat.typing;
    if (s !== "playing") {
      this.controls.release();
      this.controls.unlockPointer();
    }
  }

  // ------------------------------------------------------------ logging in

  private async submitLogin(create: boolean, name: string, password: string): Promise<void> {
    if (this.state !== "login") return;
    const gen = ++this.generation;
    this.setState("connecting");
    this.login.showError(null);
    this.login.setBusy(true, "Connecting…");
    try {
      if (!this.loginSession || this.loginSession.closed) {
        const config = await this.loadConfig();
        this.loginSession = await Session.open(config, CLIENT_NAME);
      }
      this.login.setBusy(true, create ? "Creating the character…" : "Logging in…");
      const s = this.loginSession;
      const me = await s.login(create, name, password);
      if (gen !== this.generation) {
        s.close();
        return;
      }
      this.loginSession = null;
      this.enterWorld(s, me, false);
    } catch (e) {
      if (gen !== this.generation) return;
      if (!(e instanceof SessionError && e.kind === "refused")) {
        this.loginSession?.close();
        this.loginSession = null;
      }
      this.setState("login");
      this.login.setBusy(false, "");
      this.login.showError(loginErrorOf(e));
    }
  }

  private enterWorld(session: Session, me: LoggedIn, resumed: boolean): void {
    const now = performance.now() / 1000;
    const sameAvatar = resumed && this.myId === me.entity.toString();
    if (!sameAvatar) {
      this.clearEntities();
      this.controls.yaw = 0;
      this.controls.pitch = 0.35;
      this.chat.clear();
      this.handoffs = 0;
      this.transitions = [];
    } else {
      // Keep drawing what we knew; what the router announces again is
      // taken over, the rest goes after STALE_SECONDS.
      for (const e of this.known.values()) e.staleSince = now;
      this.slots.clear();
    }
    this.session = session;
    this.me = me;
    this.myId = me.entity.toString();
    this.predictor = new Predictor(me.pos);
    this.interp = new Interpolator(me.tick_hz);
    this.ackInput = 0;
    this.selfUpdated = null;
    this.snapshots = 0;
    this.lastCorrection = 0;
    this.inputAcc = 0;
    this.cell = me.cell;
    this.shard = me.shard;
    this.endError = null;
    this.pingsSent.clear();
    this.perf = new PerfRecorder();
    this.link = { windowStart: now, in0: 0, out0: 0, inPerS: 0, outPerS: 0 };
    this.scene.setAvatar(this.myId, "own", me.name);
    this.scene.placeAvatar(this.myId, me.pos, this.controls.yaw);
    const st = storage();
    st?.setItem(TOKEN_KEY, me.token);
    st?.setItem(NAME_KEY, me.name);
    this.login.hide();
    this.login.showError(null);
    this.hud.hideBanner();
    this.setState("playing");
    if (resumed) {
      this.say("Reconnected.", "info");
    } else {
      this.say(
        `Welcome to ${session.worldName || this.config?.world_name || "Tessera"}, ${me.name}. ` +
          "WASD: walk, mouse: look (click the view to capture it, Esc frees it), Enter: chat, /: command, F3: debug.",
        "info",
      );
    }
    session.start({
      message: (m) => {
        if (this.session === session) this.onMessage(m);
      },
      datagram: (d, n) => {
        if (this.session === session) this.onDatagram(d, n);
      },
      closed: (c) => {
        if (this.session === session) this.onClosed(c);
      },
    });
  }

  /** Back to the form, the session over (its token forgotten). */
  private toLogin(error: LoginError | null): void {
    this.generation++;
    this.session?.close();
    this.session = null;
    this.me = null;
    this.myId = "";
    this.clearEntities();
    storage()?.removeItem(TOKEN_KEY);
    this.hud.hideBanner();
    this.setState("login");
    this.login.show(storage()?.getItem(NAME_KEY) ?? undefined);
    this.login.showError(error);
  }

  // ------------------------------------------------------- reconnecting

  private onClosed(c: CloseInfo): void {
    if (this.state !== "playing") return;
    const why = describeClose(c);
    this.session = null;
    const ended = c.code === CLOSE_NORMAL || c.code === CLOSE_PROTOCOL || c.code === CLOSE_VERSION;
    if (ended) {
      this.say(`Disconnected: ${why}`, "error");
      this.toLogin(this.endError ?? { code: null, message: `Disconnected: ${why}` });
      return;
    }
    this.say(c.restart ? "The server is restarting; reconnecting…" : `Connection lost (${why}); reconnecting…`, "error");
    void this.reconnect(c.restart ? "The server is restarting." : "Connection lost.");
  }

  /** Tries to resume the stored session until it works, the token is
   * refused, or RESUME_WITHIN_MS has passed. */
  private async reconnect(reason: string): Promise<void> {
    const token = storage()?.getItem(TOKEN_KEY);
    if (!token) {
      this.toLogin({ code: null, message: `${reason} Please log in again.` });
      return;
    }
    const gen = ++this.generation;
    this.setState("reconnecting");
    const backoff = new Backoff(Date.now());
    let last = "";
    for (;;) {
      const delay = backoff.nextDelay(Date.now());
      if (delay === null) {
        this.toLogin({ code: null, message: `Could not reconnect within a minute (${last}). Please log in again.` });
        return;
      }
      const attempt = backoff.attempts;
      this.hud.showBanner(`${reason} Reconnecting…${attempt > 1 ? ` (attempt ${attempt})` : ""}`, {
        label: "Log in again",
        run: () => this.toLogin(null),
      });
      await sleep(delay);
      if (gen !== this.generation) return;
      try {
        const { session, me } = await this.resumeOnce(token, gen);
        if (gen !== this.generation) {
          session.close();
          return;
        }
        this.enterWorld(session, me, true);
        return;
      } catch (e) {
        if (gen !== this.generation) return;
        last = errText(e);
        if (e instanceof SessionError && e.kind === "refused") {
          // The session ended or expired (or the protocol moved on):
          // retrying cannot help.
          if (e.code === "BadCredentials" || e.code === "VersionMismatch" || e.code === "Kicked") {
            this.toLogin(loginErrorOf(e));
            return;
          }
        }
        if (e instanceof SessionError && e.kind === "unsupported") {
          this.toLogin(loginErrorOf(e));
          return;
        }
        if (e instanceof ConfigError && e.stale) {
          this.toLogin({ code: "VersionMismatch", message: e.message });
          return;
        }
      }
    }
  }

  /** One attempt: fetch the config (the certificate may have changed),
   * connect, Hello, Resume; at most ATTEMPT_TIMEOUT_MS. A connection that
   * comes up after the deadline is closed. */
  private resumeOnce(token: string, gen: number): Promise<{ session: Session; me: LoggedIn }> {
    const work = (async () => {
      const config = await this.loadConfig();
      const session = await Session.open(config, CLIENT_NAME);
      try {
        return { session, me: await session.resume(token) };
      } catch (e) {
        session.close();
        throw e;
      }
    })();
    return new Promise((resolve, reject) => {
      let late = false;
      const timer = setTimeout(() => {
        late = true;
        reject(new SessionError("timeout", `no answer within ${ATTEMPT_TIMEOUT_MS / 1000} s`));
      }, ATTEMPT_TIMEOUT_MS);
      work.then(
        (r) => {
          if (late || gen !== this.generation) r.session.close();
          if (!late) {
            clearTimeout(timer);
            resolve(r);
          }
        },
        (e: unknown) => {
          if (!late) {
            clearTimeout(timer);
            reject(e);
          }
        },
      );
    });
  }

  // ------------------------------------------------------------ messages

  private onMessage(m: ServerMsg): void {
    const now = performance.now() / 1000;
    switch (m.type) {
      case "EntityAppeared": {
        const id = m.entity.toString();
        this.slots.set(m.slot, id);
        const old = this.known.get(id);
        const e: Known = {
          id,
          kind: m.kind,
          name: m.name,
          pos: m.pos,
          vel: ZERO,
          yaw: old?.yaw ?? 0,
          tick: 0,
          drawn: old?.drawn ?? m.pos,
          staleSince: null,
        };
        this.known.set(id, e);
        if (id !== this.myId) {
          const kind: AvatarKind = m.kind === "Npc" ? "npc" : "player";
          this.scene.setAvatar(id, kind, m.name);
          if (!old) this.scene.placeAvatar(id, m.pos, 0);
        }
        break;
      }
      case "EntityGone": {
        const id = m.entity.toString();
        this.known.delete(id);
        for (const [slot, e] of this.slots) if (e === id) this.slots.delete(slot);
        this.interp.remove(id);
        if (id !== this.myId) this.scene.removeAvatar(id);
        break;
      }
      case "Chat": {
        this.say(renderHeard(m.from, m.text, m.emote), m.emote ? "emote" : "say");
        if (m.entity !== null) {
          this.scene.showBubble(m.entity.toString(), m.emote ? `*${m.text}*` : m.text, now + BUBBLE_SECONDS);
        }
        break;
      }
      case "Text":
        if (m.text !== "") this.say(m.text, "text");
        break;
      case "Notice":
        this.say(m.text, "system");
        break;
      case "ChatLine":
        this.say(renderChat(m.kind, m.from, m.to, m.text, this.me?.name ?? ""), chatLineKind(m.kind));
        break;
      case "Error":
        this.say(m.message, "error");
        if (endsSession(m.code)) this.endError = { code: m.code, message: m.message };
        break;
      case "CellChanged":
        this.onCellChanged(m.cell, m.shard, now);
        break;
      case "Pong": {
        const sent = this.pingsSent.get(m.nonce);
        if (sent !== undefined) {
          this.rttMs = performance.now() - sent;
          this.pingsSent.delete(m.nonce);
        }
        break;
      }
      case "Welcome":
      case "LoggedIn":
      case "Relaying":
      case "Gmcp":
        break; // not for a 3D session
    }
  }

  private onCellChanged(cell: CellXZ, shard: string, now: number): void {
    const from = formatCell(this.cell);
    let text: string;
    if (this.cell && cell.x === this.cell.x && cell.z === this.cell.z) {
      text = `migration: cell ${formatCell(cell)} moved from ${this.shard ?? "?"} to ${shard}`;
    } else if (shard === this.shard) {
      text = `hand-off: cell ${from} -> ${formatCell(cell)} (on ${shard})`;
    } else {
      text = `hand-off: cell ${from} on ${this.shard ?? "?"} -> cell ${formatCell(cell)} on ${shard}`;
    }
    this.handoffs += 1;
    this.transitions.push({ at: now, text });
    if (this.transitions.length > 6) this.transitions.shift();
    this.cell = { x: cell.x, z: cell.z };
    this.shard = shard;
  }

  /** A snapshot datagram: the own entity reconciles the prediction, the
   * others feed the interpolation (client/src/lib.rs, `start_reader`). */
  private onDatagram(d: ServerDatagram, _size: number): void {
    if (d.type !== "Snapshot") return;
    let updates;
    try {
      updates = decodeSnapshotEntities(d.entities, d.origin);
    } catch {
      return; // a bad snapshot is dropped whole
    }
    const now = performance.now() / 1000;
    const tick = Number(d.tick);
    this.snapshots += 1;
    if (d.ack_input !== 0 && (this.ackInput === 0 || seqNewer(d.ack_input, this.ackInput))) {
      this.ackInput = d.ack_input;
      this.perf.snapshotAck(d.ack_input, now * 1000);
    }
    for (const u of updates) {
      const id = this.slots.get(u.slot);
      if (id === undefined) continue; // its EntityAppeared is still on the way
      const e = this.known.get(id);
      if (!e || tick < e.tick) continue;
      e.pos = posFromCm(u.pos);
      e.vel = velFromCm(u.vel);
      e.yaw = yawToRadians(u.yaw);
      e.tick = tick;
      if (id === this.myId) {
        this.selfUpdated = now;
        this.lastCorrection = this.predictor.reconcile(e.pos, this.ackInput).error;
      } else {
        this.interp.push(id, tick, now, e.pos, e.vel, e.yaw);
      }
    }
  }

  // ---------------------------------------------------------- chat, keys

  private say(text: string, kind: LineKind): void {
    this.chat.add(text, kind);
  }

  private sendLine(line: string): void {
    const msg = lineToMessage(line);
    if (!msg) return;
    if (!this.session || this.state !== "playing") {
      this.say("Not connected: wait for the reconnect, then say it again.", "error");
      return;
    }
    if (msg.type === "Say") {
      // The speaker does not hear their own speech (docs/protocol.md).
      this.say(`You say, "${msg.text}"`, "own");
      this.scene.showBubble(this.myId, msg.text, performance.now() / 1000 + BUBBLE_SECONDS);
    } else if (msg.type === "Command") {
      this.say(`> ${msg.line}`, "info");
    }
    this.session.send(msg);
  }

  private onKey(e: KeyboardEvent): void {
    if (this.state !== "playing" || this.chat.typing) return;
    if (e.target instanceof HTMLInputElement) return;
    if (e.key === "F3") {
      e.preventDefault();
      this.debug = !this.debug;
    } else if (e.key === "Enter") {
      e.preventDefault();
      this.chat.focus();
    } else if (e.key === "/") {
      e.preventDefault();
      this.chat.focus("/");
    } else if (e.key === "PageUp" || e.key === "PageDown") {
      e.preventDefault();
      this.chat.page(e.key === "PageUp" ? -1 : 1);
    }
  }

  /** Frames stop in a hidden tab, and with them the inputs; the shard
   * would keep applying the last one (walking on for ever). So while no
   * frame has run for a while, "stand still" goes out instead. */
  private stopWhenStalled(): void {
    const session = this.session;
    if (this.state !== "playing" || !session || session.closed) return;
    if (performance.now() / 1000 - this.lastFrame < 0.25) return;
    this.controls.release();
    this.pushInput(session.sendInput(0, 0, this.controls.yaw, false));
  }

  /** An input just sent: predicted, and timed until its ack. */
  private pushInput(input: Input): void {
    this.predictor.pushInput(input);
    this.perf.inputSent(input.seq, performance.now());
  }

  private ping(): void {
    if (this.state !== "playing" || !this.session) return;
    this.pingNonce += 1n;
    this.pingsSent.set(this.pingNonce, performance.now());
    // Forget pings that never came back.
    for (const n of this.pingsSent.keys()) if (n < this.pingNonce - 10n) this.pingsSent.delete(n);
    this.session.send({ type: "Ping", nonce: this.pingNonce });
  }

  // ------------------------------------------------------------- frames

  private frame(): void {
    requestAnimationFrame(() => this.frame());
    const now = performance.now() / 1000;
    if (this.state === "playing") this.perf.frame((now - this.lastFrame) * 1000);
    const dt = Math.min(Math.max(now - this.lastFrame, 0), 0.25);
    this.lastFrame = now;
    this.frames += 1;
    this.frameTimes.push(dt);
    if (this.frameTimes.length > 120) this.frameTimes.shift();
    if (this.me && (this.state === "playing" || this.state === "reconnecting")) {
      this.playFrame(now, dt);
    } else if (this.config) {
      this.scene.orbit(this.config.world.spawn, now);
    }
    this.scene.render();
  }

  private playFrame(now: number, dt: number): void {
    const me = this.me!;
    const intent = this.controls.update(dt);
    // Movement: one input per tick, at most one per frame.
    this.predictor.advance(dt);
    const session = this.session;
    if (this.state === "playing" && session && !session.closed) {
      const tickDt = 1 / Math.max(1, me.tick_hz);
      this.inputAcc += dt;
      if (this.inputAcc >= tickDt) {
        this.inputAcc = Math.min(this.inputAcc - tickDt, tickDt);
        this.pushInput(session.sendInput(intent.moveX, intent.moveZ, this.controls.yaw, intent.jump));
      }
    }
    this.interp.beginFrame(now);
    for (const e of this.known.values()) {
      if (e.id === this.myId) continue;
      if (e.staleSince !== null && now - e.staleSince > STALE_SECONDS) {
        this.known.delete(e.id);
        this.scene.removeAvatar(e.id);
        continue;
      }
      const pose = this.interp.pose(e.id);
      e.drawn = pose ? pose.pos : e.pos;
      this.scene.placeAvatar(e.id, e.drawn, pose ? pose.yaw : e.yaw);
    }
    const pos = this.predictor.position();
    this.scene.placeAvatar(this.myId, pos, this.controls.yaw);
    this.scene.follow(pos, this.controls.yaw, this.controls.pitch);
    this.scene.updateLabels(pos, now);
    this.scene.setDebug(this.debug, this.cell, this.predictor.serverPos());
    this.updateLink(now);
    this.updateHud(now, pos);
  }

  private updateLink(now: number): void {
    const s = this.session;
    const l = this.link;
    const elapsed = now - l.windowStart;
    if (elapsed < 1 || !s) return;
    l.inPerS = Math.max(0, s.bytesIn - l.in0) / elapsed;
    l.outPerS = Math.max(0, s.bytesOut - l.out0) / elapsed;
    l.in0 = s.bytesIn;
    l.out0 = s.bytesOut;
    l.windowStart = now;
  }

  private updateHud(now: number, pos: V3): void {
    const world = this.config?.world;
    if (world) this.hud.setZone(zoneAt(world, pos).name);
    const age = this.selfUpdated === null ? null : now - this.selfUpdated;
    if (this.state === "reconnecting") {
      this.hud.setLink("down", "RECONNECTING");
    } else if (age === null || age > LINK_BAD_SECONDS) {
      this.hud.setLink("bad", `LINK BAD: no update for ${(age ?? 0).toFixed(1)} s`);
    } else if (this.rttMs !== null && this.rttMs > LINK_SLOW_MS) {
      this.hud.setLink("poor", `LINK SLOW: ping ${Math.round(this.rttMs)} ms`);
    } else {
      this.hud.setLink("good", "");
    }
    const fresh = this.transitions[this.transitions.length - 1];
    this.hud.setNotice(
      !this.debug && fresh && now - fresh.at < TRANSITION_BANNER_SECONDS ? fresh.text : null,
    );
    if (!this.debug) {
      this.hud.setOverlay(null);
      return;
    }
    if (now - this.overlayAt < 0.1) return; // ten times a second is plenty
    this.overlayAt = now;
    const avg = this.frameTimes.reduce((a, b) => a + b, 0) / Math.max(1, this.frameTimes.length);
    const st = this.predictor.stats;
    const computed = world ? formatCell(cellOf(world.cell_size, pos)) : "?";
    const deg = Math.round((this.controls.yaw * 180) / Math.PI) % 360;
    const lines = [
      `pos ${pos.x.toFixed(2)} ${pos.y.toFixed(2)} ${pos.z.toFixed(2)}  yaw ${deg} deg`,
      `cell ${formatCell(this.cell)} (computed ${computed})  shard ${this.shard ?? "-"}`,
      `ping ${this.rttMs === null ? "-" : this.rttMs.toFixed(0)} ms  in ${(this.link.inPerS / 1000).toFixed(1)} kB/s  out ${(this.link.outPerS / 1000).toFixed(1)} kB/s (payload)`,
      `entities ${this.known.size}  interpolated ${this.interp.size}  delay ${(this.interp.clock.delay() * 1000).toFixed(0)} ms  snapshots ${this.snapshots}`,
      `prediction: ${this.predictor.pending()} pending, ack ${this.predictor.ack()}, last error ${this.lastCorrection.toFixed(3)} m, ` +
        `smoothing ${this.predictor.offset().toFixed(3)} m, max ${st.maxError.toFixed(2)} m`,
      `corrections ${st.corrections} of ${st.reconciliations}, snaps ${st.snaps}`,
      `frame ${(avg * 1000).toFixed(1)} ms (${(1 / Math.max(avg, 1e-4)).toFixed(0)} fps)  tick ${this.me?.tick_hz ?? "-"} Hz`,
      `hand-offs ${this.handoffs}`,
      ...this.transitions
        .slice()
        .reverse()
        .map((t) => `  ${(now - t.at).toFixed(1)} s ago  ${t.text}`),
    ];
    this.hud.setOverlay(lines);
  }

  private clearEntities(): void {
    this.known.clear();
    this.slots.clear();
    this.scene.clearAvatars();
  }

  private entityViews(): EntityView[] {
    const out: EntityView[] = [];
    for (const e of this.known.values()) {
      if (e.id === this.myId) continue;
      const on_screen = onScreen(this.scene.camera, e.drawn);
      out.push({ id: e.id, name: e.name, kind: e.kind, pos: e.drawn, on_screen });
    }
    return out;
  }
}

/** Errors after which the router ends the session (its close follows). */
function endsSession(code: ErrorCode): boolean {
  return code === "Kicked" || code === "Lagged" || code === "AlreadyLoggedIn" || code === "Malformed";
}

function loginErrorOf(e: unknown): LoginError {
  if (e instanceof SessionError) return { code: e.code, message: e.message };
  return { code: null, message: errText(e) };
}
