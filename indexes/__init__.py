"""FAISS index building, search and maintenance, with a manifest and a metadata store (no torch)."""
