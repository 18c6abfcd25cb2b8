// Measures the browser client (docs/performance.md): one browser player
// walks for a while against a running Tessera, and the page's own records
// (`window.tessera.perf`, `bytes_in`, `bytes_out`; src/hook.ts) give
//
//   frame time      ms between two animation frames while playing (mean,
//                   p50, p90, p99, max) and frames per second
//   input to ack    ms from sending input N to the first snapshot with
//                   ack_input >= N, as the page sees them (p50, p90, p99)
//   bytes           payload bytes per second in and out (control frames and
//                   datagrams, without QUIC and HTTP/3 overhead)
//   bundle          dist/ files, raw and gzipped (level 9, as build.mjs)
//
// Not part of the tests. Run by hand against `tessera up --web ADDR`:
//
//   node client/web/test/bench.mjs [--url http://127.0.0.1:8080/]
//        [--seconds 30] [--warmup 3] [--size 1024x640] [--name NAME]
//        [--chromium /usr/bin/chromium] [--json FILE]
//
// Chromium runs headless with software GL (SwiftShader), as in the tests;
// the GL renderer it reports is printed with the figures.

import { readdir, readFile, writeFile } from "node:fs/promises";
import { cpus } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "..", "dist");

function arg(name, fallback) {
  const args = process.argv.slice(2);
  const i = args.indexOf(`--${name}`);
  return i < 0 ? fallback : args[i + 1];
}

const url = arg("url", "http://127.0.0.1:8080/");
const seconds = Number(arg("seconds", "30"));
const warmup = Number(arg("warmup", "3"));
const [width, height] = arg("size", "1024x640").split("x").map(Number);
const name = arg("name", `Bench${Date.now() % 1_000_000}`);
const chromiumPath = arg("chromium", "/usr/bin/chromium");
const jsonOut = arg("json", null);

/** The walk, repeated: a 9 m square around the spawn, [key, ms held]. */
const SQUARE = [
  ["w", 1500],
  ["d", 1500],
  ["s", 1500],
  ["a", 1500],
];

function summary(samples) {
  const s = [...samples].sort((a, b) => a - b);
  const n = s.length;
  const at = (p) => (n === 0 ? null : s[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))]);
  const mean = n === 0 ? null : s.reduce((a, b) => a + b, 0) / n;
  return { count: n, mean, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: n === 0 ? null : s[n - 1] };
}

async function bundle() {
  const rows = [];
  for (const f of (await readdir(dist)).sort()) {
    const bytes = await readFile(join(dist, f));
    rows.push({ file: f, raw: bytes.length, gzip: gzipSync(bytes, { level: 9 }).length });
  }
  const shipped = rows.filter((r) => !r.file.endsWith(".map"));
  return {
    files: rows,
    total_raw: shipped.reduce((a, r) => a + r.raw, 0),
    total_gzip: shipped.reduce((a, r) => a + r.gzip, 0),
  };
}

const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--ignore-gpu-blocklist"],
});
const errors = [];
let report;
try {
  const page = await browser.newPage({ viewport: { width, height } });
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(m.text());
  });
  page.on("pageerror", (e) => errors.push(`page error: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => window.tessera?.world !== "", undefined, { timeout: 30_000 });
  const gl = await page.evaluate(() => {
    const c = document.createElement("canvas").getContext("webgl2");
    const ext = c?.getExtension("WEBGL_debug_renderer_info");
    return ext ? c.getParameter(ext.UNMASKED_RENDERER_WEBGL) : (c?.getParameter(c.RENDERER) ?? "none");
  });
  await page.fill("#login-name", name);
  await page.fill("#login-password", "bench-password");
  await page.click("#login-create");
  await page.waitForFunction(() => window.tessera.state === "playing", undefined, { timeout: 30_000 });
  await page.evaluate(() => document.activeElement?.blur());
  await page.waitForTimeout(warmup * 1000);

  const read = () =>
    page.evaluate(() => {
      const t = window.tessera;
      return { at: performance.now(), perf: t.perf, bytes_in: t.bytes_in, bytes_out: t.bytes_out, state: t.state };
    });
  const before = await read();
  const end = Date.now() + seconds * 1000;
  walk: for (;;) {
    for (const [key, ms] of SQUARE) {
      const left = end - Date.now();
      if (left <= 0) break walk;
      await page.keyboard.down(key);
      await page.waitForTimeout(Math.min(ms, left));
      await page.keyboard.up(key);
    }
  }
  const after = await read();
  const info = await page.evaluate(() => ({ state: window.tessera.state, ping_ms: window.tessera.ping_ms, corrections: window.tessera.corrections }));

  const since = (arr, total0, total1) => {
    const n = total1 - total0;
    if (n > arr.length) throw new Error(`more samples (${n}) than the page keeps (${arr.length}): shorten --seconds`);
    return arr.slice(arr.length - n);
  };
  const dt = (after.at - before.at) / 1000;
  const frames = since(after.perf.frame_ms, before.perf.frames, after.perf.frames);
  const acks = since(after.perf.ack_ms, before.perf.acks, after.perf.acks);
  report = {
    url,
    settings: {
      seconds: dt,
      warmup_seconds: warmup,
      viewport: `${width}x${height}`,
      browser: `chromium ${browser.version()}`,
      gl_renderer: gl,
      cores: cpus().length,
      cpu: cpus()[0]?.model ?? "?",
    },
    state: info.state,
    frame_ms: summary(frames),
    fps: frames.length / dt,
    input_to_ack_ms: summary(acks),
    inputs_per_s: acks.length / dt,
    bytes_in_per_s: (after.bytes_in - before.bytes_in) / dt,
    bytes_out_per_s: (after.bytes_out - before.bytes_out) / dt,
    last_ping_ms: info.ping_ms,
    prediction_corrections: info.corrections,
    console_errors: errors,
    bundle: await bundle(),
  };
} finally {
  await browser.close();
}

const f = (v, d = 1) => (v === null ? "-" : v.toFixed(d));
const s = report.settings;
console.log(`${s.browser}, GL: ${s.gl_renderer}, ${s.viewport}, ${s.cores} cores (${s.cpu})`);
console.log(`walked ${f(s.seconds)} s after ${s.warmup_seconds} s standing; state ${report.state}`);
const row = (label, m) =>
  console.log(
    `${label.padEnd(22)} n=${String(m.count).padStart(5)}  mean ${f(m.mean)}  p50 ${f(m.p50)}  p90 ${f(m.p90)}  p99 ${f(m.p99)}  max ${f(m.max)} ms`,
  );
row("frame time", report.frame_ms);
console.log(`${"".padEnd(22)} ${f(report.fps)} frames per second`);
row("input to ack", report.input_to_ack_ms);
console.log(`${"".padEnd(22)} ${f(report.inputs_per_s)} inputs acknowledged per second`);
console.log(`bytes in / out         ${f(report.bytes_in_per_s / 1000, 2)} / ${f(report.bytes_out_per_s / 1000, 2)} kB/s (payload)`);
console.log(`console errors         ${report.console_errors.length}`);
for (const r of report.bundle.files) {
  console.log(`dist/${r.file.padEnd(16)} ${f(r.raw / 1024)} kB raw  ${f(r.gzip / 1024)} kB gzip`);
}
console.log(`${"shipped (no .map)".padEnd(21)} ${f(report.bundle.total_raw / 1024)} kB raw  ${f(report.bundle.total_gzip / 1024)} kB gzip`);
if (jsonOut) await writeFile(jsonOut, JSON.stringify(report, null, 2) + "\n");
