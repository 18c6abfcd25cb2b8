//! Assets for Tessera: content-addressed files over HTTP (`tessera asset`).
