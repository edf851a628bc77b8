"""Audio: reading and decoding, resampling, the synthetic corpus, crops, augmentation, features."""
