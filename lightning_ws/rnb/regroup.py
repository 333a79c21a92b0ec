"""Regroup step of R&B (arXiv 2505.00358, Sec. 3.1 and Algorithm 2): k-means domains from embeddings.

No Lightning import. Flow: embed training and evaluation examples (any embedder) -> k-means on the training embeddings
for each k of a grid (seeded, k-means++, several inits) -> score each k (silhouette on a subsample, or a user hook) ->
evaluation points go to the nearest training centroid -> domain ids, ``p_eval``, centroids and the per-k table.
Results persist as safetensors + JSON (no pickle).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_ws.errors import ConfigError, DataError
from lightning_ws.io import load_json, load_tensors, save_json, save_tensors
from lightning_ws.sentence_embeddings import encode_sentences, load_sentence_encoder, resolve_sentence_encoder_path

__all__ = ["MiniLMEmbedder", "TfidfSvdEmbedder", "RegroupResult", "SemanticRegrouper", "embed", "kmeans_fit", "assign_to_centroids"]

Embedder = Callable[[Sequence[str]], Any]
#: ``hook(k, train_domains, eval_domains) -> loss`` (lower is better) for the "train-and-evaluate" selection.
SelectionHook = Callable[[int, np.ndarray, np.ndarray], float]

_RESULT_VERSION = 1


class MiniLMEmbedder:
    """Mean-pooled sentence embeddings from a local transformers encoder (default: the shipped all-MiniLM-L6-v2).

    The paper (arXiv 2505.00358) embeds with ModernBERT-embed (768-d), which we do not ship; MiniLM (384-d) is the
    offline default. Mean pooling over non-padding tokens, then L2 normalisation (the sentence-transformers recipe
    of this model). Defaults the paper leaves open: no prompt prefix, the whole text, truncation at ``max_length``.

    Args:
        model_path: folder for ``transformers.AutoModel.from_pretrained``; ``None`` = the shipped MiniLM.
        batch_size: texts per forward pass.
        max_length: token truncation length.
        prefix: string prepended to every text (e.g. ``"clustering: "`` for nomic/ModernBERT-embed).
        normalize: L2-normalise embeddings.
        device: torch device for the encoder.
        progress: show a tqdm bar.
    """

    def __init__(self, model_path: str | Path | None = None, *, batch_size: int = 64, max_length: int = 128,
                 prefix: str = "", normalize: bool = True, device: str = "cpu", progress: bool = False) -> None:
        if int(batch_size) < 1 or int(max_length) < 2:
            raise ConfigError(f"batch_size must be >= 1 and max_length >= 2; got {batch_size}, {max_length}.")
        self.model_path = resolve_sentence_encoder_path(model_path)  # fails fast; the encoder loads lazily
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        self.prefix, self.normalize, self.device, self.progress = prefix, bool(normalize), device, bool(progress)
        self._model = None
        self._tok = None

    def _load(self) -> None:
        self._tok, self._model = load_sentence_encoder(self.model_path, device=self.device)

    @property
    def name(self) -> str:
        """Identifier recorded with regrouping results."""
        return f"minilm-meanpool:{Path(self.model_path).name}"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` -> ``(n, d)`` float32 array."""
        if self._model is None:
            self._load()
        return encode_sentences(self._tok, self._model, texts, batch_size=self.batch_size, max_length=self.max_length,
                                prefix=self.prefix, normalize=self.normalize, progress=self.progress).numpy()


class TfidfSvdEmbedder:
    """TF-IDF + truncated SVD embeddings, a cheap stand-in for R&B's neural embedder (arXiv 2505.00358; scikit-learn).

    Stateful: the vocabulary and SVD are fitted on the first texts it embeds (call it on the training texts first, as
    :class:`SemanticRegrouper` does) and reused for later calls. Rows are L2-normalised.

    Args:
        dim: SVD dimensions (clipped to the vocabulary size - 1).
        seed: SVD seed.
        max_features: vocabulary cap.
    """

    def __init__(self, dim: int = 64, *, seed: int = 0, max_features: int = 20_000) -> None:
        if int(dim) < 1:
            raise ConfigError(f"dim must be >= 1, got {dim}.")
        self.dim, self.seed, self.max_features = int(dim), int(seed), int(max_features)
        self._vec = None
        self._svd = None

    @property
    def name(self) -> str:
        """Identifier recorded with regrouping results."""
        return f"tfidf-svd{self.dim}"

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` -> ``(n, dim)`` float64 (fits on the first call)."""
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        if self._vec is None:
            self._vec = TfidfVectorizer(max_features=self.max_features, sublinear_tf=True)
            tf = self._vec.fit_transform(list(texts))
            dim = max(1, min(self.dim, tf.shape[1] - 1))
            self._svd = TruncatedSVD(n_components=dim, random_state=self.seed).fit(tf)
        else:
            tf = self._vec.transform(list(texts))
        z = self._svd.transform(tf)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def embed(data: Sequence[str] | np.ndarray | torch.Tensor, embedder: Embedder | None = None) -> np.ndarray:
    """Turn texts (through ``embedder``, default :class:`MiniLMEmbedder`) or a precomputed array into ``(n, d)`` float64.

    Step 1 of R&B's Regroup (arXiv 2505.00358); any callable ``texts -> (n, d)`` is accepted.

    Raises:
        DataError: empty input, wrong rank, or non-finite embeddings.
    """
    if isinstance(data, torch.Tensor):
        arr = data.detach().cpu().double().numpy()
    elif isinstance(data, np.ndarray) and data.dtype.kind in "fiu":
        arr = data.astype(np.float64)
    else:
        texts = list(data)
        if not texts:
            raise DataError("nothing to embed: the text list is empty.")
        if not all(isinstance(t, str) for t in texts):
            raise DataError("pass a list of strings (texts) or a numeric (n, d) array of precomputed embeddings.")
        arr = np.asarray((embedder or MiniLMEmbedder())(texts), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise DataError(f"embeddings must be a non-empty (n, d) array; got shape {arr.shape}.")
    if not np.isfinite(arr).all():
        raise DataError("embeddings contain NaN or inf; check the embedder or the precomputed array.")
    return arr


def kmeans_fit(x: np.ndarray, k: int, *, seed: int = 0, n_init: int = 3, max_iter: int = 300) -> tuple[np.ndarray, np.ndarray, float]:
    """Seeded k-means with k-means++ initialisation and ``n_init`` restarts (scikit-learn's Lloyd); R&B step 2.

    arXiv 2505.00358 does not state the k-means variant; defaults here: k-means++, ``n_init=3``, 300 iterations.

    Returns:
        ``(labels (n,), centroids (k, d), inertia)``.
    """
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=int(k), init="k-means++", n_init=int(n_init), max_iter=int(max_iter), random_state=int(seed))
    labels = km.fit_predict(x)
    return labels.astype(np.int64), km.cluster_centers_.astype(np.float64), float(km.inertia_)


def assign_to_centroids(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (Euclidean) for every row of ``x`` (R&B's rule for evaluation points).

    arXiv 2505.00358, Appendix B.1.3: evaluation points are mapped to training clusters, never clustered alone.
    """
    x = np.asarray(x, dtype=np.float64)
    c = np.asarray(centroids, dtype=np.float64)
    if x.shape[1] != c.shape[1]:
        raise DataError(f"points have dimension {x.shape[1]} but centroids {c.shape[1]}; embed both with the same "
                        f"embedder.")
    d2 = (x * x).sum(1, keepdims=True) - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return d2.argmin(1).astype(np.int64)


@dataclass
class RegroupResult:
    """Output of :class:`SemanticRegrouper` (R&B, arXiv 2505.00358).

    Attributes:
        k: the chosen number of domains.
        train_domains: ``(n_train,)`` int64 domain per training example.
        eval_domains: ``(n_eval,)`` int64 domain per evaluation example (nearest training centroid).
        p_eval: ``(k,)`` fraction of evaluation points per domain.
        centroids: ``(k, d)`` training centroids.
        table: one dict per k of the grid: ``k``, ``silhouette`` (or ``None``), ``hook_loss`` (or ``None``),
            ``inertia``, ``min_cluster_size``, ``eval_domains_covered``.
        metadata: free-form strings/numbers (embedder name, seed, selection rule, ...); when fitted on texts,
            ``data_hash`` = :func:`lightning_ws.rnb.data.texts_fingerprint` of the train and eval texts, which
            :class:`~lightning_ws.datamodules.rnb.MixtureDataModule` checks before using the domains.
    """

    k: int
    train_domains: np.ndarray
    eval_domains: np.ndarray
    p_eval: np.ndarray
    centroids: np.ndarray
    table: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def train_sizes(self) -> np.ndarray:
        """``(k,)`` number of training examples per domain."""
        return np.bincount(self.train_domains, minlength=self.k)

    def save(self, folder: str | Path) -> Path:
        """Write ``arrays.safetensors`` and ``result.json`` into ``folder`` (atomic; no pickle). Returns the folder."""
        folder = Path(folder)
        save_tensors(folder / "arrays.safetensors", {
            "train_domains": torch.as_tensor(self.train_domains, dtype=torch.int64),
            "eval_domains": torch.as_tensor(self.eval_domains, dtype=torch.int64),
            "p_eval": torch.as_tensor(self.p_eval, dtype=torch.float64),
            "centroids": torch.as_tensor(self.centroids, dtype=torch.float32),
        }, metadata={"version": str(_RESULT_VERSION)})
        save_json(folder / "result.json", {"version": _RESULT_VERSION, "k": int(self.k), "table": self.table,
                                           "p_eval": [float(v) for v in self.p_eval],
                                           "train_sizes": [int(v) for v in self.train_sizes],
                                           "metadata": self.metadata})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> RegroupResult:
        """Load a folder written by :meth:`save`.

        Raises:
            DataFileNotFoundError: missing files.
            DataError: inconsistent or newer-version content.
        """
        folder = Path(folder)
        meta = load_json(folder / "result.json")
        arrays, _ = load_tensors(folder / "arrays.safetensors")
        if int(meta.get("version", 0)) > _RESULT_VERSION:
            raise DataError(f"{folder}: regroup result version {meta.get('version')} is newer than this code.")
        res = cls(k=int(meta["k"]), train_domains=arrays["train_domains"].numpy(),
                  eval_domains=arrays["eval_domains"].numpy(), p_eval=arrays["p_eval"].numpy(),
                  centroids=arrays["centroids"].double().numpy(), table=list(meta.get("table", [])),
                  metadata=dict(meta.get("metadata", {})))
        if res.centroids.shape[0] != res.k or res.p_eval.shape != (res.k,):
            raise DataError(f"{folder}: k={res.k} but centroids {res.centroids.shape} / p_eval {res.p_eval.shape}.")
        return res


class SemanticRegrouper:
    """R&B's Regroup (arXiv 2505.00358): k-means domains over example embeddings, k chosen on a grid.

    Defaults for what the paper leaves open: MiniLM mean-pooled embeddings (the paper: ModernBERT-embed), no prompt
    prefix, k-means++ with ``n_init=3`` and a fixed seed, silhouette (Euclidean) on a seeded subsample of at most
    ``silhouette_sample_size`` training points (silhouette is O(n^2)), ties broken toward the smaller k. Evaluation
    points are assigned to the nearest training centroid (Appendix B.1.3), never clustered themselves.

    Args:
        k_grid: candidate numbers of domains (each ``>= 2``; silhouette is undefined for k = 1).
        selection: ``"silhouette"`` (Algorithm 2, maximise) or a hook ``hook(k, train_domains, eval_domains) -> loss``
            (minimise; e.g. train with stratified mixing over the k clusters and return the eval loss).
        embedder: callable ``texts -> (n, d)``; ``None`` = :class:`MiniLMEmbedder`. Ignored for precomputed arrays.
        seed: seed of k-means and of the silhouette subsample.
        n_init: k-means restarts per k (``>= 1``; the spec asks for ``>= 3``).
        silhouette_sample_size: subsample size for the silhouette score.
        progress: show a tqdm bar over the grid.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> x = np.concatenate([rng.normal(c, 0.1, size=(30, 2)) for c in (0.0, 5.0)])
        >>> res = SemanticRegrouper([2, 3], progress=False).fit(x, x[:10])
        >>> res.k, sorted(res.p_eval.tolist())
        (2, [0.0, 1.0])
    """

    def __init__(self, k_grid: Sequence[int] = (2, 4, 8, 16), *, selection: str | SelectionHook = "silhouette",
                 embedder: Embedder | None = None, seed: int = 0, n_init: int = 3,
                 silhouette_sample_size: int = 20_000, progress: bool = True) -> None:
        grid = sorted({int(k) for k in k_grid})
        if not grid or grid[0] < 2:
            raise ConfigError(f"k_grid must be a non-empty list of integers >= 2; got {list(k_grid)}.")
        if not (selection == "silhouette" or callable(selection)):
            raise ConfigError(f"selection must be 'silhouette' or a callable hook(k, train_domains, eval_domains) -> "
                              f"loss; got {selection!r}.")
        if int(n_init) < 1 or int(silhouette_sample_size) < 2:
            raise ConfigError(f"n_init must be >= 1 and silhouette_sample_size >= 2; got {n_init}, "
                              f"{silhouette_sample_size}.")
        self.k_grid, self.selection, self.embedder = grid, selection, embedder
        self.seed, self.n_init = int(seed), int(n_init)
        self.silhouette_sample_size, self.progress = int(silhouette_sample_size), bool(progress)

    def _silhouette(self, x: np.ndarray, labels: np.ndarray) -> float:
        from sklearn.metrics import silhouette_score

        if len(np.unique(labels)) < 2:
            return -1.0
        n = x.shape[0]
        if n > self.silhouette_sample_size:
            rng = np.random.default_rng(self.seed)
            idx = rng.choice(n, size=self.silhouette_sample_size, replace=False)
            x, labels = x[idx], labels[idx]
            if len(np.unique(labels)) < 2:
                return -1.0
        return float(silhouette_score(x, labels))

    def fit(self, train: Sequence[str] | np.ndarray | torch.Tensor,
            eval: Sequence[str] | np.ndarray | torch.Tensor) -> RegroupResult:  # noqa: A002
        """Regroup ``train`` and map ``eval`` onto the training clusters.

        Args:
            train: training texts, or a precomputed ``(n_train, d)`` embedding array.
            eval: evaluation texts, or a precomputed ``(n_eval, d)`` array (same embedder).

        Returns:
            The :class:`RegroupResult` of the selected k.

        Raises:
            DataError: fewer training points than the largest k, or mismatched embedding widths.
        """
        from tqdm.auto import tqdm

        def _is_array(v: Any) -> bool:
            return isinstance(v, torch.Tensor) or (isinstance(v, np.ndarray) and v.dtype.kind in "fiu")

        data_hash = None
        if not _is_array(train) and not _is_array(eval):
            from lightning_ws.rnb.data import texts_fingerprint

            train, eval = list(train), list(eval)  # noqa: A001
            data_hash = texts_fingerprint(train, eval)
        emb = self.embedder
        if emb is None and not (_is_array(train) and _is_array(eval)):
            emb = MiniLMEmbedder(progress=self.progress)
        xt = embed(train, emb)
        xe = embed(eval, emb)
        if xe.shape[1] != xt.shape[1]:
            raise DataError(f"train embeddings are {xt.shape[1]}-d but eval embeddings {xe.shape[1]}-d.")
        grid = [k for k in self.k_grid if k < xt.shape[0]]
        if not grid:
            raise DataError(f"need more training points ({xt.shape[0]}) than the smallest k ({self.k_grid[0]}).")
        fits, table = {}, []
        for k in tqdm(grid, desc="regroup k-means", disable=not self.progress):
            labels, cents, inertia = kmeans_fit(xt, k, seed=self.seed, n_init=self.n_init)
            ev = assign_to_centroids(xe, cents)
            row: dict[str, Any] = {"k": k, "inertia": inertia, "min_cluster_size": int(np.bincount(labels, minlength=k).min()),
                                   "eval_domains_covered": int(len(np.unique(ev))), "silhouette": None, "hook_loss": None}
            if self.selection == "silhouette":
                row["silhouette"] = self._silhouette(xt, labels)
            else:
                loss = float(self.selection(k, labels, ev))
                if not math.isfinite(loss):
                    raise DataError(f"selection hook returned a non-finite loss ({loss}) for k={k}.")
                row["hook_loss"] = loss
            fits[k] = (labels, cents, ev)
            table.append(row)
        if self.selection == "silhouette":
            best = max(table, key=lambda r: (r["silhouette"], -r["k"]))
        else:
            best = min(table, key=lambda r: (r["hook_loss"], r["k"]))
        k = int(best["k"])
        labels, cents, ev = fits[k]
        p_eval = np.bincount(ev, minlength=k).astype(np.float64) / len(ev)
        emb_name = "precomputed" if emb is None else (getattr(emb, "name", None) or type(emb).__name__)
        meta = {"embedder": str(emb_name), "seed": self.seed, "n_init": self.n_init,
                "selection": "silhouette" if self.selection == "silhouette" else "hook",
                "silhouette_sample_size": self.silhouette_sample_size, "n_train": int(xt.shape[0]),
                "n_eval": int(xe.shape[0]), "dim": int(xt.shape[1]), "paper": "arXiv 2505.00358"}
        if data_hash is not None:
            meta["data_hash"] = data_hash  # ties the result to these rows in this order (MixtureDataModule checks it)
        return RegroupResult(k=k, train_domains=labels, eval_domains=ev, p_eval=p_eval, centroids=cents,
                             table=table, metadata=meta)
