"""Speaker models: SSL encoders, pooling, MHFA, x-vector, ECAPA-TDNN, heads."""
