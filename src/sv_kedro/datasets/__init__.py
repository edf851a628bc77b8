"""Kedro datasets: audio, embeddings, checkpoints, trial lists (each with a kedro-viz preview)."""
