"""The Shapes world: its scenes, the semantics of its texts (the single source of truth), sampling scenes, texts
and questions, people's wording, rendering and speech."""
