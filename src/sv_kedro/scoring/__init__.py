"""Scoring back-ends and verification metrics."""
