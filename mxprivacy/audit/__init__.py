"""Privacy auditing: membership-inference attacks and empirical epsilon lower bounds.

An accountant's epsilon is an upper bound on the privacy loss. The attacks here measure
how well an adversary tells training members from non-members, and turn that into a
lower bound on epsilon that holds with a stated confidence. A lower bound above the
accountant's epsilon means a privacy bug.

- ``CanaryScoreAuditor`` (:mod:`.canary`): AUROC, ROC, TPR at FPR, and epsilon lower
  bounds from canary scores: Clopper-Pearson (independent trials), and one-run for
  canaries each included by a fair coin (Steinke et al. 2023), with the f-DP test of the
  Gaussian trade-off curve (Mahloujifar et al. 2024).
- ``run_membership_attacks`` (:mod:`.membership`): TF Privacy's attacks (loss and entropy
  thresholds, logistic regression, random forest, k-NN) per slice.
- ``logit_scaled_confidence``, ``lira_offline_scores``, ``lira_online_scores``
  (:mod:`.lira`): the likelihood-ratio attack of Carlini et al. (2022).
- Gluon helpers, which import MXNet: ``audit_training``, ``model_logits`` and
  ``attack_inputs`` (:mod:`.gluon`), ``lira_attack`` and ``train_shadow_models``
  (:mod:`.shadow`).

Importing this package loads neither MXNet nor scikit-learn: names load on first use.
"""
from __future__ import annotations

from .._lazy import lazy_names

_LAZY = {
    "CanaryScoreAuditor": "canary",
    "clopper_pearson_upper": "canary",
    "clopper_pearson_lower": "canary",
    "epsilon_from_counts": "canary",
    "AttackInputData": "membership",
    "run_membership_attacks": "membership",
    "audit_scores": "membership",
    "AttackType": "report",
    "SlicingSpec": "report",
    "AttackResults": "report",
    "SingleAttackResult": "report",
    "logit_scaled_confidence": "lira",
    "lira_offline_scores": "lira",
    "lira_online_scores": "lira",
    "make_canaries": "canaries",
    "canary_scores": "canaries",
    "canary_bounds": "canaries",
    "CanarySet": "canaries",
    "AuditReport": "canaries",
    "model_logits": "gluon",
    "attack_inputs": "gluon",
    "audit_training": "gluon",
    "train_shadow_models": "shadow",
    "lira_attack": "shadow",
}

__all__, __getattr__, __dir__ = lazy_names(__name__, _LAZY)
