"""Real data sets shipped inside the package, with typed loaders.

Shipped data (see ``lightning_ws/data/README.md`` for provenance and licences):

* WRENCH YouTube spam (10 labeling functions) and SMS spam (73 labeling functions): :func:`load_wrench`;
* the raw UCI YouTube Spam Collection, five videos, the video as a domain: :func:`load_youtube_comments`;
* GSM8K test problems with four model-written candidate solutions each: :func:`load_gsm8k_candidates`.

Every loader also accepts a user path in the same format, so the same code serves a user's own data. Missing files
raise :class:`~lightning_ws.errors.DataFileNotFoundError` naming the file and the fix.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from lightning_ws.errors import DataError, DataFileNotFoundError
from lightning_ws.io import read_jsonl

__all__ = [
    "ABSTAIN",
    "DATA_DIR",
    "WrenchSplit",
    "YouTubeComments",
    "GSM8KCandidates",
    "load_wrench",
    "load_youtube_comments",
    "load_gsm8k_candidates",
    "extract_final_answer",
    "SHIPPED_WRENCH",
]

#: Label-matrix entry meaning "this labeling function abstains".
ABSTAIN: int = -1

#: Folder that holds the shipped data files.
DATA_DIR: Path = Path(__file__).resolve().parent

#: Names of the WRENCH data sets shipped with the package.
SHIPPED_WRENCH = ("youtube", "sms", "trec")

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


@dataclass(frozen=True)
class YouTubeComments:
    """The raw UCI YouTube Spam Collection: comments of five videos, the video as the domain.

    Attributes:
        comment_ids, authors, dates, texts: per-comment fields of the original CSVs.
        labels: ``1`` = spam, ``0`` = ham, shape ``(n,)``.
        domains: index into ``domain_names`` per comment, shape ``(n,)``.
        domain_names: the video of each domain (``"Psy"``, ``"KatyPerry"``, ...).
    """

    comment_ids: list[str]
    authors: list[str]
    dates: list[str]
    texts: list[str]
    labels: np.ndarray
    domains: np.ndarray
    domain_names: list[str]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class GSM8KCandidates:
    """GSM8K problems x candidate solutions with correctness.

    Attributes:
        questions: ``P`` problem statements.
        reference_solutions: ``P`` reference solutions.
        reference_answers: ``P`` final answers (the text after ``A:``), normalised.
        candidate_names: ``N`` generator names (``"6b_finetuning"``, ...), one per candidate column.
        solutions: ``P x N`` nested list of candidate solutions.
        answers: ``P x N`` nested list of extracted final answers (``None`` where none could be found).
        correct: ``(P, N)`` bool array, the file's ``is_correct`` flags.
    """

    questions: list[str]
    reference_solutions: list[str]
    reference_answers: list[str | None]
    candidate_names: list[str]
    solutions: list[list[str]]
    answers: list[list[str | None]]
    correct: np.ndarray = field(repr=False)

    @property
    def num_problems(self) -> int:
        """``P``."""
        return len(self.questions)

    @property
    def num_candidates(self) -> int:
        """``N``."""
        return len(self.candidate_names)


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataFileNotFoundError(
            f"{what} not found: {path}. Pass the folder that holds it (for WRENCH data: train.json, valid.json, "
            f"test.json and label.json), or use a shipped data set by name ({', '.join(SHIPPED_WRENCH)})."
        )
    return path


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


def load_youtube_comments(folder: str | Path | None = None) -> YouTubeComments:
    """Load the raw YouTube Spam Collection (five CSVs, ``COMMENT_ID,AUTHOR,DATE,CONTENT,CLASS``).

    Args:
        folder: a folder of ``Youtube0N-<Video>.csv`` files; defaults to the shipped copy.

    Returns:
        :class:`YouTubeComments` whose ``domains`` give each comment's video.
    """
    folder = Path(folder) if folder is not None else DATA_DIR / "wrench" / "youtube" / "raw"
    files = sorted(folder.glob("Youtube*.csv")) if folder.is_dir() else []
    if not files:
        raise DataFileNotFoundError(f"no Youtube*.csv files in {folder}. Pass the folder of the UCI YouTube Spam "
                                    f"Collection CSVs, or leave the argument out to use the shipped copy.")
    cids, authors, dates, texts, labels, domains, names = [], [], [], [], [], [], []
    for d, path in enumerate(files):
        names.append(path.stem.split("-", 1)[-1])
        with path.open("r", encoding="utf-8", errors="replace", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = {"COMMENT_ID", "AUTHOR", "DATE", "CONTENT", "CLASS"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: missing CSV columns {sorted(missing)}.")
            for row in reader:
                cids.append(row["COMMENT_ID"])
                authors.append(row["AUTHOR"])
                dates.append(row["DATE"] or "")
                texts.append(row["CONTENT"])
                labels.append(int(row["CLASS"]))
                domains.append(d)
    return YouTubeComments(comment_ids=cids, authors=authors, dates=dates, texts=texts,
                           labels=np.asarray(labels, dtype=np.int64), domains=np.asarray(domains, dtype=np.int64),
                           domain_names=names)


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_final_answer(solution: str) -> str | None:
    """Extract the final answer of a GSM8K-style solution, normalised for comparison.

    Looks for the ``A:`` line (this file's convention) or ``####`` (GSM8K's), else takes the last number.
    Numbers are normalised: thousands separators dropped, ``3.0`` -> ``3``.
    """
    text = solution.strip()
    tail = None
    for marker in ("\nA:", "####"):
        if marker in text:
            tail = text.rsplit(marker, 1)[1]
            break
    if tail is None and text.startswith("A:"):
        tail = text[2:]
    nums = _NUM.findall(tail if tail is not None else text)
    if not nums:
        return tail.strip() or None if tail is not None else None
    val = nums[0] if tail is not None else nums[-1]
    val = val.replace(",", "")
    try:
        f = float(val)
    except ValueError:
        return val
    return str(int(f)) if f.is_integer() else repr(f)


def load_gsm8k_candidates(path: str | Path | None = None) -> GSM8KCandidates:
    """Load GSM8K problems with candidate solutions and their correctness.

    Args:
        path: a JSONL file with keys ``question``, ``ground_truth`` and, per generator, ``{"solution", "is_correct"}``
            objects; defaults to the shipped ``example_model_solutions.jsonl`` (Cobbe et al. 2021, MIT).
    """
    path = Path(path) if path is not None else DATA_DIR / "gsm8k" / "example_model_solutions.jsonl"
    _require_file(path, "GSM8K candidate file")
    rows = read_jsonl(path)
    if not rows:
        raise DataError(f"{path}: no rows.")
    names = [k for k, v in rows[0].items() if isinstance(v, dict) and "solution" in v]
    if not names:
        raise DataError(f"{path}: no candidate columns (objects with 'solution' and 'is_correct').")
    questions, refs, ref_answers, sols, answers, correct = [], [], [], [], [], []
    for i, row in enumerate(rows):
        try:
            questions.append(row["question"])
            refs.append(row["ground_truth"])
            sols.append([row[n]["solution"] for n in names])
            correct.append([bool(row[n]["is_correct"]) for n in names])
        except KeyError as err:
            raise DataError(f"{path}:{i + 1}: missing key {err}; every row needs question, ground_truth and "
                            f"the candidate columns {names}.") from None
        ref_answers.append(extract_final_answer(row["ground_truth"]))
        answers.append([extract_final_answer(s) for s in sols[-1]])
    return GSM8KCandidates(questions=questions, reference_solutions=refs, reference_answers=ref_answers,
                           candidate_names=names, solutions=sols, answers=answers,
                           correct=np.asarray(correct, dtype=bool))
