"""Pseudo-label clustering (k-means -> AHC of centroids) at VoxCeleb2 scale, and against the
original recipe's scikit-learn algorithm.

    python benchmarks/bench_clustering.py                   # both measurements
    python benchmarks/bench_clustering.py --only recipe     # or voxceleb2
    python benchmarks/bench_clustering.py --only voxceleb2 --whiten   # as base's pipeline
    python benchmarks/bench_clustering.py --n 200000 --speakers 1100 --k1 10000 --k2 1400

voxceleb2  1,092,009 x 256 float32 embeddings of 5,994 synthetic speakers, k-means to 50,000
           then AHC to 7,500 (the paper's sizes) with ``--threads`` (2) faiss threads, in a
           child process whose peak RSS (``ru_maxrss``) is reported after generating the data
           and at the end. Goals: <= 15 min wall, <= 12 GB peak RSS. Prints NMI/purity against
           the generating speakers, seconds per stage, and the k-means quality check: on a
           random sample, how often the two-level assignment is the exact nearest centroid and
           the sample's inertia relative to exact assignment.
recipe     50,000 x 256 to 2,000 then 500. Baseline ("original recipe"): scikit-learn
           ``KMeans`` (its defaults: k-means++, up to 300 Lloyd iterations) then dense
           ``AgglomerativeClustering`` (its defaults: Ward) of the centroids. Also exact flat
           faiss k-means through our pipeline, the reference for the two-level approximation.
           Goal: ours >= 10x faster with NMI within 0.01.

Synthetic speakers: unit-norm centres drawn from an anisotropic Gaussian (a decaying spectrum,
so speakers crowd in a low-dimensional subspace as real ones do and neighbours overlap), about
24 sessions ("videos") per speaker offset from the centre, utterance noise on top, rows
L2-normalised; utterance counts per speaker are log-normal. Within-speaker cosine ~0.6,
nearest-speaker centres cosine ~0.7: NMI is informative, not 1.0.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from sv_kedro.clustering.health import cluster_health
from sv_kedro.clustering.kmeans import faiss_threads
from sv_kedro.clustering.pseudo_labels import cluster_pseudo_labels, clustering_vectors

VOXCELEB2_UTTERANCES = 1_092_009
VOXCELEB2_SPEAKERS = 5_994
DIM = 256


def synthetic_speaker_embeddings(
    n: int,
    n_speakers: int,
    dim: int = DIM,
    sessions_per_speaker: float = 24.0,
    session_noise: float = 0.04,
    utterance_noise: float = 0.045,
    spectrum_decay: float = 0.5,
    seed: int = 0,
    chunk: int = 131_072,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``[n, dim]`` float32 (unit rows) and speaker ids ``[n]``, built in chunks so
    the only large allocation is the output itself."""
    rng = np.random.default_rng(seed)
    scale = np.arange(1, dim + 1, dtype=np.float64) ** -spectrum_decay
    centres = rng.normal(size=(n_speakers, dim)) * scale
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    counts = rng.lognormal(mean=0.0, sigma=0.6, size=n_speakers)
    counts = np.maximum(1, np.floor(counts / counts.sum() * n)).astype(np.int64)
    counts[np.argsort(-counts)[: n - counts.sum()]] += 1  # exact total n
    speakers = np.repeat(np.arange(n_speakers), counts)
    rng.shuffle(speakers)

    n_sessions = np.minimum(counts, 1 + rng.poisson(sessions_per_speaker - 1, n_speakers))
    session_start = np.concatenate([[0], np.cumsum(n_sessions)])
    # Within-speaker variation shares the speakers' spectrum (real embeddings vary most along
    # the directions that also separate speakers): this is what makes neighbours overlap.
    noise_shape = (scale / np.sqrt((scale**2).mean())).astype(np.float32)
    session_offsets = session_noise * noise_shape * rng.normal(size=(session_start[-1], dim))
    session_offsets = session_offsets.astype(np.float32)
    vectors = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        spk = speakers[start : start + chunk]
        session = session_start[spk] + rng.integers(0, n_sessions[spk])
        block = centres[spk].astype(np.float32) + session_offsets[session]
        noise = rng.standard_normal(size=block.shape, dtype=np.float32)
        noise *= utterance_noise * noise_shape
        block += noise
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[start : start + chunk] = block
    return vectors, speakers


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def data_statistics(vectors: np.ndarray, speakers: np.ndarray, seed: int = 1) -> dict[str, float]:
    """Mean cosine of same-speaker and different-speaker pairs (a sample of 20,000 each)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(speakers, kind="stable")
    starts = np.searchsorted(speakers[order], np.arange(speakers.max() + 2))
    first = rng.integers(0, len(speakers), 20_000)
    spk = speakers[first]
    size = starts[spk + 1] - starts[spk]
    same = order[starts[spk] + rng.integers(0, size)]
    other = rng.integers(0, len(speakers), 20_000)
    keep = speakers[other] != spk
    return {
        "same_speaker_cosine": float((vectors[first] * vectors[same]).sum(1).mean()),
        "other_speaker_cosine": float((vectors[first[keep]] * vectors[other[keep]]).sum(1).mean()),
    }


def kmeans_quality(
    vectors: np.ndarray, centroids: np.ndarray, assignments: np.ndarray, sample: int
) -> dict[str, float]:
    """On a random sample: share of points whose assigned centroid is the exact nearest one,
    and the sample's inertia under the given assignment relative to exact assignment."""
    rng = np.random.default_rng(2)
    rows = np.sort(rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False))
    points = vectors[rows]
    exact_dist, exact = faiss.knn(points, centroids, 1)
    given = ((points - centroids[assignments[rows]]) ** 2).sum(axis=1)
    return {
        "exact_assignment_agreement": float((exact[:, 0] == assignments[rows]).mean()),
        "inertia_vs_exact_assignment": float(given.sum() / max(exact_dist.sum(), 1e-12)),
    }


def run_voxceleb2(args: argparse.Namespace) -> dict[str, float]:
    started = time.perf_counter()
    vectors, speakers = synthetic_speaker_embeddings(args.n, args.speakers, args.dim)
    generated = time.perf_counter()
    out: dict[str, float] = {
        "generate_s": generated - started,
        "peak_rss_after_generation_gb": peak_rss_gb(),
        "data_gb": vectors.nbytes / 1024**3,
        **data_statistics(vectors, speakers),
    }
    print(f"generated {vectors.shape} in {out['generate_s']:.1f} s", file=sys.stderr, flush=True)
    if args.whiten:
        # Done here rather than by cluster_pseudo_labels(whiten=True), so that the k-means
        # check below compares centroids with the vectors k-means actually saw.
        vectors = clustering_vectors(vectors, spherical=True, whiten=True)
    whitened = time.perf_counter()
    result = cluster_pseudo_labels(
        vectors, args.k1, args.k2, seed=0, threads=args.threads, n_iter=args.n_iter
    )
    clustered = time.perf_counter()
    out.update(
        {
            "whiten_s": whitened - generated,
            "kmeans_s": result.timings["kmeans_s"],
            "ahc_s": result.timings["ahc_s"],
            "k2_search_s": result.timings.get("k2_search_s", 0.0),
            "pseudo_labels_total_s": clustered - generated,
            "peak_rss_gb": peak_rss_gb(),
            "kmeans_method": result.kmeans_method,  # type: ignore[dict-item]
            "nmi_kmeans": normalized_mutual_info_score(speakers, result.kmeans_labels),
        }
    )
    health = cluster_health(result.labels, speakers)
    out.update({key: health[key] for key in ("nmi", "purity", "inverse_purity", "n_clusters")})
    with faiss_threads(args.threads):
        out.update(kmeans_quality(vectors, result.centroids, result.kmeans_labels, args.sample))
    return out


def sklearn_recipe(
    vectors: np.ndarray, speakers: np.ndarray, args: argparse.Namespace
) -> dict[str, float]:
    from sklearn.cluster import AgglomerativeClustering, KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(args.threads):
        started = time.perf_counter()
        km = KMeans(n_clusters=args.recipe_k1, random_state=0).fit(vectors)
        mid = time.perf_counter()
        centroid_labels = AgglomerativeClustering(n_clusters=args.recipe_k2).fit_predict(
            km.cluster_centers_
        )
        done = time.perf_counter()
    return {
        "sklearn_kmeans_s": mid - started,
        "sklearn_kmeans_iterations": float(km.n_iter_),
        "sklearn_ahc_s": done - mid,
        "sklearn_total_s": done - started,
        "sklearn_nmi": normalized_mutual_info_score(speakers, centroid_labels[km.labels_]),
    }


def run_recipe(args: argparse.Namespace) -> dict[str, float]:
    vectors, speakers = synthetic_speaker_embeddings(
        args.recipe_n, args.recipe_speakers, args.dim, seed=1
    )
    out: dict[str, float] = {}
    if args.sklearn_seconds is not None:
        # A baseline measured earlier on the same (deterministic) data, to save ~20 minutes.
        out["sklearn_total_s"], out["sklearn_nmi"] = args.sklearn_seconds, args.sklearn_nmi
    else:
        out.update(sklearn_recipe(vectors, speakers, args))
    for name, assignment in (("ours", "auto"), ("ours_exact", "exact")):
        if name == "ours_exact" and args.skip_exact:
            continue
        started = time.perf_counter()
        result = cluster_pseudo_labels(
            vectors, args.recipe_k1, args.recipe_k2, assignment=assignment, threads=args.threads
        )
        out[f"{name}_total_s"] = time.perf_counter() - started
        out[f"{name}_kmeans_s"] = result.timings["kmeans_s"]
        out[f"{name}_method"] = result.kmeans_method  # type: ignore[assignment]
        out[f"{name}_kmeans_inertia"] = result.kmeans_inertia
        out[f"{name}_nmi"] = normalized_mutual_info_score(speakers, result.labels)
    out["speedup"] = out["sklearn_total_s"] / out["ours_total_s"]
    out["nmi_difference"] = out["ours_nmi"] - out["sklearn_nmi"]
    return out


def in_child(part: str, argv: list[str]) -> dict[str, float]:
    """Run one part in a fresh interpreter so its peak RSS is its own."""
    command = [sys.executable, __file__, "--child", part, *argv]
    # The child's progress goes to stderr (shown live); its last stdout line is the result.
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{part} child failed with exit code {completed.returncode}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def report_voxceleb2(out: dict[str, float], args: argparse.Namespace) -> None:
    k2 = "auto" if args.k2 == "auto" else f"{args.k2:,}"
    print(
        f"\n== VoxCeleb2 scale: {args.n:,} x {args.dim} -> k-means {args.k1:,} -> AHC "
        f"{k2} ({args.speakers:,} speakers, {args.threads} threads) =="
    )
    print(
        f"data: same-speaker cosine {out['same_speaker_cosine']:.3f}, other-speaker "
        f"{out['other_speaker_cosine']:.3f}; generated in {out['generate_s']:.1f} s, "
        f"{out['data_gb']:.2f} GB, RSS after generation "
        f"{out['peak_rss_after_generation_gb']:.2f} GB"
    )
    whitening = f"whitening: {out['whiten_s']:.1f} s; " if args.whiten else ""
    print(
        f"{whitening}k-means ({out['kmeans_method']}): {out['kmeans_s']:.1f} s; "
        f"AHC: {out['ahc_s']:.1f} s; "
        + (f"k2 search: {out['k2_search_s']:.1f} s; " if args.k2 == "auto" else "")
        + f"total {out['pseudo_labels_total_s']:.1f} s (goal <= 900 s)"
    )
    print(f"peak RSS {out['peak_rss_gb']:.2f} GB (goal <= 12 GB, includes the data)")
    print(
        f"NMI vs speakers: final {out['nmi']:.4f} (k-means stage {out['nmi_kmeans']:.4f}); "
        f"purity {out['purity']:.4f}, inverse purity {out['inverse_purity']:.4f}, "
        f"{out['n_clusters']:.0f} clusters"
    )
    print(
        f"k-means check on {args.sample:,} points: exact nearest centroid for "
        f"{100 * out['exact_assignment_agreement']:.2f}%, inertia x"
        f"{out['inertia_vs_exact_assignment']:.4f} of exact assignment"
    )


def report_recipe(out: dict[str, float], args: argparse.Namespace) -> None:
    print(
        f"\n== Original recipe: {args.recipe_n:,} x {args.dim} -> {args.recipe_k1:,} -> "
        f"{args.recipe_k2} ({args.recipe_speakers} speakers, {args.threads} threads) =="
    )
    if "sklearn_kmeans_s" in out:
        print(
            f"sklearn KMeans + AgglomerativeClustering(ward): {out['sklearn_total_s']:.1f} s "
            f"(k-means {out['sklearn_kmeans_s']:.1f} s, {out['sklearn_kmeans_iterations']:.0f} "
            f"iterations; AHC {out['sklearn_ahc_s']:.2f} s), NMI {out['sklearn_nmi']:.4f}"
        )
    else:
        print(
            f"sklearn KMeans + AgglomerativeClustering(ward): {out['sklearn_total_s']:.1f} s, "
            f"NMI {out['sklearn_nmi']:.4f} (given by --sklearn-seconds/--sklearn-nmi)"
        )
    print(
        f"ours ({out['ours_method']} k-means + kNN-graph ward): {out['ours_total_s']:.1f} s, "
        f"NMI {out['ours_nmi']:.4f}"
    )
    if "ours_exact_total_s" in out:
        print(
            f"ours with exact flat faiss k-means: {out['ours_exact_total_s']:.1f} s, NMI "
            f"{out['ours_exact_nmi']:.4f}; two-level k-means inertia x"
            f"{out['ours_kmeans_inertia'] / out['ours_exact_kmeans_inertia']:.4f} of exact"
        )
    print(
        f"speed-up {out['speedup']:.1f}x (goal >= 10x); NMI difference "
        f"{out['nmi_difference']:+.4f} (goal within 0.01)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["voxceleb2", "recipe"])
    parser.add_argument("--n", type=int, default=VOXCELEB2_UTTERANCES)
    parser.add_argument("--speakers", type=int, default=VOXCELEB2_SPEAKERS)
    parser.add_argument("--k1", type=int, default=50_000)
    parser.add_argument(
        "--k2",
        type=lambda value: value if value == "auto" else int(value),
        default=7_500,
        help="or auto: the count with the best cosine silhouette (clustering.k2: auto)",
    )
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--n-iter", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--whiten",
        action="store_true",
        help="voxceleb2: PCA-whiten before clustering, as the pipeline's clustering.whiten",
    )
    parser.add_argument("--sample", type=int, default=5_000, help="k-means quality sample")
    parser.add_argument("--recipe-n", type=int, default=50_000)
    parser.add_argument("--recipe-speakers", type=int, default=400)
    parser.add_argument("--recipe-k1", type=int, default=2_000)
    parser.add_argument("--recipe-k2", type=int, default=500)
    parser.add_argument("--skip-exact", action="store_true", help="recipe: skip exact k-means")
    parser.add_argument(
        "--sklearn-seconds", type=float, help="recipe: reuse a measured baseline time"
    )
    parser.add_argument("--sklearn-nmi", type=float, help="recipe: ... and its NMI")
    parser.add_argument("--child", choices=["voxceleb2", "recipe"], help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()

    if args.child:
        run = run_voxceleb2 if args.child == "voxceleb2" else run_recipe
        print(json.dumps(run(args)))
        return
    argv = [
        f"--{name.replace('_', '-')}={value}"
        for name, value in vars(args).items()
        if name not in ("only", "child", "skip_exact", "whiten") and value is not None
    ]
    argv += ["--skip-exact"] * args.skip_exact + ["--whiten"] * args.whiten
    if args.only in (None, "recipe"):
        report_recipe(in_child("recipe", argv), args)
    if args.only in (None, "voxceleb2"):
        report_voxceleb2(in_child("voxceleb2", argv), args)
    print("\n(measured on a shared 2-core machine loaded by other jobs; times are pessimistic)")


if __name__ == "__main__":
    main()
