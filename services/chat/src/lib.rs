//! Chat for Tessera: channels, shouts and tells across routers (`tessera chat`).
