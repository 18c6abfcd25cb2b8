// Builds the browser client into dist/: app.js (src/main.ts and everything
// it imports, three.js included, minified, with app.js.map), app.css and
// index.html. Self-contained static files: no CDN, nothing for the player
// to install. Prints each file's size, raw and gzipped.
//
//   node build.mjs            build once
//   node build.mjs --watch    rebuild on every change

import * as esbuild from "esbuild";
import { watch as watchFile } from "node:fs";
import { copyFile, mkdir, readFile, rm, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
const watch = process.argv.includes("--watch");

/** Copies the static assets next to the bundle. */
async function copyAssets() {
  await copyFile(join(here, "index.html"), join(dist, "index.html"));
  await copyFile(join(here, "style.css"), join(dist, "app.css"));
}

async function report() {
  const rows = [];
  for (const name of ["index.html", "app.js", "app.css", "app.js.map"]) {
    const path = join(dist, name);
    try {
      await stat(path);
    } catch {
      continue;
    }
    const bytes = await readFile(path);
    rows.push([name, bytes.length, gzipSync(bytes, { level: 9 }).length]);
  }
  const kb = (n) => `${(n / 1024).toFixed(1)} kB`.padStart(10);
  console.log("dist/".padEnd(14) + "raw".padStart(10) + "gzip".padStart(10));
  for (const [name, raw, gz] of rows) console.log(name.padEnd(14) + kb(raw) + kb(gz));
  const shipped = rows.filter(([n]) => n !== "app.js.map");
  const raw = shipped.reduce((a, r) => a + r[1], 0);
  const gz = shipped.reduce((a, r) => a + r[2], 0);
  console.log("total".padEnd(14) + kb(raw) + kb(gz) + "   (without the source map)");
}

/** @type {esbuild.BuildOptions} */
const options = {
  entryPoints: [join(here, "src/main.ts")],
  outfile: join(dist, "app.js"),
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["es2022", "chrome110", "firefox115", "safari16"],
  minify: true,
  sourcemap: true,
  legalComments: "eof",
  logLevel: "warning",
  define: { "process.env.NODE_ENV": '"production"' },
};

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });

if (watch) {
  const ctx = await esbuild.context({
    ...options,
    plugins: [
      {
        name: "assets-and-sizes",
        setup(build) {
          build.onEnd(async (result) => {
            if (result.errors.length > 0) return;
            await copyAssets();
            await report();
          });
        },
      },
    ],
  });
  await ctx.watch();
  for (const f of ["index.html", "style.css"]) {
    watchFile(join(here, f), () => copyAssets().then(report, (e) => console.error(`cannot copy ${f}: ${e.message}`)));
  }
  console.log("watching src/, index.html and style.css (Ctrl-C stops)");
} else {
  try {
    await esbuild.build(options);
  } catch {
    process.exit(1); // esbuild has printed the errors
  }
  await copyAssets();
  await report();
}
