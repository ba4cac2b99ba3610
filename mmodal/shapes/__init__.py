"""The Shapes world: its semantics (the single source of truth), scene sampling, rendering and speech."""
