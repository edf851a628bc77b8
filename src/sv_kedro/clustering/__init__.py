"""Clustering: PCA whitening, k-means (faiss), agglomerative clustering, NMI and purity."""
