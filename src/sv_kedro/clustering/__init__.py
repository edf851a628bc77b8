"""Clustering: k-means (faiss), agglomerative clustering of centroids, NMI and purity."""
