"""Losses: CE, AAM softmax, pair BCE, CTC speaker loss, loss gate and label correction, L2-SP."""
