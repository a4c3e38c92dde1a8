"""A realistic synthetic gallery: new items sampled from a model fitted to the real embeddings, not noisy copies.

:class:`EmbeddingMixture` fits the real vectors (e.g. RSICD and UCM train + test images encoded by the trained
model): a PCA to ``pca_dim`` dimensions, k-means clusters in that space, each cluster with its own full covariance
(shrunk toward the pooled within-cluster covariance, more for small clusters) and its own isotropic variance in the
remaining dimensions; a sample draws a cluster by its share of the real items, a point from that cluster's
Gaussian, and rescales it to a norm drawn from the real norms. So neighbourhoods keep the real data's cluster
structure and spread, and no sampled item is a perturbed copy of a real one.

:class:`SyntheticGallery` is a gallery of ``n`` items whose first ``n0`` rows are the real seed vectors and the rest
samples (deterministic per block, so a smaller gallery is a prefix of a larger one), with the same ``get(n)``
interface as the tiled :class:`~itr_lib.efficiency.gallery.GrowingGallery`.

:func:`nn_distance_check` is the evidence that the sample looks like the data: the distance from each held-out
real item to its nearest neighbour among the real items the model was fitted on, against the same distance for
as many synthetic items (and tiled items, for comparison), with the two-sample Kolmogorov-Smirnov statistic.
"""
from __future__ import annotations

import logging

import faiss
import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

SYNTHETIC_GALLERY_METHOD = ("synthetic: rows < n0 are the real vectors, further rows sampled from a mixture fitted to "
                            "{n_fit} real image embeddings ({fit_source}): PCA {pca_dim}, {k} k-means clusters with "
                            "their own covariance, residual variance and real norms (seed {seed})")


class EmbeddingMixture:
    """A Gaussian mixture in a PCA space fitted to real embeddings ``x`` (N, d); see the module docstring.

    ``n_clusters``: default ``N // 50`` clamped to [1, 256]; ``pca_dim``: default ``min(256, d)`` (on
    mixture-shaped test data, fewer dimensions than the data's own made the sample's neighbour distances drift);
    ``niter``: k-means iterations; ``seed``: k-means seed."""

    def __init__(self, x: np.ndarray, n_clusters: int | None = None, pca_dim: int | None = None, niter: int = 20,
                 seed: int = 0):
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or len(x) < 4:
            raise ValueError(f"EmbeddingMixture needs an (N >= 4, d) array of real embeddings, got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("EmbeddingMixture: the real embeddings contain NaN or inf; re-encode them")
        n, d = x.shape
        self.d = d
        self.p = int(min(pca_dim or 256, d, n - 1))
        self.k = int(max(1, min(n_clusters or n // 50, 256, n // 4)))
        self.seed = seed
        self.mean = x.mean(0)
        xc = x - self.mean
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        self.basis = vt[:self.p].T                                   # (d, p)
        z = xc @ self.basis
        resid2 = np.maximum((xc ** 2).sum(1) - (z ** 2).sum(1), 0.0)  # squared norm outside the PCA space
        km = faiss.Kmeans(self.p, self.k, niter=niter, seed=seed, verbose=False)
        km.train(np.ascontiguousarray(z, dtype=np.float32))
        labels = km.index.search(np.ascontiguousarray(z, dtype=np.float32), 1)[1][:, 0]
        counts = np.bincount(labels, minlength=self.k)
        keep = counts >= 2
        self.weights = counts[keep] / counts[keep].sum()
        pooled = np.zeros((self.p, self.p))
        means, covs, resid = [], [], []
        for c in np.flatnonzero(keep):
            zc = z[labels == c]
            means.append(zc.mean(0))
            covs.append(np.cov(zc, rowvar=False).reshape(self.p, self.p))
            resid.append(resid2[labels == c].mean() / max(1, d - self.p))
            pooled += covs[-1] * (len(zc) - 1)
        pooled /= max(1, (counts[keep] - 1).sum())
        self.means = np.asarray(means)
        self.chol = []
        for c, cov in enumerate(covs):
            m = counts[keep][c]
            a = self.p / (m + self.p)                                # shrinkage: more for small clusters
            s = (1 - a) * cov + a * pooled
            s += np.eye(self.p) * 1e-9 * max(np.trace(s) / self.p, 1e-12)
            self.chol.append(np.linalg.cholesky(s))
        self.resid_std = np.sqrt(np.asarray(resid))
        self.norms = np.linalg.norm(x, axis=1)
        self.n_fit = n

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` float32 rows drawn from the mixture (deterministic in ``seed``)."""
        rng = np.random.default_rng(seed)
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        out = np.empty((n, self.d), dtype=np.float32)
        basis = self.basis.astype(np.float32)
        for c in np.unique(comp):
            idx = np.flatnonzero(comp == c)
            z = (self.means[c] + rng.standard_normal((len(idx), self.p)) @ self.chol[c].T).astype(np.float32)
            x = self.mean.astype(np.float32) + z @ basis.T
            if self.p < self.d:
                e = rng.standard_normal((len(idx), self.d), dtype=np.float32) * np.float32(self.resid_std[c])
                x += e - (e @ basis) @ basis.T                      # only outside the PCA space
            out[idx] = x
        target = rng.choice(self.norms, size=n).astype(np.float32)
        out *= (target / np.maximum(np.linalg.norm(out, axis=1), 1e-12))[:, None]
        return out

    def describe(self, fit_source: str = "real embeddings") -> str:
        return SYNTHETIC_GALLERY_METHOD.format(n_fit=self.n_fit, fit_source=fit_source, pca_dim=self.p,
                                               k=len(self.weights), seed=self.seed)


class SyntheticGallery:
    """Rows ``< n0``: the real seed vectors ``base``; further rows: samples of ``mixture`` in blocks of ``block``,
    each block seeded by ``(seed, block start)``, so ``get(n)`` of a smaller size is a prefix of a larger one."""

    def __init__(self, base: np.ndarray, mixture: EmbeddingMixture, seed: int = 0, block: int = 65536):
        self.base = np.ascontiguousarray(base, dtype=np.float32)
        if self.base.shape[1] != mixture.d:
            raise ValueError(f"seed vectors have dim {self.base.shape[1]}, the mixture {mixture.d}: fit the mixture "
                             f"on the same model's embeddings")
        self.mixture, self.seed, self.block = mixture, seed, block
        self._arr = self.base.copy()
        self._last: tuple[int, np.ndarray] | None = None

    def get(self, n: int) -> np.ndarray:
        if n > len(self._arr):
            n0 = len(self.base)
            out = np.empty((n, self.base.shape[1]), dtype=np.float32)
            out[:len(self._arr)] = self._arr
            start = n0 + ((len(self._arr) - n0) // self.block) * self.block  # regenerate a partial last block
            for a in range(start, n, self.block):
                b = min(a + self.block, n)
                out[a:b] = self._block(a)[:b - a]
            self._arr = out
        return self._arr[:n]

    def _block(self, a: int) -> np.ndarray:
        """The full sampled block starting at row ``a`` (``a = n0 + j * block``); the last one drawn is kept, so
        streamed chunks that straddle a block boundary draw each block once."""
        if self._last is None or self._last[0] != a:
            self._last = (a, self.mixture.sample(self.block, seed=hash((self.seed, a)) % 2 ** 32))
        return self._last[1]

    def rows(self, a: int, b: int) -> np.ndarray:
        """Rows ``[a, b)`` of the gallery, equal to ``get(b)[a:b]`` but without holding rows ``< a`` (only the
        sample blocks overlapping ``[a, b)`` are drawn; rows already held by ``get`` are copied)."""
        if not 0 <= a <= b:
            raise ValueError(f"rows({a}, {b}): need 0 <= a <= b")
        n0, d = len(self.base), self.base.shape[1]
        if b <= len(self._arr):
            return self._arr[a:b].copy()
        out = np.empty((b - a, d), dtype=np.float32)
        held = min(b, len(self._arr))
        if a < held:
            out[:held - a] = self._arr[a:held]
        lo = max(a, held)
        first = n0 + ((lo - n0) // self.block) * self.block
        for s in range(first, b, self.block):
            blk = self._block(s)
            x0, x1 = max(s, lo), min(s + self.block, b)
            out[x0 - a:x1 - a] = blk[x0 - s:x1 - s]
        return out

    def chunks(self, n: int, chunk: int = 65536, start: int = 0):
        """Rows ``[start, n)`` as ``(first row, array)`` pieces of at most ``chunk`` rows (:meth:`rows`): the
        gallery streamed, for sizes that cannot be held in memory."""
        for a in range(start, n, chunk):
            yield a, self.rows(a, min(a + chunk, n))


def nn_distances(x: np.ndarray, ref: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Euclidean distance from each row of ``x`` to its nearest row of ``ref`` (the second nearest when ``x`` is
    ``ref`` and ``exclude_self``), exact (faiss L2)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    ref = np.ascontiguousarray(ref, dtype=np.float32)
    d2 = faiss.knn(x, ref, 2 if exclude_self else 1, metric=faiss.METRIC_L2)[0]
    return np.sqrt(np.maximum(d2[:, -1], 0.0)).astype(np.float64)


def nn_distance_check(real: np.ndarray, *, heldout_frac: float = 0.2, seed: int = 0, noise: float = 0.25,
                      mixture_kw: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Does a synthetic sample look like the real data at the scale of nearest neighbours?

    The real vectors are split at random into a fit part and a held-out part (``heldout_frac``). A mixture is
    fitted on the fit part only; as many synthetic items as held-out ones are sampled, and as many tiled items
    (:func:`~itr_lib.efficiency.gallery.grow_gallery` copies of fit rows with relative noise ``noise``). For each
    sample, the distance of every item to its nearest fit item ("to_real"), and to its nearest other item of its own
    sample ("within"). Returns (distances: one row per item with ``sample``, ``kind``, ``distance``; statistics:
    one row per (sample, kind) with the two-sample KS statistic and p-value against the held-out real items)."""
    from scipy.stats import ks_2samp

    from .gallery import grow_gallery
    real = np.asarray(real, dtype=np.float32)
    if real.ndim != 2 or len(real) < 10:
        raise ValueError(f"nn_distance_check needs at least 10 real vectors (a fit part and a held-out part), got "
                         f"shape {real.shape}; fit on more splits (FIT_DATASETS / FIT_SPLITS in 04_efficiency)")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(real))
    n_out = max(2, int(round(heldout_frac * len(real))))
    held, fit = real[perm[:n_out]], real[perm[n_out:]]
    mix = EmbeddingMixture(fit, seed=seed, **(mixture_kw or {}))
    samples = {"real (held out)": held, "synthetic": mix.sample(n_out, seed=seed + 1)}
    tiled = grow_gallery(fit, len(fit) + n_out, noise=noise, seed=seed)[len(fit):]
    samples["tiled"] = tiled
    rows, stats = [], []
    dist = {}
    for name, s in samples.items():
        dist[(name, "to_real")] = nn_distances(s, fit)
        dist[(name, "within")] = nn_distances(s, s, exclude_self=True)
        for kind in ("to_real", "within"):
            rows.append(pd.DataFrame({"sample": name, "kind": kind, "distance": dist[(name, kind)]}))
    for name in samples:
        if name == "real (held out)":
            continue
        for kind in ("to_real", "within"):
            r = ks_2samp(dist[(name, kind)], dist[("real (held out)", kind)])
            stats.append({"sample": name, "kind": kind, "ks_statistic": float(r.statistic),
                          "ks_pvalue": float(r.pvalue),
                          "median_distance": float(np.median(dist[(name, kind)])),
                          "median_distance_real": float(np.median(dist[("real (held out)", kind)])),
                          "n": n_out, "n_fit": len(fit), "model": mix.describe()})
    return pd.concat(rows, ignore_index=True), pd.DataFrame(stats)
