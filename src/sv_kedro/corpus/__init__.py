"""Corpora: sources (synthetic, folder, VoxCeleb), manifests, validation, trial lists, splits."""
