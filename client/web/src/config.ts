// Where to connect: `GET /tessera.json` on the origin that served the page.
// Fetched at start and again before every reconnect, because the router's
// development certificate is short-lived and changes (its hash with it).

import { checkWorld, type WorldDef } from "./world";

export interface WebTransportTarget {
  /** e.g. https://127.0.0.1:4433/tessera */
  url: string;
  /** Base64 SHA-256 hashes of the certificate DER; empty when the router
   * has a CA-issued certificate. */
  certificate_hashes: string[];
}

export interface TesseraConfig {
  protocol_version: number;
  world_name: string;
  webtransport: WebTransportTarget;
  world: WorldDef;
}

export class ConfigError extends Error {
  /** `stale`: the page speaks another protocol version than the server
   * (reloading the page fixes it; retrying does not). */
  constructor(
    message: string,
    readonly stale = false,
  ) {
    super(message);
  }
}

export async function fetchConfig(signal?: AbortSignal): Promise<TesseraConfig> {
  let res: Response;
  try {
    res = await fetch("/tessera.json", { cache: "no-store", signal: signal ?? null });
  } catch (e) {
    throw new ConfigError(`cannot reach the server (${String((e as Error).message ?? e)})`);
  }
  if (!res.ok) throw new ConfigError(`the server answered /tessera.json with HTTP ${res.status}`);
  let body: unknown;
  try {
    body = await res.json();
  } catch {
    throw new ConfigError("the server's /tessera.json is not valid JSON");
  }
  const c = body as Partial<TesseraConfig>;
  if (typeof c.protocol_version !== "number") throw new ConfigError("/tessera.json has no protocol_version");
  if (!c.webtransport || typeof c.webtransport.url !== "string")
    throw new ConfigError("/tessera.json has no webtransport.url");
  if (!Array.isArray(c.webtransport.certificate_hashes)) c.webtransport.certificate_hashes = [];
  const bad = checkWorld(c.world);
  if (bad) throw new ConfigError(`/tessera.json: ${bad}`);
  if (typeof c.world_name !== "string") c.world_name = c.world!.name;
  return c as TesseraConfig;
}

/** Base64 (standard or URL alphabet) to bytes. */
export function base64Bytes(text: string): Uint8Array<ArrayBuffer> {
  const clean = text.trim().replace(/-/g, "+").replace(/_/g, "/");
  const padded = clean + "=".repeat((4 - (clean.length % 4)) % 4);
  const bin = atob(padded);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
