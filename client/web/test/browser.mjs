// One real browser player against a running Tessera (tests/browser.rs runs
// it against `tessera up`; by hand: `tessera up --web 127.0.0.1:8080`, then
// `node client/web/test/browser.mjs --url http://127.0.0.1:8080/ --out /tmp/b`).
//
//   node test/browser.mjs --url URL --out DIR [--name NAME] [--password PW]
//        [--look-for NAME] [--say TEXT] [--size WxH] [--chromium PATH]
//        [--then-restart FILE]
//
// With --then-restart, once the line is said the script writes FILE (the
// caller then restarts the server) and waits for the page to reconnect by
// itself: state "reconnecting", then "playing" again; result.json then also
// has `resumed`, `resumed_name` and `resumed_position`. `--look-for ""`
// skips looking for anyone.
//
// Headless Chromium (playwright-core; Debian's `chromium` package, software
// GL through SwiftShader) opens the page, creates a character, walks for a
// few seconds and says a line through the chat input. The character enters
// at the spawn facing north (yaw 0, -z), the camera 7 m behind it; it walks
// back (S: south) some 7 m and left (A: west) some 4 m, so whoever stands
// at the spawn ends up ahead and to the right, in front of the camera and
// not hidden behind the own avatar. It stays in the spawn's cell, on the
// open ground worlds/default/world.toml keeps free of walls.
//
// Writes DIR/result.json:
//   {ok, failure, state, name, position, cell, shard, entities (as the
//    hook's `entities`, with on_screen), look_for, seen, on_screen, said,
//    chat, frames, console_errors, screenshot, size, seconds}
// and the screenshot DIR/browser.png (the viewport, SIZE pixels). Exits 0
// when every step worked (the caller still checks the result), 1 otherwise.
// Reads `window.tessera` (src/hook.ts), never pixels or wording.

import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { chromium } from "playwright-core";

const started = Date.now();

function arg(name, fallback) {
  const args = process.argv.slice(2);
  const i = args.indexOf(`--${name}`);
  if (i < 0) {
    if (fallback === undefined) {
      console.error(`browser.mjs: --${name} is required`);
      process.exit(2);
    }
    return fallback;
  }
  return args[i + 1];
}

const url = arg("url");
const out = arg("out");
const name = arg("name", "Webber");
const password = arg("password", "secret12");
const lookFor = arg("look-for", "Tella");
const say = arg("say", "hello from the browser");
const [width, height] = arg("size", "1024x640").split("x").map(Number);
const chromiumPath = arg("chromium", "/usr/bin/chromium");
const restartMarker = arg("then-restart", "");

/** Generous for a loaded 2-core machine (the whole run takes ~10 s alone). */
const STEP_TIMEOUT = 30_000;
/** How the keys move the player: [key, milliseconds held]. */
const WALK = [
  ["s", 1200],
  ["a", 600],
];

await mkdir(out, { recursive: true });
const screenshot = join(out, "browser.png");
const consoleErrors = [];
const result = {
  ok: false,
  failure: null,
  look_for: lookFor,
  said: say,
  console_errors: consoleErrors,
  screenshot: "browser.png",
  size: { width, height },
};

// Whatever happens, the script ends (and says why) before the caller's deadline.
const watchdog = setTimeout(
  () => {
    console.error("browser.mjs: gave up");
    process.exit(1);
  },
  restartMarker === "" ? 90_000 : 180_000,
);

const browser = await chromium.launch({
  executablePath: chromiumPath,
  args: ["--no-sandbox", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--ignore-gpu-blocklist"],
});
let page;
try {
  page = await browser.newPage({ viewport: { width, height } });
  page.on("console", (m) => {
    if (m.type() === "error") consoleErrors.push(m.text());
  });
  page.on("pageerror", (e) => consoleErrors.push(`page error: ${e.message}`));

  const step = async (what, fn, arg = undefined, timeout = STEP_TIMEOUT) => {
    try {
      await page.waitForFunction(fn, arg, { timeout });
    } catch {
      const now = await page.evaluate(() => ({ state: window.tessera?.state, error: window.tessera?.error }));
      throw new Error(`${what}: not within ${timeout / 1000} s (state ${now.state}, error ${now.error})`);
    }
  };

  await page.goto(url);
  await step("the world loads", () => window.tessera?.world !== "" && window.tessera.frames > 2);
  await page.fill("#login-name", name);
  await page.fill("#login-password", password);
  await page.click("#login-create");
  await step("the character enters the world", () => window.tessera.state === "playing");
  // Keys go to the world, not to the (hidden) login form.
  await page.evaluate(() => document.activeElement?.blur());
  const start = await page.evaluate(() => window.tessera.position);
  for (const [key, ms] of WALK) {
    await page.keyboard.down(key);
    await page.waitForTimeout(ms);
    await page.keyboard.up(key);
  }
  await step(
    "the walk moves the avatar",
    (s) => {
      const p = window.tessera.position;
      return Math.hypot(p.x - s.x, p.z - s.z) > 3;
    },
    start,
    5000,
  ).catch(() => undefined); // reported through `position`; the caller decides
  if (lookFor !== "") {
    await step(`${lookFor} is in view`, (n) => window.tessera.entities.some((e) => e.name === n), lookFor);
  }

  await page.fill("#chat-input", say);
  await page.press("#chat-input", "Enter");
  await step("the line is said", (t) => window.tessera.chat.includes(`You say, "${t}"`), say);
  // Let the prediction's smoothing settle before the picture.
  await page.waitForTimeout(500);
  await page.screenshot({ path: screenshot });
  if (restartMarker !== "") {
    await writeFile(restartMarker, "ready\n");
    await step("the page sees the server go", () => window.tessera.state === "reconnecting", undefined, 60_000);
    await step("the page is back in the world", () => window.tessera.state === "playing", undefined, 60_000);
    const back = await page.evaluate(() => ({ name: window.tessera.name, position: window.tessera.position }));
    result.resumed = true;
    result.resumed_name = back.name;
    result.resumed_position = back.position;
  }
  result.ok = true;
} catch (e) {
  result.failure = e instanceof Error ? e.message : String(e);
  if (page) await page.screenshot({ path: screenshot }).catch(() => undefined);
}

if (page) {
  const h = await page
    .evaluate(() => {
      const t = window.tessera;
      return t
        ? {
            state: t.state,
            name: t.name,
            position: t.position,
            cell: t.cell,
            shard: t.shard,
            entities: t.entities,
            chat: t.chat,
            frames: t.frames,
          }
        : {};
    })
    .catch(() => ({}));
  Object.assign(result, h);
  const seen = (h.entities ?? []).find((e) => e.name === lookFor);
  result.seen = seen !== undefined;
  result.on_screen = seen?.on_screen === true;
}
await browser.close();
result.seconds = (Date.now() - started) / 1000;
await writeFile(join(out, "result.json"), JSON.stringify(result, null, 2) + "\n");
clearTimeout(watchdog);
if (!result.ok) console.error(`browser.mjs: ${result.failure}`);
process.exit(result.ok ? 0 : 1);
