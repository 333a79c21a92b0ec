"""Real data sets shipped inside the package, with typed loaders.

Shipped data (see ``lightning_ws/data/README.md`` for provenance and licences):

* WRENCH YouTube spam (10 labeling functions), SMS spam (73) and TREC (68): :func:`load_wrench`; for sets whose
  readme lists the rules as regexes, :func:`check_wrench_rules` / :func:`weak_labels_from_rules` check and rebuild
  a split's label matrix from its texts;
* the raw UCI YouTube Spam Collection, five videos, the video as a domain: :func:`load_youtube_comments`;
* GSM8K test problems with four model-written candidate solutions each: :func:`load_gsm8k_candidates`.

Every loader also accepts a user path in the same format, so the same code serves a user's own data. Missing files
raise :class:`~lightning_ws.errors.DataFileNotFoundError` naming the file and the fix.
"""

from lightning_ws.data._common import ABSTAIN, DATA_DIR, SHIPPED_WRENCH
from lightning_ws.data.gsm8k_loader import GSM8KCandidates, extract_final_answer, load_gsm8k_candidates
from lightning_ws.data.wrench_loader import (
    RuleCheck,
    WrenchRuleMismatchWarning,
    WrenchSplit,
    check_wrench_rules,
    load_wrench,
    weak_labels_from_rules,
    wrench_lf_names_from_readme,
    wrench_rules_from_readme,
)
from lightning_ws.data.youtube_loader import YouTubeComments, load_youtube_comments

__all__ = [
    "ABSTAIN",
    "DATA_DIR",
    "SHIPPED_WRENCH",
    "GSM8KCandidates",
    "RuleCheck",
    "WrenchRuleMismatchWarning",
    "WrenchSplit",
    "YouTubeComments",
    "check_wrench_rules",
    "extract_final_answer",
    "load_gsm8k_candidates",
    "load_wrench",
    "load_youtube_comments",
    "weak_labels_from_rules",
    "wrench_lf_names_from_readme",
    "wrench_rules_from_readme",
]
