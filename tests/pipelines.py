"""Pipelines used by the tests (loaded by workers through BATCHLINE_PIPELINES)."""
