// Entry point of the browser client (bundled by build.mjs into dist/app.js).
// See app.ts for the session flow and hook.ts for the `window.tessera` test hook.

import { App } from "./app";

function start(): void {
  const root = document.getElementById("app");
  if (!root) throw new Error("index.html lacks the #app element");
  let app: App;
  try {
    app = new App(root);
  } catch (e) {
    // No WebGL (or another failure before anything draws): say so plainly.
    root.textContent = "";
    const p = document.createElement("p");
    p.className = "fatal";
    p.textContent = `Tessera cannot start in this browser: ${(e as Error).message ?? String(e)}`;
    root.appendChild(p);
    throw e;
  }
  void app.boot();
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", start);
} else {
  start();
}
