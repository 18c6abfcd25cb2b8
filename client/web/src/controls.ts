// Keyboard and mouse to a movement intent, as the native viewer maps them
// (client/viewer/src/app.rs, `controls`; docs/client.md, "Keys"):
// W/S (or arrows up/down) walk ahead/back and A/D sideways relative to where
// the camera faces; the mouse turns (click the view to capture it, Esc frees
// it; or hold the right button); Q/E and arrows left/right turn; space jumps.
// The result is Input.move_x/move_z (a ground direction of length ≤ 1) and
// yaw (radians, 0 = north, clockwise).

import { forward, remEuclid } from "./vec";

const MOUSE_YAW = 0.004;
const MOUSE_PITCH = 0.003;
const KEY_TURN = 2.0; // radians per second
const MIN_PITCH = -0.3;
const MAX_PITCH = 1.3;

export interface Intent {
  moveX: number;
  moveZ: number;
  jump: boolean;
}

export class Controls {
  yaw = 0;
  pitch = 0.35;
  /** False while the player types or is not in the world. */
  enabled = false;
  private readonly down = new Set<string>();
  private dragging = false;

  constructor(private readonly canvas: HTMLCanvasElement) {
    window.addEventListener("keydown", (e) => {
      if (!this.enabled || isTyping(e.target)) return;
      if (MOVE_KEYS.has(e.code)) e.preventDefault();
      this.down.add(e.code);
    });
    window.addEventListener("keyup", (e) => this.down.delete(e.code));
    window.addEventListener("blur", () => this.release());
    canvas.addEventListener("click", () => {
      if (this.enabled && document.pointerLockElement !== canvas) {
        // Some browsers reject (a promise) or throw when not allowed now.
        try {
          const p = canvas.requestPointerLock() as unknown as Promise<void> | undefined;
          p?.catch?.(() => undefined);
        } catch {
          // no pointer lock: right-button dragging still works
        }
      }
    });
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    canvas.addEventListener("mousedown", (e) => {
      if (e.button === 2) this.dragging = true;
    });
    window.addEventListener("mouseup", (e) => {
      if (e.button === 2) this.dragging = false;
    });
    window.addEventListener("mousemove", (e) => {
      if (!this.enabled) return;
      if (document.pointerLockElement === canvas || this.dragging) {
        this.yaw = remEuclid(this.yaw + e.movementX * MOUSE_YAW, Math.PI * 2);
        this.pitch = Math.min(MAX_PITCH, Math.max(MIN_PITCH, this.pitch + e.movementY * MOUSE_PITCH));
      }
    });
  }

  /** Forgets held keys (focus moved to the chat, the window lost focus). */
  release(): void {
    this.down.clear();
    this.dragging = false;
  }

  unlockPointer(): void {
    if (document.pointerLockElement === this.canvas) document.exitPointerLock();
  }

  /** Turns by held keys over `dt` seconds and returns the movement wanted now. */
  update(dt: number): Intent {
    if (!this.enabled) return { moveX: 0, moveZ: 0, jump: false };
    const k = (...codes: string[]) => codes.some((c) => this.down.has(c));
    if (k("ArrowLeft", "KeyQ")) this.yaw -= KEY_TURN * dt;
    if (k("ArrowRight", "KeyE")) this.yaw += KEY_TURN * dt;
    this.yaw = remEuclid(this.yaw, Math.PI * 2);
    let ahead = 0;
    let side = 0;
    if (k("KeyW", "ArrowUp")) ahead += 1;
    if (k("KeyS", "ArrowDown")) ahead -= 1;
    if (k("KeyD")) side += 1;
    if (k("KeyA")) side -= 1;
    const f = forward(this.yaw);
    // Right of the facing is (-f.z, f.x).
    let x = f.x * ahead - f.z * side;
    let z = f.z * ahead + f.x * side;
    const len = Math.hypot(x, z);
    if (len > 1) {
      x /= len;
      z /= len;
    }
    return { moveX: x, moveZ: z, jump: k("Space") };
  }
}

const MOVE_KEYS = new Set(["KeyW", "KeyA", "KeyS", "KeyD", "KeyQ", "KeyE", "ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Space"]);

function isTyping(target: EventTarget | null): boolean {
  return target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement;
}
