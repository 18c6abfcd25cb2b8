// The page's HTML parts around the 3D view: the login form, the chat panel,
// the HUD (zone name, link indicator, banners) and the F3 overlay. They only
// show things and report what the player did; the App decides.

import type { ErrorCode } from "./proto/index";
import { CHAT_HELP, type LineKind } from "./chat";

function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: { className?: string; text?: string; id?: string } = {},
  ...children: Node[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (props.className) e.className = props.className;
  if (props.text !== undefined) e.textContent = props.text;
  if (props.id) e.id = props.id;
  for (const c of children) e.appendChild(c);
  return e;
}

/** What to tell the player beside the server's message, per ErrorCode. */
const HINTS: Partial<Record<ErrorCode, string>> = {
  BadCredentials: "Check the name and the password, or create a new account.",
  NameTaken: "Pick another name, or log in if this character is yours.",
  InvalidName: "Names are 3 to 20 characters: a letter, then letters, digits or _.",
  InvalidPassword: "Passwords are 4 to 128 characters, without control characters.",
  RateLimited: "Too many attempts: wait a little before you try again.",
  Unavailable: "The world cannot take you right now; try again in a moment.",
  VersionMismatch: "This page is older than the server: reload it.",
  AlreadyLoggedIn: "This character is already playing.",
};

/** Headlines per ErrorCode, so the kind of refusal is clear at a glance. */
const TITLES: Partial<Record<ErrorCode, string>> = {
  BadCredentials: "Wrong name or password",
  NameTaken: "Name taken",
  InvalidName: "Invalid name",
  InvalidPassword: "Invalid password",
  RateLimited: "Slow down",
  Unavailable: "World unavailable",
  VersionMismatch: "Version mismatch",
  AlreadyLoggedIn: "Already playing",
  Kicked: "Kicked",
  Lagged: "Disconnected",
};

export interface LoginError {
  code: ErrorCode | null;
  message: string;
}

export class LoginForm {
  readonly root: HTMLDivElement;
  private readonly name: HTMLInputElement;
  private readonly password: HTMLInputElement;
  private readonly loginButton: HTMLButtonElement;
  private readonly createButton: HTMLButtonElement;
  private readonly error: HTMLDivElement;
  private readonly status: HTMLDivElement;
  private readonly title: HTMLHeadingElement;
  lastError: LoginError | null = null;

  /** `submit(create, name, password)` is called on "log in" / "create account". */
  constructor(parent: HTMLElement, submit: (create: boolean, name: string, password: string) => void) {
    this.title = h("h1", { text: "Tessera" });
    this.name = h("input", { id: "login-name" });
    this.name.autocomplete = "username";
    this.name.maxLength = 20;
    this.name.spellcheck = false;
    this.password = h("input", { id: "login-password" });
    this.password.type = "password";
    this.password.autocomplete = "current-password";
    this.password.maxLength = 128;
    this.loginButton = h("button", { text: "Log in", id: "login-submit" });
    this.loginButton.type = "submit";
    this.createButton = h("button", { text: "Create account", id: "login-create", className: "secondary" });
    this.createButton.type = "button";
    this.error = h("div", { className: "error", id: "login-error" });
    this.error.setAttribute("role", "alert");
    this.status = h("div", { className: "status", id: "login-status" });
    const label = (text: string, input: HTMLInputElement) => {
      const l = h("label", { text });
      l.htmlFor = input.id;
      return h("div", { className: "field" }, l, input);
    };
    const form = h(
      "form",
      {},
      this.title,
      h("p", { className: "subtitle", text: "A shared world for 3D and text players." }),
      label("Name", this.name),
      label("Password", this.password),
      h("div", { className: "buttons" }, this.loginButton, this.createButton),
      this.error,
      this.status,
    );
    form.noValidate = true;
    const go = (create: boolean) => {
      const name = this.name.value.trim();
      const pw = this.password.value;
      const bad = checkInput(name, pw, create);
      if (bad) {
        this.showError(bad);
        return;
      }
      submit(create, name, pw);
    };
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      go(false);
    });
    this.createButton.addEventListener("click", () => go(true));
    this.root = h("div", { className: "login", id: "login" }, form);
    parent.appendChild(this.root);
  }

  setWorldName(name: string): void {
    this.title.textContent = name || "Tessera";
  }

  show(prefillName?: string): void {
    this.root.hidden = false;
    if (prefillName && !this.name.value) this.name.value = prefillName;
    this.password.value = "";
    this.setBusy(false, "");
    (this.name.value ? this.password : this.name).focus();
  }

  hide(): void {
    this.root.hidden = true;
  }

  setBusy(busy: boolean, status: string): void {
    this.loginButton.disabled = busy;
    this.createButton.disabled = busy;
    this.name.disabled = busy;
    this.password.disabled = busy;
    this.status.textContent = status;
  }

  showError(e: LoginError | null): void {
    this.lastError = e;
    this.error.replaceChildren();
    if (!e) return;
    const title = e.code ? TITLES[e.code] : undefined;
    if (title) this.error.appendChild(h("strong", { text: title }));
    this.error.appendChild(h("div", { text: e.message }));
    const hint = e.code ? HINTS[e.code] : undefined;
    if (hint && hint !== e.message) this.error.appendChild(h("div", { className: "hint", text: hint }));
    this.error.dataset["code"] = e.code ?? "";
  }
}

/** The rules the server enforces, checked before bothering it. */
function checkInput(name: string, password: string, create: boolean): LoginError | null {
  if (!name) return { code: null, message: "Enter your character's name." };
  if (!password) return { code: null, message: "Enter the password." };
  if (create && !/^[A-Za-z][A-Za-z0-9_]{2,19}$/.test(name))
    return { code: "InvalidName", message: "Names are 3 to 20 characters: a letter, then letters, digits or _." };
  if (create && new TextEncoder().encode(password).length < 4)
    return { code: "InvalidPassword", message: "Passwords are at least 4 characters long." };
  return null;
}

/** Lines kept in the chat panel (as the native viewer). */
const CHAT_KEEP = 300;

export class ChatPanel {
  readonly root: HTMLDivElement;
  readonly input: HTMLInputElement;
  private readonly log: HTMLDivElement;
  private readonly recent: string[] = [];

  /** `send(line)` is called with each line the player enters. */
  constructor(parent: HTMLElement, send: (line: string) => void, onFocusChange: (typing: boolean) => void) {
    this.log = h("div", { className: "chat-log", id: "chat-log" });
    this.log.setAttribute("aria-live", "polite");
    this.input = h("input", { id: "chat-input" });
    this.input.placeholder = "Enter to talk; /who, /look, /help runs a command";
    this.input.maxLength = 2048;
    this.input.autocomplete = "off";
    this.input.spellcheck = false;
    const help = h("div", { className: "chat-help", text: CHAT_HELP });
    this.root = h("div", { className: "chat", id: "chat" }, this.log, h("div", { className: "chat-line" }, this.input), help);
    parent.appendChild(this.root);
    this.input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        const line = this.input.value;
        this.input.value = "";
        this.input.blur();
        if (line.trim()) send(line);
      } else if (e.key === "Escape") {
        e.preventDefault();
        this.input.value = "";
        this.input.blur();
      } else if (e.key === "PageUp" || e.key === "PageDown") {
        e.preventDefault();
        this.page(e.key === "PageUp" ? -1 : 1);
      }
      e.stopPropagation();
    });
    this.input.addEventListener("focus", () => onFocusChange(true));
    this.input.addEventListener("blur", () => onFocusChange(false));
  }

  /** Starts typing, optionally with some text already in (e.g. "/"). */
  focus(initial = ""): void {
    this.input.value = initial;
    this.input.focus();
  }

  get typing(): boolean {
    return document.activeElement === this.input;
  }

  page(dir: -1 | 1): void {
    this.log.scrollBy({ top: dir * (this.log.clientHeight - 20) });
  }

  /** Adds a line (or several, split at newlines). */
  add(text: string, kind: LineKind): void {
    const atBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 30;
    for (const line of text.split("\n")) {
      const d = h("div", { className: `line ${kind}`, text: line });
      this.log.appendChild(d);
      this.recent.push(line);
    }
    while (this.log.childElementCount > CHAT_KEEP) this.log.firstElementChild?.remove();
    if (this.recent.length > CHAT_KEEP) this.recent.splice(0, this.recent.length - CHAT_KEEP);
    if (atBottom) this.log.scrollTop = this.log.scrollHeight;
  }

  /** The last `n` lines, oldest first. */
  last(n: number): string[] {
    return this.recent.slice(-n);
  }

  clear(): void {
    this.log.replaceChildren();
    this.recent.length = 0;
  }
}

export type LinkLevel = "good" | "poor" | "bad" | "down";

export class Hud {
  readonly root: HTMLDivElement;
  private readonly zone: HTMLDivElement;
  private readonly linkDot: HTMLDivElement;
  private readonly linkText: HTMLDivElement;
  private readonly banner: HTMLDivElement;
  private readonly bannerText: HTMLSpanElement;
  private readonly bannerButton: HTMLButtonElement;
  private readonly notice: HTMLDivElement;
  readonly overlay: HTMLPreElement;
  private bannerAction: (() => void) | null = null;

  constructor(parent: HTMLElement) {
    this.zone = h("div", { className: "zone-name", id: "zone-name" });
    this.linkDot = h("div", { className: "link-dot good" });
    this.linkText = h("div", { className: "link-text" });
    this.bannerText = h("span");
    this.bannerButton = h("button", { className: "secondary" });
    this.bannerButton.type = "button";
    this.bannerButton.addEventListener("click", () => this.bannerAction?.());
    this.banner = h("div", { className: "banner", id: "banner" }, this.bannerText, this.bannerButton);
    this.banner.hidden = true;
    this.notice = h("div", { className: "notice", id: "notice" });
    this.notice.hidden = true;
    this.overlay = h("pre", { className: "overlay", id: "debug-overlay" });
    this.overlay.hidden = true;
    this.root = h(
      "div",
      { className: "hud", id: "hud" },
      this.zone,
      h("div", { className: "link" }, this.linkText, this.linkDot),
      this.banner,
      this.notice,
      this.overlay,
      h("div", { className: "crosshair" }),
    );
    parent.appendChild(this.root);
  }

  setZone(name: string): void {
    if (this.zone.textContent !== name) this.zone.textContent = name;
  }

  setLink(level: LinkLevel, text: string): void {
    this.linkDot.className = `link-dot ${level}`;
    if (this.linkText.textContent !== text) this.linkText.textContent = text;
    this.linkText.hidden = text === "";
  }

  /** The reconnect banner; `action` adds a button (e.g. "log in again"). */
  showBanner(text: string, action?: { label: string; run: () => void }): void {
    this.banner.hidden = false;
    this.bannerText.textContent = text;
    this.bannerButton.hidden = !action;
    this.bannerButton.textContent = action?.label ?? "";
    this.bannerAction = action?.run ?? null;
  }

  hideBanner(): void {
    this.banner.hidden = true;
    this.bannerAction = null;
  }

  /** A short notice in the middle of the top (a hand-off), or none. */
  setNotice(text: string | null): void {
    this.notice.hidden = text === null;
    if (text !== null && this.notice.textContent !== text) this.notice.textContent = text;
  }

  setOverlay(lines: string[] | null): void {
    this.overlay.hidden = lines === null;
    if (lines) {
      const text = lines.join("\n");
      if (this.overlay.textContent !== text) this.overlay.textContent = text;
    }
  }
}
