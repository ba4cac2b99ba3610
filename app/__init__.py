"""The Gradio web UI and HTTP API over mmodal and indexes."""
