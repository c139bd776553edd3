"""Metrics, tracing and audit: cross-cutting observation of the pipeline."""
