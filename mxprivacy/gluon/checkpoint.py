"""Checkpoints of a :class:`~mxprivacy.gluon.DPTrainer`: optimizer states, the privacy
ledger and the step count in one JSON file, written atomically.

A resumed run keeps the privacy already spent. A bad file raises
:class:`~mxprivacy.CheckpointError` and changes nothing.
"""
from __future__ import annotations

import base64
import json

from .._io import atomic_write
from ..errors import CheckpointError, MXPrivacyError

__all__ = ["CheckpointMixin"]

_FORMAT = "mxprivacy-dptrainer-1"


class CheckpointMixin:
    """``save_states`` / ``load_states`` for DPTrainer (Gluon's names and signatures)."""

    def save_states(self, fname: str) -> None:
        """Write optimizer states, privacy ledger and step count atomically to ``fname``."""
        if not self._kv_initialized:
            self._init_kvstore()
        if self._params_to_init:
            self._init_params()
        payload = {
            "format": _FORMAT,
            "updater": base64.b64encode(self._updaters[0].get_states(dump_optimizer=True))
            .decode("ascii"),
            "privacy": self.accountant.state_dict(),
            "steps": self.steps,
            "nonfinite_count": self.nonfinite_count,
            "config": {"noise_multiplier": self.noise_multiplier,
                       "max_grad_norm": self.max_grad_norm,
                       "expected_batch_size": self.expected_batch_size,
                       "sample_rate": self.sample_rate, "clipping": self.clipping},
        }
        atomic_write(fname, json.dumps(payload).encode("utf-8"))

    def load_states(self, fname: str) -> None:
        """Restore what :meth:`save_states` wrote; nothing changes if the file is bad."""
        try:
            with open(fname, "rb") as handle:
                payload = json.loads(handle.read().decode("utf-8"))
            if payload.get("format") != _FORMAT:
                raise ValueError(f"format {payload.get('format')!r}")
            states = base64.b64decode(payload["updater"])
            accountant = self.accountant.empty_like()
            accountant.load_state_dict(payload["privacy"])
            steps = int(payload["steps"])
        except (OSError, ValueError, KeyError, TypeError, MXPrivacyError) as exc:
            raise CheckpointError(
                f"{fname} is not a readable DPTrainer checkpoint ({exc}). The trainer is "
                "unchanged.") from exc
        if not self._kv_initialized:
            self._init_kvstore()
        if self._params_to_init:
            self._init_params()
        for updater in self._updaters:
            updater.set_states(states)
            updater.optimizer = self._updaters[0].optimizer
        self._optimizer = self._updaters[0].optimizer
        self._optimizer.param_dict = dict(enumerate(self._params))
        self.accountant = accountant
        self.steps = steps
        if self.clipping == "adaptive":  # the adapted bound is part of the state
            self._clipping.max_grad_norm = float(payload["config"]["max_grad_norm"])
        self.nonfinite_count = int(payload.get("nonfinite_count", 0))
