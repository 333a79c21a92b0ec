"""WNID-keyed WordNet noun hierarchy as a Loki label metric (arXiv 2307.12226, spec §4.1 and §9.1).

Reads WordNet 3.0's ``data.noun`` (Debian/Ubuntu: ``apt-get install wordnet-base`` puts it in
``/usr/share/wordnet/data.noun``; it is not shipped with lightning_ws).  Nodes are WNIDs ``"n%08d" % offset`` (the
ImageNet synset ids), edges are hypernym links (``@``) and, by default, instance-hypernym links (``@i``).  The
hierarchy is a DAG (some synsets have two hypernyms); distances are shortest paths with edge direction ignored.

The paper's reference code indexed its ImageNet tree by file order, not by WNID (spec §9.1); here classes are WNIDs.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from pathlib import Path

from lightning_ws.errors import DataError, DataFileNotFoundError
from lightning_ws.loki.metric_space import LabelMetric

__all__ = ["read_wordnet_nouns", "wordnet_metric", "DEFAULT_WORDNET_PATHS"]

DEFAULT_WORDNET_PATHS = ("/usr/share/wordnet/data.noun", "/usr/local/share/wordnet/data.noun",
                         "/usr/local/WordNet-3.0/dict/data.noun")


def _find(path: str | os.PathLike | None) -> Path:
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise DataFileNotFoundError(f"WordNet noun file not found: {p}. Pass the path of WordNet 3.0's "
                                        "'data.noun' (Debian/Ubuntu: apt-get install wordnet-base).")
        return p
    for cand in DEFAULT_WORDNET_PATHS:
        if Path(cand).is_file():
            return Path(cand)
    raise DataFileNotFoundError("WordNet's data.noun was not found in " + ", ".join(DEFAULT_WORDNET_PATHS) +
                                ". Install it with `apt-get install wordnet-base` or pass path=.../data.noun.")


def read_wordnet_nouns(path: str | os.PathLike | None = None, *, include_instances: bool = True
                       ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Parse ``data.noun`` into ``({wnid: [hypernym wnids]}, {wnid: first lemma})`` (Loki, arXiv 2307.12226).

    Args:
        path: the ``data.noun`` file (default: the first of :data:`DEFAULT_WORDNET_PATHS` that exists).
        include_instances: also follow instance hypernyms ``@i`` (default True: otherwise instances such as
            named people are isolated nodes and the graph is disconnected).

    Raises:
        DataFileNotFoundError: the file is missing (the message says how to install it).
        DataError: a malformed line.
    """
    p = _find(path)
    parents: dict[str, list[str]] = {}
    lemmas: dict[str, str] = {}
    keep = {"@", "@i"} if include_instances else {"@"}
    with p.open("r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.startswith("  ") or not line.strip():
                continue  # licence header
            try:
                head = line.split("|", 1)[0].split()
                wnid = "n" + head[0]
                w_cnt = int(head[3], 16)
                lemmas[wnid] = head[4]
                i = 4 + 2 * w_cnt
                p_cnt = int(head[i])
                ptrs = head[i + 1:i + 1 + 4 * p_cnt]
                parents[wnid] = [ptrs[j + 2][0] + ptrs[j + 1] for j in range(0, len(ptrs), 4) if ptrs[j] in keep]
            except (IndexError, ValueError) as err:
                raise DataError(f"{p}:{lineno}: not a WordNet data.noun line ({err}).") from err
    if not parents:
        raise DataError(f"{p} holds no synsets; is it WordNet's data.noun?")
    return parents, lemmas


def wordnet_metric(classes: Sequence[Hashable] | None = None, *, path: str | os.PathLike | None = None,
                   include_instances: bool = True) -> LabelMetric:
    """Hop-distance metric on WordNet nouns keyed by WNID (Loki, arXiv 2307.12226).

    Args:
        classes: the WNIDs that are classes (default: all ~82k noun synsets), e.g. the 1,000 ImageNet WNIDs
            (``timm/data/_info/imagenet_synsets.txt``), whose ancestors then act as internal, non-class nodes.
        path: ``data.noun`` location (see :func:`read_wordnet_nouns`).
        include_instances: follow instance hypernyms too (default True).

    Raises:
        DataError: an unknown WNID among ``classes`` (the message names it).
    """
    parents, _ = read_wordnet_nouns(path, include_instances=include_instances)
    return LabelMetric.from_parents(parents, classes=classes)
