// The QUIC session's version and close codes (docs/protocol.md, section 3).

/** Version of the client <-> router protocol (proto/src/lib.rs); the
 * router refuses a Hello with another one. */
export const PROTOCOL_VERSION = 2;

// QUIC application close codes of the router (router/src/quic.rs).
/** The session ended normally (Logout). */
export const CLOSE_NORMAL = 0;
/** The client broke the protocol (a malformed frame); the reason says how. */
export const CLOSE_PROTOCOL = 1;
/** The Hello named another protocol version. */
export const CLOSE_VERSION = 2;
/** The server is full; try again later. */
export const CLOSE_FULL = 3;
/** The router is stopping (restart, rolling update): the session is kept,
 * so log in again with ClientMsg Resume and the LoggedIn token. */
export const CLOSE_RESTART = 4;
/** Too many connections from this address. */
export const CLOSE_TOO_MANY = 5;
