"""WRENCH-format weak-supervision data sets (texts, gold labels, label matrix, LF names): :func:`load_wrench`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from lightning_ws.data._common import ABSTAIN, DATA_DIR, SHIPPED_WRENCH, _require_file
from lightning_ws.errors import DataError, DataFileNotFoundError

__all__ = ["WrenchSplit", "load_wrench", "wrench_lf_names_from_readme"]

_YOUTUBE_LF_NAMES = (
    "keyword_my",
    "keyword_subscribe",
    "keyword_link",
    "keyword_please",
    "keyword_song",
    "regex_check_out",
    "short_comment",
    "has_person_nlp",
    "textblob_polarity",
    "textblob_subjectivity",
)

Split = Literal["train", "valid", "test"]


@dataclass(frozen=True)
class WrenchSplit:
    """One split of a WRENCH-format data set.

    Attributes:
        name: data set name (``"youtube"``, ``"sms"`` or the folder name of a user data set).
        split: ``"train"``, ``"valid"`` or ``"test"``.
        ids: the example ids as they appear in the JSON file (strings).
        texts: the example texts.
        labels: gold labels, shape ``(n,)``, int64 in ``0..k-1``.
        weak_labels: the label matrix, shape ``(n, m)``, int64, ``-1`` = abstain.
        lf_names: one name per labeling function (column of ``weak_labels``).
        class_names: one name per class, index = class id.
    """

    name: str
    split: str
    ids: list[str]
    texts: list[str]
    labels: np.ndarray
    weak_labels: np.ndarray
    lf_names: list[str]
    class_names: list[str]

    @property
    def n(self) -> int:
        """Number of examples."""
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.texts)


def _wrench_dir(name_or_path: str | Path) -> tuple[str, Path]:
    if str(name_or_path) in SHIPPED_WRENCH:
        return str(name_or_path), DATA_DIR / "wrench" / str(name_or_path)
    path = Path(name_or_path)
    if not path.is_dir():
        raise DataFileNotFoundError(
            f"WRENCH data set {str(name_or_path)!r} is neither a shipped data set ({', '.join(SHIPPED_WRENCH)}) "
            f"nor an existing folder. Pass one of the shipped names or the path of a folder with "
            f"train.json/valid.json/test.json."
        )
    return path.name, path


def _rule_name(polarity: str, index: int, pattern: str) -> str:
    """``<polarity>_<index>_<up to three keywords of the regex>`` (``spam_03_won_cash_prize``)."""
    words = re.findall(r"\((\w[^()|]*)[|)]", pattern)
    kw = "_".join(re.sub(r"[^0-9a-zA-Z]+", "", w).lower() for w in words[:3] if w.strip())
    pol = re.sub(r"[^0-9a-zA-Z]+", "_", polarity).strip("_").lower()
    return f"{pol}_{index:02d}" + (f"_{kw}" if kw else "")


def wrench_lf_names_from_readme(readme: Path, m: int) -> list[str] | None:
    """Labeling-function names parsed from a WRENCH ``readme.txt``, or ``None`` when it does not list ``m`` of them.

    Two layouts are recognised, tried in this order:

    * one rule per line, tab-separated ``POLARITY<TAB>regex<TAB>example`` (the Learning-From-Rules sets: SMS's
      ``ham``/``spam``, TREC's ``DESCRIPTION``/``ENTITY``/...): the name is the lower-cased polarity, the rule's
      index and up to three keywords of its regex (``spam_03_won_cash_prize``, ``description_01_how_does``);
    * a list of identifiers, one per line (``keyword_my,``), after a line that mentions "labeling functions"
      (YouTube's layout).

    A readme whose count differs from the label matrix's ``m`` columns yields ``None`` (the caller falls back to
    ``lf_00``..), since names in the wrong order would be worse than none.
    """
    if not readme.is_file():
        return None
    lines = readme.read_text(encoding="utf-8", errors="replace").splitlines()
    rules = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) >= 2 and re.fullmatch(r"[A-Za-z][A-Za-z0-9_ ()-]{0,40}", parts[0].strip()) and "(" in parts[1]:
            rules.append(_rule_name(parts[0].strip(), len(rules), parts[1]))
    if len(rules) == m and m > 0:
        return rules
    listed: list[str] = []
    in_list = False
    for line in lines:
        if re.search(r"label(l)?ing functions", line, re.IGNORECASE):
            in_list, listed = True, []
            continue
        if in_list:
            ident = re.fullmatch(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*,?\s*", line)
            if ident:
                listed.append(ident.group(1).lower())
            elif listed and line.strip():
                in_list = False
    if len(listed) == m and m > 0 and len(set(listed)) == m:
        return listed
    return None


def load_wrench(name_or_path: str | Path = "youtube", split: Split = "train") -> WrenchSplit:
    """Load one split of a WRENCH-format data set.

    Args:
        name_or_path: ``"youtube"``, ``"sms"`` or ``"trec"`` for the shipped sets, or a folder in WRENCH format:
            ``{split}.json`` maps an id to ``{"data": {"text": ...}, "label": int, "weak_labels": [int, ...]}`` and
            an optional ``label.json`` maps class ids to names.
        split: ``"train"``, ``"valid"`` or ``"test"``.

    Returns:
        A :class:`WrenchSplit` with texts, gold labels, the ``n x m`` label matrix (``-1`` = abstain), LF names.

    Raises:
        DataFileNotFoundError: the folder or split file does not exist.
        DataError: rows with a different number of weak labels, or a label outside the class range.
    """
    if split not in ("train", "valid", "test"):
        raise DataError(f"split must be 'train', 'valid' or 'test', got {split!r}.")
    name, folder = _wrench_dir(name_or_path)
    path = _require_file(folder / f"{split}.json", f"WRENCH {split} split")
    with path.open("r", encoding="utf-8") as fh:
        raw = json.load(fh)
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: expected a non-empty JSON object mapping ids to examples.")
    label_file = folder / "label.json"
    class_names: list[str] | None = None
    if label_file.is_file():
        mapping = json.loads(label_file.read_text(encoding="utf-8"))
        class_names = [mapping[str(i)] for i in range(len(mapping))]
    ids, texts, labels, weak = [], [], [], []
    m = None
    for key, ex in raw.items():
        try:
            text = ex["data"]["text"]
            lab = int(ex["label"])
            wl = [int(v) for v in ex["weak_labels"]]
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: example {key!r} is not in WRENCH format ({err!r}); expected "
                            f"{{'data': {{'text': ...}}, 'label': int, 'weak_labels': [int, ...]}}.") from None
        if m is None:
            m = len(wl)
        elif len(wl) != m:
            raise DataError(f"{path}: example {key!r} has {len(wl)} weak labels, the first example has {m}.")
        ids.append(str(key))
        texts.append(str(text))
        labels.append(lab)
        weak.append(wl)
    labels_arr = np.asarray(labels, dtype=np.int64)
    weak_arr = np.asarray(weak, dtype=np.int64).reshape(len(ids), m or 0)
    k = len(class_names) if class_names else int(max(labels_arr.max(), weak_arr.max()) + 1)
    if class_names is None:
        class_names = [str(i) for i in range(k)]
    if labels_arr.min() < 0 or labels_arr.max() >= k:
        raise DataError(f"{path}: gold labels must lie in 0..{k - 1}; found {labels_arr.min()}..{labels_arr.max()}.")
    if weak_arr.size and (weak_arr.min() < ABSTAIN or weak_arr.max() >= k):
        raise DataError(f"{path}: weak labels must lie in -1..{k - 1}; found {weak_arr.min()}..{weak_arr.max()}.")
    if name == "youtube" and m == len(_YOUTUBE_LF_NAMES):
        lf_names = list(_YOUTUBE_LF_NAMES)
    else:
        lf_names = (wrench_lf_names_from_readme(folder / "readme.txt", m or 0)
                    or [f"lf_{j:02d}" for j in range(m or 0)])
    return WrenchSplit(name=name, split=split, ids=ids, texts=texts, labels=labels_arr, weak_labels=weak_arr,
                       lf_names=lf_names, class_names=class_names)

