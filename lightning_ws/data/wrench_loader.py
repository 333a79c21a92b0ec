"""WRENCH-format weak-supervision data sets (texts, gold labels, label matrix, LF names): :func:`load_wrench`."""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from lightning_ws.data._common import ABSTAIN, DATA_DIR, SHIPPED_WRENCH, _require_file
from lightning_ws.errors import DataError, DataFileNotFoundError
from lightning_ws.io import load_json

__all__ = [
    "RuleCheck",
    "WrenchRuleMismatchWarning",
    "WrenchSplit",
    "check_wrench_rules",
    "load_wrench",
    "weak_labels_from_rules",
    "wrench_lf_names_from_readme",
    "wrench_rules_from_readme",
]


class WrenchRuleMismatchWarning(UserWarning):
    """A split's shipped weak labels are not what its readme's rules give on its texts (see :func:`check_wrench_rules`)."""

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
        labels: gold labels, shape ``(n,)``, int64 in ``0..k-1``; ``-1`` marks a row without a gold label (only
            when loaded with ``allow_unlabeled=True``; see :attr:`has_gold`).
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
    def has_gold(self) -> np.ndarray:
        """``(n,)`` bool: the rows that carry a gold label (all of them unless loaded with ``allow_unlabeled``)."""
        return self.labels >= 0

    @property
    def gold_labels(self) -> np.ndarray | None:
        """``labels`` (``-1`` on rows without one) when some row has a gold label, else ``None``: what
        ``LFAnalysis`` takes for its empirical accuracies, which count the labelled rows only."""
        return self.labels if bool(self.has_gold.any()) else None

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


def _rule_lines(readme: Path) -> list[tuple[str, str]]:
    """``(polarity, regex)`` of every ``POLARITY<TAB>regex<TAB>...`` line of a readme (Learning-From-Rules layout)."""
    if not readme.is_file():
        return []
    out = []
    for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and re.fullmatch(r"[A-Za-z][A-Za-z0-9_ ()-]{0,40}", parts[0].strip()) and "(" in parts[1]:
            out.append((parts[0].strip(), parts[1]))
    return out


def wrench_rules_from_readme(readme: Path, m: int) -> list[re.Pattern[str]] | None:
    """The compiled regex of each labeling function listed in a WRENCH ``readme.txt``, in column order.

    Only the Learning-From-Rules layout (``POLARITY<TAB>regex<TAB>example``, SMS and TREC) lists its rules; other
    layouts (YouTube's named Python LFs), a count that differs from ``m`` or a pattern that does not compile give
    ``None``.
    """
    lines = _rule_lines(Path(readme))
    if len(lines) != m or m == 0:
        return None
    try:
        return [re.compile(rx) for _, rx in lines]
    except re.error:
        return None


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
    rules = [_rule_name(pol, i, rx) for i, (pol, rx) in enumerate(_rule_lines(readme))]
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


def _class_names(label_file: Path) -> list[str] | None:
    """Class names from WRENCH's ``label.json`` (``{"0": name, "1": name, ...}``; a JSON list of names is accepted
    too), or ``None`` without the file. Keys must be exactly ``0..k-1``."""
    if not label_file.is_file():
        return None
    try:
        mapping = json.loads(label_file.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DataError(f"{label_file} is not valid JSON ({err}); it should map class ids to names, e.g. "
                        f'{{"0": "ham", "1": "spam"}}.') from None
    if isinstance(mapping, list):
        return [str(n) for n in mapping]
    if not isinstance(mapping, dict) or not mapping:
        raise DataError(f"{label_file} should map class ids to names, e.g. {{\"0\": \"ham\", \"1\": \"spam\"}}; "
                        f"got {type(mapping).__name__}.")
    want = [str(i) for i in range(len(mapping))]
    if sorted(mapping, key=lambda c: (len(c), c)) != want:
        raise DataError(f"{label_file} has class ids {sorted(mapping)}; they must be 0..{len(mapping) - 1}, each once "
                        f"(the label matrix and gold labels index classes by position).")
    return [str(mapping[c]) for c in want]


def _weak_labels(value: object) -> list[int]:
    """One example's ``weak_labels``: a JSON list with one vote per LF (``-1`` = abstain). A mapping is refused (its
    keys would be read as votes), and so is ``null`` for an abstain, with the fix in the message."""
    if not isinstance(value, list):
        raise TypeError(f"weak_labels must be a list with one vote per labeling function, got "
                        f"{type(value).__name__} {str(value)[:60]}")
    if any(v is None for v in value):
        raise ValueError(f"weak_labels {str(value)[:60]} holds null; write -1 for an abstaining labeling function")
    return [_class_id(v, None) for v in value]


def _class_id(value: object, class_names: list[str] | None) -> int:
    """A gold label or vote as an int: an int, an integral float (``1.0``), a numeric string, or (gold labels,
    when ``label.json`` names the classes) a class name. Raises ``ValueError`` / ``TypeError`` otherwise:
    ``int(1.5)`` is 1, so a lenient cast would relabel rows without a word."""
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is a boolean, not a class id")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if float(value).is_integer():
            return int(value)
        raise ValueError(f"{value!r} is not a whole number")
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        if class_names is not None and text in class_names:
            return class_names.index(text)
        names = f" or one of the class names {class_names}" if class_names is not None else ""
        raise ValueError(f"{value!r} is neither a class id{names}")
    raise TypeError(f"{value!r} is not a class id")


def load_wrench(name_or_path: str | Path = "youtube", split: Split = "train", *,
                check_rules: bool = True, require_text: bool = True, allow_unlabeled: bool = False) -> WrenchSplit:
    """Load one split of a WRENCH-format data set.

    Args:
        name_or_path: ``"youtube"``, ``"sms"`` or ``"trec"`` for the shipped sets, or a folder in WRENCH format:
            ``{split}.json`` maps an id to ``{"data": {"text": ...}, "label": int, "weak_labels": [int, ...]}`` and
            an optional ``label.json`` maps class ids ``0..k-1`` to names (a JSON list of names works too). Labels
            and votes must be whole numbers (``1.0`` and ``"1"`` are read as 1; ``1.5`` is an error); a gold label
            may also be a class name from ``label.json``.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        check_rules: when the folder's ``readme.txt`` lists the labeling functions as regexes (the
            Learning-From-Rules layout of SMS and TREC), re-apply them to the split's texts and warn
            (:class:`WrenchRuleMismatchWarning`) when fewer than 95 % of the rows get the shipped firing pattern:
            such weak labels do not belong to their texts (WRENCH's own SMS valid/test splits are like that; the
            shipped copy is repaired, see ``lightning_ws/data/README.md``). A few milliseconds per 1,000 rows.
        require_text: ``False`` accepts examples without ``data.text`` (WRENCH's tabular, image and video sets keep
            features elsewhere; label models need only the label matrix); their ``texts`` are ``""``. The label-model
            CLI and benchmark load this way. ``True`` (for text models) refuses them with a message saying so.
        allow_unlabeled: accept rows without a gold label (``"label": -1``, ``null`` or no ``label`` key: WRENCH
            marks an unlabelled training split this way, and a user's own data is usually unlabelled); they get
            label ``-1``. Label models and pseudolabel datamodules need no gold labels on the split they fit; the
            default ``False`` refuses such rows with a message saying so (gold-label training and scoring need them).

    Returns:
        A :class:`WrenchSplit` with texts, gold labels, the ``n x m`` label matrix (``-1`` = abstain), LF names.

    Raises:
        DataFileNotFoundError: the folder or split file does not exist.
        DataError: rows with a different number of weak labels, a label outside the class range or not a whole
            number, a ``label.json`` that is not JSON or does not map exactly ``0..k-1``, or rows without a gold
            label when ``allow_unlabeled`` is ``False``.
    """
    if split not in ("train", "valid", "test"):
        raise DataError(f"split must be 'train', 'valid' or 'test', got {split!r}.")
    name, folder = _wrench_dir(name_or_path)
    path = _require_file(folder / f"{split}.json", f"WRENCH {split} split")
    raw = load_json(path)  # a byte-order mark is skipped; malformed JSON names file:line:column
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: expected a non-empty JSON object mapping ids to examples.")
    class_names = _class_names(folder / "label.json")
    ids, texts, labels, weak = [], [], [], []
    all_text = True
    m = None
    for key, ex in raw.items():
        try:
            raw_lab = ex.get("label", None) if isinstance(ex, dict) else ex["label"]
            lab = ABSTAIN if raw_lab is None else _class_id(raw_lab, class_names)
            wl = _weak_labels(ex["weak_labels"])
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{path}: example {key!r} is not in WRENCH format ({err}); expected "
                            f"{{'data': {{'text': ...}}, 'label': int, 'weak_labels': [int, ...]}}.") from None
        data = ex.get("data") if isinstance(ex, dict) else None
        text = data.get("text") if isinstance(data, dict) else None
        if text is None:
            if require_text:
                raise DataError(
                    f"{path}: example {key!r} has no data.text. A text model needs it; for a WRENCH set without "
                    f"text (tabular / image / video features kept elsewhere) the label models need only the weak "
                    f"labels: load it with load_wrench(..., require_text=False) (`lightning-ws labelmodel` does).")
            text, all_text = "", False
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
    unlabelled = labels_arr == ABSTAIN
    if unlabelled.any() and not allow_unlabeled:
        raise DataError(
            f"{path}: {int(unlabelled.sum())} of {len(ids)} examples have no gold label (label -1, null or missing). "
            f"Label models and pseudolabels need none on the split they fit: load it with "
            f"load_wrench(..., allow_unlabeled=True) (`lightning-ws labelmodel` and PseudoLabelDataModule's train "
            f"split do); training on gold labels or scoring against them needs labelled rows.")
    gold = labels_arr[~unlabelled]
    if gold.size and (gold.min() < 0 or gold.max() >= k):
        raise DataError(f"{path}: gold labels must lie in 0..{k - 1} (or -1 for no label); found "
                        f"{gold.min()}..{gold.max()}.")
    if weak_arr.size and (weak_arr.min() < ABSTAIN or weak_arr.max() >= k):
        raise DataError(f"{path}: weak labels must lie in -1..{k - 1}; found {weak_arr.min()}..{weak_arr.max()}.")
    if name == "youtube" and m == len(_YOUTUBE_LF_NAMES):
        lf_names = list(_YOUTUBE_LF_NAMES)
    else:
        lf_names = (wrench_lf_names_from_readme(folder / "readme.txt", m or 0)
                    or [f"lf_{j:02d}" for j in range(m or 0)])
    out = WrenchSplit(name=name, split=split, ids=ids, texts=texts, labels=labels_arr, weak_labels=weak_arr,
                      lf_names=lf_names, class_names=class_names)
    if check_rules and all_text:  # the rules read the texts; a text-free set has nothing to check them on
        rules = wrench_rules_from_readme(folder / "readme.txt", m or 0)
        if rules is not None:
            check = _check(out, rules, sample=_RULE_CHECK_ROWS)
            if check.rows_exact < _RULE_MATCH_MIN:
                warnings.warn(check.message(folder), WrenchRuleMismatchWarning, stacklevel=2)
    return out


_RULE_MATCH_MIN = 0.95
_RULE_CHECK_ROWS = 1000  # load_wrench checks at most this many evenly spaced rows (about 0.1 s)


@dataclass(frozen=True)
class RuleCheck:
    """How far a split's shipped weak labels agree with its readme's rules applied to its texts.

    Attributes:
        split: the split checked.
        rows: number of rows checked (``load_wrench`` checks at most 1,000 evenly spaced rows).
        rows_exact: fraction of rows whose shipped firing pattern (which LFs vote) equals the rules' on the text.
        entries: fraction of the ``n x m`` entries (fires / abstains) that agree.
        fires_shipped: number of non-abstain entries in the shipped matrix.
        fires_rules: number of rule matches on the texts.
    """

    split: str
    rows: int
    rows_exact: float
    entries: float
    fires_shipped: int
    fires_rules: int

    def message(self, folder: Path) -> str:
        """The warning text: what disagrees, and how to rebuild the weak labels."""
        return (f"{folder}: the {self.split} split's weak labels do not belong to its texts: re-applying the "
                f"{Path(folder).name} readme's regex rules reproduces the shipped firing pattern on "
                f"{self.rows_exact:.1%} of {self.rows} rows ({self.fires_rules} rule matches vs {self.fires_shipped} "
                f"shipped votes). Label-model scores on this split are then meaningless. Rebuild the matrix with "
                f"`lightning_ws.data.weak_labels_from_rules(path, {self.split!r})`, or pass check_rules=False to "
                f"silence this if the rules are known to differ from the readme.")


def _fires(texts: list[str], rules: list[re.Pattern[str]]) -> np.ndarray:
    return np.array([[rx.search(t) is not None for rx in rules] for t in texts], dtype=bool).reshape(len(texts),
                                                                                                       len(rules))


def _check(split: WrenchSplit, rules: list[re.Pattern[str]], sample: int | None = None) -> RuleCheck:
    rows = np.arange(split.n)
    if sample is not None and split.n > sample:
        rows = np.unique(np.linspace(0, split.n - 1, sample).astype(np.int64))
    fired = _fires([split.texts[i] for i in rows], rules)
    shipped = split.weak_labels[rows] != ABSTAIN
    return RuleCheck(split=split.split, rows=len(rows), rows_exact=float((fired == shipped).all(axis=1).mean()),
                     entries=float((fired == shipped).mean()), fires_shipped=int(shipped.sum()),
                     fires_rules=int(fired.sum()))


def check_wrench_rules(name_or_path: str | Path, split: Split) -> RuleCheck | None:
    """Re-apply the readme's regex labeling functions to a split's texts and compare with its shipped weak labels.

    Returns ``None`` when the readme does not list the rules as regexes (YouTube's LFs are Python functions).
    WRENCH's train splits of SMS and TREC agree on 100 % of rows; WRENCH's SMS valid and test splits agree on about
    41 % (their weak labels belong to other texts), which is why the shipped SMS copy was rebuilt.
    """
    data = load_wrench(name_or_path, split, check_rules=False)
    _, folder = _wrench_dir(name_or_path)
    rules = wrench_rules_from_readme(folder / "readme.txt", data.weak_labels.shape[1])
    return None if rules is None else _check(data, rules)


def weak_labels_from_rules(name_or_path: str | Path, split: Split, *, reference: Split = "train") -> np.ndarray:
    """The label matrix of a split rebuilt by applying the readme's regex rules to its texts.

    Each rule votes for one class (the Learning-From-Rules sets have single-class rules); which class is read off
    the ``reference`` split's shipped votes (its most frequent vote), so the class ids are the data set's own and no
    polarity-name mapping is guessed. Use it when :func:`check_wrench_rules` shows a split's shipped weak labels do
    not match its texts and the reference split does.

    Raises:
        DataError: the readme lists no regex rules, the reference split itself disagrees with the rules (< 95 %
            of rows), or a rule never fires on the reference split (its class is unknown).
    """
    ref = load_wrench(name_or_path, reference, check_rules=False)
    _, folder = _wrench_dir(name_or_path)
    m = ref.weak_labels.shape[1]
    rules = wrench_rules_from_readme(folder / "readme.txt", m)
    if rules is None:
        raise DataError(f"{folder / 'readme.txt'} does not list {m} regex rules (POLARITY<TAB>regex<TAB>example), "
                        f"so the weak labels cannot be rebuilt from it.")
    check = _check(ref, rules)
    if check.rows_exact < _RULE_MATCH_MIN:
        raise DataError(f"the reference split {reference!r} itself agrees with the readme's rules on only "
                        f"{check.rows_exact:.1%} of rows; pick a reference split whose weak labels match its texts.")
    classes = np.full(m, -1, dtype=np.int64)
    for j in range(m):
        votes = ref.weak_labels[:, j]
        votes = votes[votes != ABSTAIN]
        if votes.size:
            classes[j] = int(np.bincount(votes).argmax())
    if (classes < 0).any():
        never = [ref.lf_names[j] for j in np.flatnonzero(classes < 0)]
        raise DataError(f"rules {never} never fire on the {reference!r} split, so their class is unknown; pass a "
                        f"larger reference split.")
    target = load_wrench(name_or_path, split, check_rules=False)
    fired = _fires(target.texts, rules)
    return np.where(fired, classes[None, :], ABSTAIN).astype(np.int64)

