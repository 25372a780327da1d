"""Integrations of ironmoe's ops into model libraries (optional dependencies)."""
