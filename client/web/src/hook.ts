// `window.tessera`: a small, read-only view of the client for tests. A
// headless browser waits on it instead of on pixels or wording, e.g.
//
//   await page.waitForFunction(() => window.tessera?.state === "playing");
//   const me = await page.evaluate(() => window.tessera.position);
//
// Every property is a getter that returns a fresh copy; writing to it
// changes nothing.
//
//   state       "login" | "connecting" | "playing" | "reconnecting"
//   world       the world's name (from /tessera.json), "" before it loaded
//   name        the own character's name, or null before logging in
//   position    {x, y, z}: where the own avatar is drawn (predicted), or null
//   cell        {x, z}: the own cell as the server last said, or null
//   shard       the shard simulating the own cell, or null
//   entities    [{id, name, kind, pos: {x, y, z}}]: the other entities in
//               view (id as a decimal string, kind "Player" | "Npc", pos as
//               drawn this frame)
//   chat        the last 50 lines of the chat panel, oldest first
//   frames      frames drawn since the page loaded (the world draws behind
//               the login form too, so this grows from the start)
//   error       the message the login form shows, or null
//   handoffs    CellChanged messages received in this session
//   corrections prediction corrections over 1 cm in this session
//   ping_ms     the last Ping/Pong round trip in milliseconds, or null

import type { V3 } from "./vec";
import type { CellXZ } from "./world";

export type ClientState = "login" | "connecting" | "playing" | "reconnecting";

export interface EntityView {
  id: string;
  name: string;
  kind: "Player" | "Npc";
  pos: V3;
}

/** What the App exposes to the hook. */
export interface HookSource {
  state(): ClientState;
  world(): string;
  name(): string | null;
  position(): V3 | null;
  cell(): CellXZ | null;
  shard(): string | null;
  entities(): EntityView[];
  chat(): string[];
  frames(): number;
  error(): string | null;
  handoffs(): number;
  corrections(): number;
  pingMs(): number | null;
}

export type TesseraHook = Readonly<{
  state: ClientState;
  world: string;
  name: string | null;
  position: V3 | null;
  cell: CellXZ | null;
  shard: string | null;
  entities: EntityView[];
  chat: string[];
  frames: number;
  error: string | null;
  handoffs: number;
  corrections: number;
  ping_ms: number | null;
}>;

declare global {
  interface Window {
    tessera?: TesseraHook;
  }
}

const copy = <T>(v: T): T => (v === null || typeof v !== "object" ? v : (JSON.parse(JSON.stringify(v)) as T));

export function installHook(src: HookSource): void {
  const hook = {};
  const getters: Record<string, () => unknown> = {
    state: () => src.state(),
    world: () => src.world(),
    name: () => src.name(),
    position: () => copy(src.position()),
    cell: () => copy(src.cell()),
    shard: () => src.shard(),
    entities: () => copy(src.entities()),
    chat: () => src.chat(),
    frames: () => src.frames(),
    error: () => src.error(),
    handoffs: () => src.handoffs(),
    corrections: () => src.corrections(),
    ping_ms: () => src.pingMs(),
  };
  for (const [key, get] of Object.entries(getters)) {
    Object.defineProperty(hook, key, { get, enumerable: true });
  }
  Object.freeze(hook);
  Object.defineProperty(window, "tessera", { value: hook, writable: false, configurable: false, enumerable: true });
}
