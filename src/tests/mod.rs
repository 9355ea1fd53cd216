//! Loom models of the engine's internals (`--cfg ssehub_loom`).
