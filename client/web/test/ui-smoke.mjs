// A smoke test of the browser client's UI without a Tessera server.
//
//   node test/ui-smoke.mjs [--chromium PATH] [--keep-going]
//
// It builds dist/ (node build.mjs), serves it on 127.0.0.1 with a
// /tessera.json made from worlds/default/world.toml, and drives Chromium
// (playwright-core; Debian's `chromium` package, headless, SwiftShader GL):
//
// 1. the page loads, the login form shows over the world, which draws
//    (screenshot /tmp/web-login.png);
// 2. with the real WebTransport against a port where nothing listens, a
//    login attempt fails with a clear message and the form comes back;
// 3. with a fake router in the page (a WebTransport stand-in that speaks the
//    protocol through the codec in src/proto): a wrong password shows
//    BadCredentials; then logging in shows the world with an NPC and a
//    walking player, W walks north with prediction, speech and a command go
//    out and come back, F3 shows the overlay, a hand-off is counted
//    (screenshot /tmp/web-world.png); a router restart (close code 4)
//    reconnects with Resume by itself; a page reload resumes from
//    sessionStorage; a refused Resume falls back to the login form;
// 4. no console errors or page errors along the way.
//
// Before the browser, it runs the unit tests of client/src/predict.rs and
// client/src/interp.rs against their TypeScript ports (src/predict.ts,
// src/interp.ts) under Node, with the same numbers.
//
// The checks read `window.tessera` (src/hook.ts), not pixels or wording.
// Exits 0 when every check passed; prints one line per check.

import { build } from "esbuild";
import { spawnSync } from "node:child_process";
import { readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { dirname, extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const web = join(here, "..");
const repo = join(web, "..", "..");
const dist = join(web, "dist");
const args = process.argv.slice(2);
const chromiumPath = args.includes("--chromium") ? args[args.indexOf("--chromium") + 1] : "/usr/bin/chromium";

// ----------------------------------------------------------------- world

/** A TOML reader for what world files use: tables, arrays of tables, and
 * keys with strings, numbers, booleans and one-line arrays. */
function parseToml(text) {
  const root = {};
  let table = root;
  const value = (src) => {
    src = src.trim();
    if (src.startsWith('"')) return JSON.parse(src);
    if (src === "true" || src === "false") return src === "true";
    if (src.startsWith("[")) {
      const inner = src.slice(1, src.lastIndexOf("]")).trim();
      return inner === "" ? [] : splitTop(inner).map(value);
    }
    const n = Number(src.replace(/_/g, ""));
    if (Number.isNaN(n)) throw new Error(`world.toml: cannot read the value ${src}`);
    return n;
  };
  for (const raw of text.split("\n")) {
    const line = stripComment(raw).trim();
    if (line === "") continue;
    let m;
    if ((m = /^\[\[([\w.]+)\]\]$/.exec(line))) {
      (root[m[1]] ??= []).push((table = {}));
    } else if ((m = /^\[([\w.]+)\]$/.exec(line))) {
      table = root[m[1]] ??= {};
    } else if ((m = /^([\w]+)\s*=\s*(.+)$/.exec(line))) {
      table[m[1]] = value(m[2]);
    } else {
      throw new Error(`world.toml: cannot read the line ${raw}`);
    }
  }
  return root;
}

function stripComment(line) {
  let inString = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (c === "\\" && inString) i++;
    else if (c === '"') inString = !inString;
    else if (c === "#" && !inString) return line.slice(0, i);
  }
  return line;
}

function splitTop(s) {
  const parts = [];
  let depth = 0;
  let start = 0;
  let inString = false;
  for (let i = 0; i < s.length; i++) {
    const c = s[i];
    if (c === '"') inString = !inString;
    else if (!inString && c === "[") depth++;
    else if (!inString && c === "]") depth--;
    else if (!inString && c === "," && depth === 0) {
      parts.push(s.slice(start, i));
      start = i + 1;
    }
  }
  if (s.slice(start).trim() !== "") parts.push(s.slice(start));
  return parts;
}

const v3 = (a) => ({ x: a[0], y: a[1], z: a[2] });
const deg = (r) => (r * 180) / Math.PI;

/** proto/src/world.rs's parse_world, as far as drawing needs it, rendered
 * as serde_json renders WorldDef (infinite wilds bounds become null). */
function worldDef(t) {
  const statics = [];
  for (const b of t.box ?? []) {
    statics.push({
      Box: { name: b.name ?? null, center: v3(b.center), half_extents: v3(b.size.map((s) => s / 2)), yaw_deg: b.yaw ?? 0 },
    });
  }
  for (const r of t.ramp ?? []) {
    if (r.from) {
      // StaticShape::ramp_between
      const [f, to] = [r.from, r.to];
      const d = [to[0] - f[0], to[1] - f[1], to[2] - f[2]];
      const run = Math.hypot(d[0], d[2]);
      const len = Math.hypot(...d);
      const yaw = Math.atan2(-d[0], -d[2]);
      const pitch = Math.atan2(d[1], run);
      const thickness = r.thickness ?? 0.5;
      const up = [Math.sin(yaw) * Math.sin(pitch), Math.cos(pitch), Math.cos(yaw) * Math.sin(pitch)];
      const center = [0, 1, 2].map((k) => (f[k] + to[k]) / 2 - (up[k] * thickness) / 2);
      statics.push({
        Ramp: {
          name: r.name ?? null,
          center: v3(center),
          half_extents: { x: r.width / 2, y: thickness / 2, z: len / 2 },
          yaw_deg: deg(yaw),
          pitch_deg: deg(pitch),
        },
      });
    } else {
      statics.push({
        Ramp: {
          name: r.name ?? null,
          center: v3(r.center),
          half_extents: v3(r.size.map((s) => s / 2)),
          yaw_deg: r.yaw ?? 0,
          pitch_deg: r.pitch ?? 0,
        },
      });
    }
  }
  const zone = (z) => ({ name: z.name, description: z.description, min_x: z.min[0], min_z: z.min[1], max_x: z.max[0], max_z: z.max[1] });
  return {
    name: t.name,
    cell_size: t.cell_size,
    extent: { min: { x: t.extent.min[0], z: t.extent.min[1] }, max: { x: t.extent.max[0], z: t.extent.max[1] } },
    spawn: v3(t.spawn),
    zones: (t.zone ?? []).map(zone),
    wilds: { name: t.wilds?.name ?? "The Wilds", description: t.wilds?.description ?? "", min_x: null, min_z: null, max_x: null, max_z: null },
    landmarks: (t.landmark ?? []).map((l) => ({ name: l.name, description: l.description, pos: v3(l.pos) })),
    statics,
    npcs: (t.npc ?? []).map((n) => ({
      name: n.name,
      description: n.description ?? "",
      pos: v3(n.pos),
      script: n.script,
      count: n.count ?? 1,
      scatter: n.scatter ?? 0,
    })),
    scripts: {},
  };
}

// ------------------------------------------------------------ the fake router

/** Runs in the page: replaces WebTransport with an in-page router that
 * speaks the protocol through the real codec. `window.__fakeRouter` lets
 * the test restart it or make it refuse sessions. */
const FAKE_ROUTER = String.raw`
import {
  PROTOCOL_VERSION, decodeClientMsg, frameServerMsg, decodeClientDatagram,
  encodeServerDatagram, encodeSnapshotEntities,
} from "./proto/index";

const SPAWN = { x: -5, y: 0, z: 5 };
const CELL = 64;
const ME = 7n, BOB = 8n, MIRA = (1n << 63n) | 1n;
// Accounts, sessions and saved positions survive a page reload (as a
// real router's do), in sessionStorage.
const kept = JSON.parse(sessionStorage.getItem("__fakeRouter") ?? "null");
const router = {
  accounts: new Map(kept?.accounts ?? [["ann", "secret"]]),
  tokens: new Map(kept?.tokens ?? []),
  saved: new Map(kept?.saved ?? []),
  save() {
    sessionStorage.setItem("__fakeRouter", JSON.stringify({
      accounts: [...router.accounts], tokens: [...router.tokens], saved: [...router.saved],
    }));
  },
  down: false,
  refuseResume: false,
  conns: new Set(),
  received: [],
  restart(downMs = 600) {
    router.down = true;
    for (const c of [...router.conns]) c.shutdown(4, "server restarting", true);
    setTimeout(() => { router.down = false; }, downMs);
  },
  /** The connection dies without a close (a network drop). */
  drop() {
    for (const c of [...router.conns]) c.shutdown(null, "network down", false);
  },
};
globalThis.__fakeRouter = router;

const cellOf = (p) => ({ x: Math.floor(p.x / CELL), z: Math.floor(p.z / CELL) });
const shardOf = (c) => (c.x < -1 ? "shard-west" : "shard-1");
const cm = (p) => [Math.round(p.x * 100), Math.round(p.y * 100), Math.round(p.z * 100)];
const yaw16 = (r) => Math.round(((((r % (2 * Math.PI)) + 2 * Math.PI) % (2 * Math.PI)) / (2 * Math.PI)) * 65536) & 0xffff;

class FakeWebTransport {
  constructor(url, options) {
    this.url = url;
    this.done = false;
    router.received.push({ type: "connect", url, hashes: options?.serverCertificateHashes?.length ?? 0 });
    this.closed = new Promise((res, rej) => { this.closedOk = res; this.closedErr = rej; });
    this.closed.catch(() => {});
    const self = this;
    this.datagrams = {
      maxDatagramSize: 1200,
      readable: new ReadableStream({ start(c) { self.dgramOut = c; } }),
      writable: new WritableStream({ write(chunk) { self.onDatagram(chunk); } }),
    };
    this.ready = new Promise((res, rej) => setTimeout(() => {
      if (router.down) {
        const e = new Error("Opening handshake failed.");
        rej(e);
        this.done = true;
        this.closedErr(e);
      } else {
        router.conns.add(this);
        res();
      }
    }, 15));
    this.ready.catch(() => {});
  }
  async createBidirectionalStream() {
    const self = this;
    let buf = new Uint8Array(0);
    return {
      readable: new ReadableStream({ start(c) { self.ctrlOut = c; } }),
      writable: new WritableStream({
        write(chunk) {
          const joined = new Uint8Array(buf.length + chunk.length);
          joined.set(buf); joined.set(chunk, buf.length);
          buf = joined;
          while (buf.length >= 4) {
            const len = new DataView(buf.buffer, buf.byteOffset).getUint32(0, false);
            if (buf.length < 4 + len) break;
            const msg = decodeClientMsg(buf.subarray(4, 4 + len));
            buf = buf.slice(4 + len);
            self.onMsg(msg);
          }
        },
      }),
    };
  }
  close(info) { this.shutdown(info?.closeCode ?? 0, info?.reason ?? "", false); }
  shutdown(code, reason, finishStream) {
    if (this.done) return;
    this.done = true;
    router.conns.delete(this);
    clearInterval(this.tickTimer);
    clearInterval(this.snapTimer);
    if (this.player) router.saved.set(this.player.name.toLowerCase(), { ...this.player.pos });
    router.save();
    if (code === null) {
      const e = new Error("Connection lost.");
      try { this.ctrlOut?.error(e); } catch {}
      try { this.dgramOut?.error(e); } catch {}
      this.closedErr(e);
      return;
    }
    try { if (finishStream) this.ctrlOut?.close(); } catch {}
    try { this.dgramOut?.close(); } catch {}
    setTimeout(() => this.closedOk({ closeCode: code, reason }), 5);
  }
  send(msg) { if (!this.done) this.ctrlOut.enqueue(frameServerMsg(msg)); }
  onMsg(msg) {
    router.received.push(msg.type === "Create" || msg.type === "Connect" ? { type: msg.type, name: msg.name } : msg);
    switch (msg.type) {
      case "Hello":
        return this.send({ type: "Welcome", version: PROTOCOL_VERSION, server: "fake 0", world: "Tessera Vale" });
      case "Create":
        if (router.accounts.has(msg.name.toLowerCase()))
          return this.send({ type: "Error", code: "NameTaken", message: "That name is taken." });
        router.accounts.set(msg.name.toLowerCase(), msg.password);
        return this.enter(msg.name);
      case "Connect":
        if (router.accounts.get(msg.name.toLowerCase()) !== msg.password)
          return this.send({ type: "Error", code: "BadCredentials", message: "Wrong name or password." });
        return this.enter(msg.name);
      case "Resume": {
        const name = router.tokens.get(msg.token);
        if (!name || router.refuseResume)
          return this.send({ type: "Error", code: "BadCredentials", message: "That session has ended; please log in again." });
        return this.enter(name);
      }
      case "Ping":
        return this.send({ type: "Pong", nonce: msg.nonce });
      case "Say":
        setTimeout(() => {
          this.send({ type: "Chat", from: "Mira", entity: MIRA, text: "Good day to you!", emote: false });
          this.send({ type: "ChatLine", kind: { type: "Shout" }, from: "Bob", to: null, text: "Who said " + msg.text + "?", at_unix_ms: 0n });
        }, 150);
        return;
      case "Command":
        if (msg.line === "who") return this.send({ type: "Text", text: "Players online:\n  " + this.player.name + "\n  Bob" });
        if (msg.line === "quit") {
          this.send({ type: "Text", text: "Goodbye." });
          for (const [t, n] of router.tokens) if (n === this.player.name) router.tokens.delete(t);
          return this.shutdown(0, "bye", true);
        }
        return this.send({ type: "Text", text: "Unknown command '" + msg.line + "'. Type help." });
      case "Logout":
        return this.shutdown(0, "bye", true);
    }
  }
  enter(name) {
    const pos = router.saved.get(name.toLowerCase()) ?? { ...SPAWN };
    const token = "token-" + name.toLowerCase();
    router.tokens.set(token, name);
    router.save();
    const cell = cellOf(pos);
    this.player = { name, pos, input: null, applied: 0, cell };
    this.tick = 1000n;
    this.t0 = performance.now();
    this.send({ type: "LoggedIn", player: ME, entity: ME, name, token, pos, cell, shard: shardOf(cell), tick_hz: 30 });
    this.send({ type: "EntityAppeared", entity: ME, slot: 0, kind: "Player", name, pos });
    this.send({ type: "EntityAppeared", entity: MIRA, slot: 1, kind: "Npc", name: "Mira", pos: { x: -9, y: 0, z: -3 } });
    this.send({ type: "EntityAppeared", entity: BOB, slot: 2, kind: "Player", name: "Bob", pos: this.bob() });
    this.tickTimer = setInterval(() => this.step(), 1000 / 30);
    this.snapTimer = setInterval(() => this.snapshot(), 50);
  }
  bob() {
    const a = (performance.now() - (this.t0 ?? 0)) / 1000 * 0.8;
    return { x: -2 + 4 * Math.cos(a), y: 0, z: -4 + 4 * Math.sin(a) };
  }
  onDatagram(bytes) {
    if (!this.player) return;
    const d = decodeClientDatagram(bytes);
    const i = d.input;
    const cur = this.player.input;
    if (!cur || ((i.seq - cur.seq) >>> 0) < 0x7fffffff) this.player.input = i;
  }
  step() {
    const p = this.player;
    this.tick += 1n;
    if (!p.input) return;
    let { move_x: x, move_z: z } = p.input;
    const len = Math.hypot(x, z);
    if (len > 1) { x /= len; z /= len; }
    p.pos = { x: p.pos.x + x * 6 / 30, y: 0, z: p.pos.z + z * 6 / 30 };
    p.vel = { x: x * 6, y: 0, z: z * 6 };
    p.applied = p.input.seq;
    const c = cellOf(p.pos);
    if (c.x !== p.cell.x || c.z !== p.cell.z) {
      p.cell = c;
      this.send({ type: "CellChanged", cell: c, shard: shardOf(c) });
    }
  }
  snapshot() {
    if (this.done) return;
    const p = this.player;
    const a = (performance.now() - this.t0) / 1000 * 0.8;
    const v = p.vel ?? { x: 0, y: 0, z: 0 };
    const updates = [
      { slot: 0, pos: cm(p.pos), vel: [Math.round(v.x * 100), 0, Math.round(v.z * 100)], yaw: yaw16(p.input?.yaw ?? 0) },
      { slot: 1, pos: cm({ x: -9, y: 0, z: -3 }), vel: [0, 0, 0], yaw: 16384 },
      { slot: 2, pos: cm(this.bob()), vel: [Math.round(-320 * Math.sin(a)), 0, Math.round(320 * Math.cos(a))], yaw: yaw16(Math.atan2(-Math.sin(a), -Math.cos(a))) },
    ];
    const origin = cm(p.pos);
    const bytes = encodeServerDatagram({
      type: "Snapshot", tick: this.tick, ack_input: p.applied, origin,
      entities: encodeSnapshotEntities(updates, origin),
    });
    try { this.dgramOut.enqueue(bytes); } catch {}
  }
}
globalThis.WebTransport = FakeWebTransport;
`;

// ------------------------------------------------- prediction, interpolation

/** The Rust unit tests of predict.rs and interp.rs that need no simulated
 * link, on the ports; returns [name, ok, detail] triples. */
const PORT_CHECKS = String.raw`
import { Predictor, seqNewer, PLAYER_SPEED, MAX_PENDING } from "./predict";
import { Interpolator, lerpAngle } from "./interp";

const input = (seq, x, z) => ({ seq, move_x: x, move_z: z, yaw: 0, jump: false });
const V = (x, y, z) => ({ x, y, z });
const near = (a, b, eps) => Math.abs(a - b) < eps;
const dist = (a) => Math.hypot(a.x, a.y, a.z);
export function run() {
  const out = [];
  const check = (name, ok, detail = "") => out.push([name, !!ok, detail]);
  check("seq_newer wraps", seqNewer(2, 1) && !seqNewer(1, 2) && !seqNewer(5, 5) && seqNewer(0, 0xffffffff) && seqNewer(3, 0xffffffff - 3));
  {
    const p = new Predictor(V(0, 0, 0));
    for (let seq = 1; seq <= 3; seq++) { p.pushInput(input(seq, 1, 0)); p.advance(0.1); }
    const ok1 = near(p.predicted().x, 1.8, 1e-4);
    const c = p.reconcile(V(0.6, 0, 0), 1);
    const ok2 = c.error < 1e-4 && p.pending() === 2;
    p.reconcile(V(0.6, 0, 0), 0);
    check("unacknowledged inputs replay on the server position", ok1 && ok2 && p.pending() === 2);
  }
  {
    const p = new Predictor(V(0, 0, 0));
    p.pushInput(input(1, 3, 4)); p.advance(1);
    const ok1 = near(dist(p.predicted()), PLAYER_SPEED, 1e-3);
    p.pushInput(input(2, NaN, 1)); p.advance(1);
    check("the direction is clamped as the shard does", ok1 && near(dist(p.predicted()), PLAYER_SPEED, 1e-3));
  }
  {
    const p = new Predictor(V(0, 0, 0));
    p.pushInput(input(1, 1, 0)); p.advance(0.5);
    p.pushInput(input(2, 0, 0));
    const c = p.reconcile(V(2.5, 0, 0), 2);
    const ok1 = near(c.error, 0.5, 1e-3) && !c.snapped && near(p.position().x, 3, 1e-3);
    p.advance(0.1);
    const left = p.position().x - 2.5;
    const ok2 = left > 0 && left < 0.5 * 0.4;
    for (let i = 0; i < 60; i++) p.advance(0.016);
    const ok3 = near(p.position().x, 2.5, 1e-3);
    const c2 = p.reconcile(V(50, 0, 0), 2);
    check("a wall is smoothed out, a teleport snaps", ok1 && ok2 && ok3 && c2.snapped && p.position().x === 50, JSON.stringify([ok1, ok2, ok3]));
  }
  {
    const p = new Predictor(V(0, 0, 0));
    for (let seq = 1; seq <= 1000; seq++) { p.pushInput(input(seq, 0, -1)); p.advance(1 / 30); }
    check("pending inputs are bounded without acks", p.pending() === MAX_PENDING && near(p.predicted().z, -200, 0.05), p.predicted().z.toFixed(3));
  }
  {
    const pi = Math.PI;
    const a = lerpAngle(pi - 0.1, -pi + 0.1, 0.5);
    check("angles take the short way", Math.abs(lerpAngle(0.1, -0.1, 0.5)) < 1e-6 && near(Math.abs(a), pi, 1e-5) && near(lerpAngle(0, pi / 2, 0.5), pi / 4, 1e-6));
  }
  {
    const interp = new Interpolator(30);
    const lat = 0.05;
    interp.push("7", 0, lat, V(0, 0, 0), V(0, 0, 0), 0);
    let bad = "";
    for (let f = 0; f < 240; f++) {
      const now = f / 60;
      const tick = Math.floor((now - lat) * 30);
      if (tick > 60 && tick % 2 === 1) interp.push("7", tick, now, V((tick - 60) * 6 / 30, 0, 0), V(6, 0, 0), 0);
      const rt = interp.beginFrame(now);
      const pose = rt === null ? null : interp.pose("7");
      if (!pose) continue;
      const x = pose.pos.x;
      if (rt < 1.99 && x >= 1e-3) bad = "moved at " + rt + ": " + x;
      if (rt > 2.2 && rt < 3.0 && Math.abs(x - (rt - 2) * 6) >= 0.35) bad = "at " + rt + ": " + x;
    }
    check("an entity at rest starts moving on time", bad === "", bad);
  }
  {
    const interp = new Interpolator(30);
    interp.push("7", 100, 1.0, V(0, 0, 0), V(0, 0, 0), 0);
    interp.push("7", 102, 1.07, V(50, 0, 0), V(0, 0, 0), 0);
    interp.beginFrame(2.0);
    const x1 = interp.pose("7")?.pos.x;
    interp.push("7", 3, 2.1, V(1, 0, 0), V(0, 0, 0), 0);
    interp.beginFrame(2.2);
    check("teleports and server restarts do not slide", x1 === 50 && interp.pose("7")?.pos.x === 1);
  }
  return out;
}
`;

async function portChecks() {
  const code = (
    await build({
      stdin: { contents: PORT_CHECKS, resolveDir: join(web, "src"), loader: "js" },
      bundle: true,
      format: "esm",
      platform: "node",
      write: false,
      logLevel: "warning",
    })
  ).outputFiles[0].text;
  const mod = await import(`data:text/javascript;base64,${Buffer.from(code).toString("base64")}`);
  for (const [name, ok, detail] of mod.run()) check(ok, `port: ${name}`, ok ? "" : detail);
}

// ------------------------------------------------------------------ serving

function serve(files) {
  const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".map": "application/json", ".json": "application/json" };
  const server = createServer(async (req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    if (files[path]) {
      res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
      res.end(files[path]);
      return;
    }
    const file = normalize(join(dist, path === "/" ? "index.html" : path));
    if (!file.startsWith(dist)) {
      res.writeHead(403).end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
      res.end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server)));
}

// -------------------------------------------------------------------- checks

let failed = 0;
function check(ok, what, detail = "") {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${detail ? `: ${detail}` : ""}`);
  if (!ok) failed++;
  return ok;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(page, fn, arg, timeout = 10_000) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 50 });
    return true;
  } catch {
    return false;
  }
}

const hook = (page) => page.evaluate(() => JSON.parse(JSON.stringify(window.tessera)));

async function main() {
  await portChecks();
  const built = spawnSync(process.execPath, [join(web, "build.mjs")], { encoding: "utf8" });
  if (built.status !== 0) {
    console.error(built.stdout, built.stderr);
    throw new Error("node build.mjs failed");
  }
  const version = Number(/PROTOCOL_VERSION = (\d+)/.exec(await readFile(join(web, "src/proto/session.ts"), "utf8"))?.[1]);
  const world = worldDef(parseToml(await readFile(join(repo, "worlds/default/world.toml"), "utf8")));
  const config = {
    protocol_version: version,
    world_name: world.name,
    // Nothing listens here: the real WebTransport must fail cleanly.
    webtransport: { url: "https://127.0.0.1:9/tessera", certificate_hashes: [Buffer.alloc(32, 7).toString("base64")] },
    world,
  };
  const server = await serve({ "/tessera.json": JSON.stringify(config) });
  const base = `http://127.0.0.1:${server.address().port}/`;
  const fake = (
    await build({
      stdin: { contents: FAKE_ROUTER, resolveDir: join(web, "src"), loader: "js" },
      bundle: true,
      format: "iife",
      write: false,
      target: "es2022",
      logLevel: "warning",
    })
  ).outputFiles[0].text;

  const browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--ignore-gpu-blocklist"],
  });
  const problems = [];
  const watch = (page, allow = () => false) => {
    page.on("console", (m) => {
      if (m.type() === "error" && !allow(m.text())) problems.push(`console: ${m.text()}`);
    });
    page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  };
  try {
    // 1 and 2: the real page, the real WebTransport, no server.
    {
      const ctx = await browser.newContext({ viewport: { width: 1024, height: 640 } });
      const page = await ctx.newPage();
      // Chromium reports the refused connection on the console itself.
      watch(page, (t) => /WebTransport|ERR_|handshake/i.test(t));
      await page.goto(base);
      check(await waitFor(page, () => window.tessera?.state === "login" && window.tessera.frames > 10), "the login form shows and the world draws behind it");
      const h = await hook(page);
      check(h.world === "Tessera Vale", "the world's name comes from /tessera.json", h.world);
      check(await page.isVisible("#login-name"), "the name field is visible");
      check((await page.textContent(".login h1")) === "Tessera Vale", "the form shows the world's name");
      await sleep(500);
      await page.screenshot({ path: "/tmp/web-login.png" });
      check(true, "screenshot /tmp/web-login.png");
      await page.fill("#login-name", "Ann");
      await page.fill("#login-password", "secret");
      await page.click("#login-submit");
      const back = await waitFor(page, () => window.tessera.state === "login" && window.tessera.error !== null, undefined, 15_000);
      check(back, "a login without a server fails and the form comes back", (await hook(page)).error ?? "");
      check(await page.isEnabled("#login-submit"), "the form can be used again");
      await ctx.close();
    }

    // 3: the fake router.
    const ctx = await browser.newContext({ viewport: { width: 1024, height: 640 } });
    await ctx.addInitScript({ content: fake });
    const page = await ctx.newPage();
    watch(page);
    await page.goto(base);
    await waitFor(page, () => window.tessera?.state === "login");

    await page.fill("#login-name", "Ann");
    await page.fill("#login-password", "wrong");
    await page.click("#login-submit");
    check(await waitFor(page, () => window.tessera.error !== null), "a wrong password is refused");
    const code = await page.getAttribute("#login-error", "data-code");
    check(code === "BadCredentials" && /Wrong name or password/.test(await page.textContent("#login-error")), "the form says BadCredentials clearly", await page.textContent("#login-error"));

    await page.fill("#login-name", "Ann");
    await page.fill("#login-password", "another");
    await page.click("#login-create");
    check(await waitFor(page, () => document.querySelector("#login-error")?.dataset.code === "NameTaken"), "creating a taken name says NameTaken");

    await page.fill("#login-password", "secret");
    await page.click("#login-submit");
    check(await waitFor(page, () => window.tessera.state === "playing"), "logging in enters the world");
    check(await waitFor(page, () => window.tessera.entities.some((e) => e.name === "Mira" && e.kind === "Npc") && window.tessera.entities.some((e) => e.name === "Bob")), "the NPC and the other player appear");
    let h = await hook(page);
    check(h.name === "Ann" && h.cell?.x === -1 && h.cell?.z === 0 && h.shard === "shard-1", "name, cell and shard from LoggedIn", JSON.stringify([h.name, h.cell, h.shard]));
    const start = h.position;
    const bob0 = h.entities.find((e) => e.name === "Bob").pos;
    await sleep(400);
    const bob1 = (await hook(page)).entities.find((e) => e.name === "Bob").pos;
    check(Math.hypot(bob1.x - bob0.x, bob1.z - bob0.z) > 0.3, "the other player moves smoothly (interpolated)");

    await page.mouse.move(512, 320);
    await page.keyboard.down("w");
    await sleep(1000);
    await page.keyboard.up("w");
    await sleep(500);
    h = await hook(page);
    const walked = start.z - h.position.z;
    check(walked > 3 && walked < 9 && Math.abs(h.position.x - start.x) < 0.5, "W walks north about 6 m/s", `${walked.toFixed(2)} m north`);
    const server = await page.evaluate(() => [...globalThis.__fakeRouter.conns][0].player.pos);
    check(Math.hypot(server.x - h.position.x, server.z - h.position.z) < 0.05, "prediction agrees with the server once standing", JSON.stringify(server));

    await page.keyboard.press("Enter");
    await page.keyboard.type("hello there");
    await page.keyboard.press("Enter");
    check(await waitFor(page, () => window.tessera.chat.some((l) => l === 'You say, "hello there"') && window.tessera.chat.some((l) => l === 'Mira says, "Good day to you!"')), "speech goes out, the reply comes back");
    check(await waitFor(page, () => window.tessera.chat.some((l) => l.startsWith("Bob shouts"))), "a chat-service line shows");
    check(await page.isVisible(".bubble"), "a speech bubble shows over the speaker");
    const sent = await page.evaluate(() => globalThis.__fakeRouter.received.filter((m) => m.type === "Say").map((m) => m.text));
    check(sent.length === 1 && sent[0] === "hello there", "plain text is sent as Say", JSON.stringify(sent));
    await page.keyboard.press("/");
    await page.keyboard.type("who");
    await page.keyboard.press("Enter");
    check(await waitFor(page, () => window.tessera.chat.includes("Players online:")), "/who runs a command and shows the answer");
    const cmds = await page.evaluate(() => globalThis.__fakeRouter.received.filter((m) => m.type === "Command").map((m) => m.line));
    check(cmds.length === 1 && cmds[0] === "who", "a /line is sent as Command without the slash", JSON.stringify(cmds));
    check(await waitFor(page, () => window.tessera.ping_ms !== null, undefined, 3000), "Ping/Pong measures the round trip");

    await page.keyboard.press("F3");
    check(await waitFor(page, () => !document.querySelector("#debug-overlay").hidden && /hand-offs/.test(document.querySelector("#debug-overlay").textContent)), "F3 shows the overlay");
    // Walk west over the cell border at x = -64 (cell -2 is another shard
    // in the fake): a hand-off.
    await page.evaluate(() => {
      const c = [...globalThis.__fakeRouter.conns][0];
      c.player.pos = { x: -63, y: 0, z: c.player.pos.z };
    });
    await page.keyboard.down("q");
    await sleep(400);
    await page.keyboard.up("q");
    await page.keyboard.down("a");
    await sleep(500);
    await page.keyboard.up("a");
    const handed = await waitFor(page, () => window.tessera.handoffs > 0, undefined, 3000);
    h = await hook(page);
    check(handed && h.shard === "shard-west", "a hand-off is counted and the shard changes", JSON.stringify([h.handoffs, h.cell, h.shard]));
    // Back near the market for the picture.
    await page.evaluate(() => {
      const c = [...globalThis.__fakeRouter.conns][0];
      c.player.pos = { x: -5, y: 0, z: 9 };
    });
    await page.keyboard.down("e");
    await sleep(400);
    await page.keyboard.up("e");
    await page.keyboard.press("Enter");
    await page.keyboard.type("hello again");
    await page.keyboard.press("Enter");
    await sleep(1200);
    const overlay = await page.textContent("#debug-overlay");
    await page.screenshot({ path: "/tmp/web-world.png" });
    check(true, "screenshot /tmp/web-world.png");
    const fps = /\((\d+) fps\)/.exec(overlay)?.[1];
    console.log(`     overlay: ${overlay.split("\n").slice(0, 8).join(" | ")}`);
    check(Number(fps) > 0, "the overlay shows the frame rate", `${fps} fps`);

    // A router restart: close code 4, then Resume by itself.
    await page.evaluate(() => globalThis.__fakeRouter.restart(700));
    check(await waitFor(page, () => window.tessera.state === "reconnecting", undefined, 3000), "close code 4 starts reconnecting");
    check(await page.isVisible("#banner"), "a reconnecting banner shows");
    check(await waitFor(page, () => window.tessera.state === "playing", undefined, 10_000), "the session resumes by itself");
    const resumes = await page.evaluate(() => globalThis.__fakeRouter.received.filter((m) => m.type === "Resume").length);
    check(resumes >= 1 && (await hook(page)).chat.includes("Reconnected."), "with Resume and the stored token", `${resumes} Resume`);
    check(await waitFor(page, () => window.tessera.entities.length === 2), "the scene is kept and the entities come back");
    check(!(await page.isVisible("#banner")), "the banner goes away");

    // A connection lost without a close reconnects too.
    await page.evaluate(() => globalThis.__fakeRouter.drop());
    check(await waitFor(page, () => window.tessera.state === "reconnecting", undefined, 3000), "a lost connection starts reconnecting");
    check(await waitFor(page, () => window.tessera.state === "playing", undefined, 10_000), "and resumes");

    // A reload resumes from sessionStorage.
    await page.reload();
    check(await waitFor(page, () => window.tessera?.state === "playing", undefined, 10_000), "a page reload resumes the session");
    check((await hook(page)).name === "Ann", "as the same character");

    // A refused Resume falls back to the form.
    await page.evaluate(() => {
      globalThis.__fakeRouter.refuseResume = true;
      globalThis.__fakeRouter.restart(200);
    });
    check(await waitFor(page, () => window.tessera.state === "login", undefined, 10_000), "a refused Resume shows the login form");
    check(/session has ended/.test((await hook(page)).error ?? ""), "with the server's reason", (await hook(page)).error ?? "");

    // /quit ends the session: code 0, back to the form, no reconnect.
    await page.evaluate(() => {
      globalThis.__fakeRouter.refuseResume = false;
    });
    await page.fill("#login-password", "secret");
    await page.click("#login-submit");
    await waitFor(page, () => window.tessera.state === "playing");
    await page.keyboard.press("/");
    await page.keyboard.type("quit");
    await page.keyboard.press("Enter");
    check(await waitFor(page, () => window.tessera.state === "login", undefined, 5000), "/quit (close code 0) ends the session");
    check(await page.evaluate(() => sessionStorage.getItem("tessera.token") === null), "and forgets the token");
    await ctx.close();
  } finally {
    await browser.close();
    server.close();
  }
  check(problems.length === 0, "no console errors", problems.join("; "));
  if (failed > 0) {
    console.log(`${failed} check(s) failed`);
    process.exitCode = 1;
  } else {
    console.log("all checks passed");
  }
}

await main();
