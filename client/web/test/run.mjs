// Runs the protocol codec's checks (test/codec.test.ts) under Node.
//
//   node test/run.mjs         the TypeScript self-checks (`npm test`)
//   node test/run.mjs <dir>   those, and the cross-check against Rust: reads
//                             <dir>/cases.json and writes <dir>/from_ts.json
//                             (proto/tests/web_codec.rs runs this)
//
// The test is TypeScript, so it is bundled first with esbuild into a
// temporary directory. Exits 1 when a check fails, listing the failures on
// stderr; the last line on stdout is a JSON summary.

import { build } from "esbuild";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dir = process.argv[2];

const out = await mkdtemp(join(tmpdir(), "tessera-web-test-"));
let outcomes;
try {
  const bundle = join(out, "codec.test.mjs");
  await build({
    entryPoints: [join(here, "codec.test.ts")],
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node18",
    outfile: bundle,
    logLevel: "warning",
  });
  const test = await import(pathToFileURL(bundle).href);
  outcomes = { self: test.selfCheck() };
  if (dir !== undefined) {
    const cases = JSON.parse(await readFile(join(dir, "cases.json"), "utf8"));
    const { outcome, fromTs } = test.crossCheck(cases);
    outcomes.cross = outcome;
    await writeFile(join(dir, "from_ts.json"), JSON.stringify(fromTs, null, 1));
  }
} finally {
  await rm(out, { recursive: true, force: true });
}

const failures = Object.values(outcomes).flatMap((o) => o.failures);
for (const failure of failures) {
  console.error(`FAIL ${failure}`);
}
const summary = Object.fromEntries(
  Object.entries(outcomes).map(([name, o]) => [name, { checked: o.checked, failed: o.failures.length }]),
);
console.log(JSON.stringify(summary));
process.exitCode = failures.length === 0 ? 0 : 1;
