"""Stage 1 of a DP-SGD step: take the captured forward passes and check them.

Everything here runs before the step changes any state, so a check that fails leaves
the captured batch in place for a corrected retry (a pass without backward is dropped:
no retry can complete it). The checks: the loader's count and the batch size (Poisson
plausibility, or exactly B for fixed-size batches), fresh gradients, the declared loss reduction, one pass per device
unless ``example_ids`` ties rows to examples, and no gradient that escaped capture.
"""
from __future__ import annotations

from typing import Optional

from ..errors import (BatchSizeMismatchError, HybridizedCaptureError, PerSampleGradientError,
                      SamplingError, StaleGradientError)
from . import reduction
from .shards import check_no_raw_gradient, group_by_example, one_pass_per_context

__all__ = ["CaptureStageMixin"]


class CaptureStageMixin:
    """For :class:`~mxprivacy.gluon.DPTrainer` (needs ``_block``, ``secure_mode``,
    ``loss_reduction``, ``clipping``, ``sampling``, ``_size_check``,
    ``_accumulated_units``, ``_loader_examples`` and ``_trainable``)."""

    def _capture_stage(self, batch_size: Optional[int], example_ids):
        """(clipping units, examples in the logical step), every check passed."""
        self._check_batch_source()
        units, count = self._units(example_ids)
        captured = count + self._accumulated_units
        if batch_size is not None and int(batch_size) != captured:
            raise BatchSizeMismatchError(
                f"step({batch_size}) but {captured} examples were captured since the last "
                "step. Pass the actual number of examples: x.shape[0] (0 for an empty "
                "Poisson batch), summed over the accumulated physical batches. If some rows "
                "are further views of the same examples (augmentations, siamese pairs), "
                "pass example_ids= so that each example is clipped once; counting views as "
                "examples would under-report epsilon.")
        if self._loader_examples is not None and captured != self._loader_examples:
            raise BatchSizeMismatchError(
                f"The DPDataLoader drew {self._loader_examples} examples for this step, but "
                f"{captured} were captured. Rows that are further views of the same "
                "examples need example_ids=; each drawn example must be forwarded.")
        self._size_check.check(captured)
        self._check_uncaptured_use(units)
        return units, captured

    def _check_batch_source(self) -> None:
        """Secure mode and fixed-size sampling step only after a DPDataLoader draw, on its
        count. The trainer sees counts, not data: forwarding other rows than the drawn
        ones (another loader's batch, one record in several rows) is not detected."""
        if self._loader_examples is not None:
            return
        if self.secure_mode:
            raise SamplingError(
                "secure_mode=True needs batches drawn by DPDataLoader(..., trainer=trainer), "
                "which samples from the OS CSPRNG and tells the trainer each batch's size; "
                "this step came from elsewhere.")
        if self.sampling == "fixed":
            raise SamplingError(
                "sampling='fixed' is accounted as B examples drawn uniformly and "
                "independently at every step, but this batch was not drawn by "
                "DPDataLoader(..., trainer=trainer). A shuffled epoch (gluon.data.DataLoader "
                "with shuffle=True) has the same batch size but is not such a draw, and its "
                "epsilon would be misreported. Iterate over DPDataLoader(data, "
                "expected_batch_size=B, trainer=trainer).")

    def expect_examples(self, count: int) -> None:
        """Called by :class:`DPDataLoader` with the size of the batch it just drew; the
        next step must capture exactly that many examples.

        A new draw while parts of the previous one are accumulated is refused: the step
        would join two draws, in which a record can appear twice (2kC, not 2C)."""
        if self._accumulated_units:
            raise SamplingError(
                f"DPDataLoader drew a new batch while {self._accumulated_units} examples of "
                "the previous draw are accumulated: one step would join two draws, in which "
                "one record can appear twice. Call trainer.step(total) after the last part "
                "of a draw, before drawing the next batch.")
        self._loader_examples = int(count)

    def _units(self, example_ids):
        """The clipping units of the pending shards, and the number of examples."""
        shards = self._block.pending_shards()
        try:
            for shard in shards:
                shard.check_fresh()
        except StaleGradientError:
            self._block.discard_capture()  # no retry can complete a pass without backward
            raise
        for shard in shards:
            self._check_reduction(shard)
        if example_ids is None:
            one_pass_per_context(shards)
            return shards, sum(s.batch_size for s in shards)
        grouped = group_by_example(shards, example_ids, self._block, self.clipping)
        return [grouped], grouped.batch_size

    def _check_reduction(self, shard) -> None:
        observed = shard.reduction
        if shard.batch_size <= 1 and observed in ("sum", "mean"):
            observed = self.loss_reduction  # a mean over one sample is its sum
        if observed == self.loss_reduction:
            if self.loss_reduction == "mean":
                shard.rescale_once(float(shard.batch_size))
            return
        if observed is None:  # fresh gradients, but no backward call was seen
            raise PerSampleGradientError(reduction.HINTS["unseen"])
        raise PerSampleGradientError(reduction.HINTS.get(
            (self.loss_reduction, shard.reduction), reduction.HINTS["other"]))

    def _check_uncaptured_use(self, shards) -> None:
        for shard in shards:
            for part in getattr(shard, "shards", [shard]):
                check_no_raw_gradient(part)
        captured = {(id(p), s.ctx) for s in shards for p in s.captured_params}
        for param in self._trainable():
            for data in param.list_data():
                if data._fresh_grad and (id(param), data.context) not in captured:
                    raise HybridizedCaptureError(
                        f"Parameter {param.name} received a gradient on {data.context} that "
                        "no per-sample capture saw (a hybridized sub-block, or the parameter "
                        "used outside the PrivateBlock). Its update would not be private; "
                        "use mode='microbatch' or un-hybridize the net.")
