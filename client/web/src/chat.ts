// What the chat panel shows and what a typed line sends. Pure functions.

import type { ChatKind, ClientMsg } from "./proto/index";

/** The help line shown in the chat panel. */
export const CHAT_HELP =
  "Type to speak to those nearby. Start a line with / to run a command, as telnet players do: " +
  "/who, /look, /where, /map, /shout hi, /tell Bob hi, /channel join trade, /chat trade hi, /help, /quit.";

/** What a typed line sends: "/cmd args" runs the command "cmd args"
 * (ClientMsg::Command); anything else is speech (ClientMsg::Say). A blank
 * line sends nothing. */
export function lineToMessage(line: string): ClientMsg | null {
  const text = line.trim();
  if (text === "") return null;
  if (text.startsWith("/")) {
    const cmd = text.slice(1).trim();
    return cmd === "" ? null : { type: "Command", line: cmd };
  }
  return { type: "Say", text };
}

/** The line a text player reads when `name` speaks or emotes nearby
 * (`render_heard` in proto/src/msg.rs). */
export function renderHeard(name: string, text: string, emote: boolean): string {
  return emote ? `${name} ${text}` : `${name} says, "${text}"`;
}

/** A chat-service line as telnet shows it (`render_chat`). */
export function renderChat(kind: ChatKind, from: string, to: string | null, text: string, viewer: string): string {
  const same = (a: string, b: string) => a.toLowerCase() === b.toLowerCase();
  switch (kind.type) {
    case "Shout":
      return `${from} shouts, "${text}"`;
    case "Tell": {
      const t = to ?? "";
      if (same(t, viewer)) return `${from} tells you, "${text}"`;
      if (same(from, viewer)) return `You tell ${t}, "${text}"`;
      return `${from} tells ${t}, "${text}"`;
    }
    case "Channel":
      return `[${kind.name}] ${from}: ${text}`;
    case "System":
      return text;
  }
}

/** The class (colour) of a chat-panel line. */
export type LineKind = "say" | "emote" | "shout" | "tell" | "channel" | "system" | "text" | "error" | "own" | "info";

export function chatLineKind(kind: ChatKind): LineKind {
  switch (kind.type) {
    case "Shout":
      return "shout";
    case "Tell":
      return "tell";
    case "Channel":
      return "channel";
    case "System":
      return "system";
  }
}
