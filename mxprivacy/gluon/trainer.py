"""``DPTrainer``: a drop-in ``gluon.Trainer`` that runs DP-SGD.

``step(n) = allreduce_grads() -> update(n)``, as in Gluon. ``allreduce_grads`` is a
pipeline of four stages, each in its own module:

1. capture (:mod:`.capture_stage`): take the captured passes and check them (loader
   count, Poisson plausibility, fresh gradients, loss reduction, views, escapes);
2. clip (:mod:`.clipping`): clip every unit's (sample's or microbatch's) whole gradient
   to ``max_grad_norm`` and sum per parameter and context;
3. noise (:mod:`.noise_writer`): reduce across contexts and add Gaussian noise
   N(0, (sigma * sensitivity)^2) *once* (drawn on the first context, copied to others);
4. account: record the step's event (:meth:`step_event`: Poisson-sampled, or a
   fixed-size batch drawn without replacement, see :mod:`mxprivacy.accounting.step_sampling`).

With ``kvstore="dist_sync"`` the workers first check that they agree on the settings,
and stage 3 adds each worker's share of the noise before the kvstore sums the workers'
pushes (see :mod:`.distributed`).

Nothing changes state before stage 3, so a step that raises can be retried. ``update``
divides by the *expected* batch size, never the actual one (the size of a Poisson batch
is itself private).
"""
from __future__ import annotations

import uuid
from typing import Dict, List, Optional

from mxnet import gluon

from ..accounting import PrivacyAccountant, make_accountant
from ..errors import BatchSizeMismatchError, InvalidParameterError, StaleGradientError
from . import guards
from .averaging import AveragingMixin
from .capture_stage import CaptureStageMixin
from .checkpoint import CheckpointMixin
from .clipping import ClipStageMixin, make_clipping
from .distributed import DistributedMixin, check_options
from .noise_writer import NoiseWriterMixin
from .planning import PlanningMixin, resolve_noise

__all__ = ["DPTrainer"]


class DPTrainer(CaptureStageMixin, ClipStageMixin, NoiseWriterMixin, CheckpointMixin,
                AveragingMixin, PlanningMixin, DistributedMixin, gluon.Trainer):
    """DP-SGD with Gluon's Trainer interface.

    Parameters
    ----------
    params, optimizer, optimizer_params, compression_params
        As in :class:`mxnet.gluon.Trainer`. The parameters must belong to a
        :class:`~mxprivacy.PrivateBlock`.
    kvstore : str or KVStore
        A single-machine kvstore, or ``"dist_sync"`` / ``"dist_device_sync"`` (or such a
        ``KVStore``) for W workers started by ``mxprivacy launch``: each worker samples
        its shard at rate q and adds noise of std sigma C / sqrt(W), the kvstore sums
        the pushes, and the noise (std sigma C) is counted once (see
        :mod:`mxprivacy.gluon.distributed`). ``expected_batch_size`` and
        ``dataset_size`` are then *global* (q N for the whole data set); only rank 0
        writes checkpoints. ``dist_async`` is refused.
    update_on_kvstore : None or False
        Forced to False: noise must be added between reduction and update (with a dist
        kvstore the server would otherwise apply the raw sums).
    dist_timeout : float, optional
        With a dist kvstore: seconds any wait for the other workers may last before this
        worker exits with code 75 and one line on stderr (a dead peer otherwise blocks it
        forever). Default ``$MXPRIVACY_DIST_TIMEOUT``, else 600; ``inf`` disables it.
    dist_own_sampler : bool, default False
        With a dist kvstore every step's examples must come from
        ``DPDataLoader(..., trainer=trainer)``, which shards the data set and announces
        each batch; other steps are refused on every worker. True opts out, for a
        sampler of your own. You must then guarantee, or epsilon is wrong: every worker
        Poisson-samples, at rate ``sample_rate``, its part of a partition of the N
        records (each record on exactly one worker, every worker on the same N); the
        part of a record depends on that record alone, never on its position (else
        :meth:`server_epsilon` does not hold); the sample is secret.
    noise_multiplier : float
        sigma: noise std divided by the sensitivity (``max_grad_norm``, or twice it for
        microbatches of several samples). Or give a target instead:
    target_epsilon, target_delta, epochs, total_steps
        Calibrate sigma with ``accountant`` so that the planned run (``epochs`` passes
        of :class:`~mxprivacy.DPDataLoader`, or ``total_steps``) spends at most
        ``target_epsilon`` at ``target_delta``, and close below it; see
        :attr:`privacy_plan`. Steps beyond the plan raise
        :class:`~mxprivacy.PrivacyBudgetExceeded` (see :mod:`.planning`).
    max_grad_norm : float or dict
        C: the L2 bound of each clipping unit's whole gradient. With
        ``clipping="per_layer"``, a dict from layer name to C_l, or one number split
        evenly over the layers.
    expected_batch_size : int
        q x N: the batch size the gradient sum is divided by (B, exact, for fixed).
    sample_rate, dataset_size : float, int
        The Poisson sampling rate q, or N so that q = expected_batch_size / N.
    sampling : {"poisson", "fixed"}
        How :class:`~mxprivacy.DPDataLoader` draws batches (the loader follows the
        trainer). ``"fixed"``: every step exactly B = expected_batch_size of
        N = dataset_size examples, drawn without replacement and independently at
        every step, accounted under replace-one (see
        :mod:`mxprivacy.accounting.step_sampling`). Every step must then come from that
        loader and capture exactly B examples.
    warn_epsilon : float
        Warn once when epsilon at ``warn_delta`` passes this value.
    warn_delta : float, optional
        Delta for that warning; 1/N (or 1e-5 when N is unknown).
    accountant : {"rdp", "pld"} or PrivacyAccountant, default "rdp"
        How spent privacy is counted. ``"pld"`` gives a tighter epsilon (typically
        8-30 % lower) and costs tens of milliseconds per query. An accountant instance
        is used as a template: the trainer starts from an empty one of the same kind.
    clipping : {"flat", "per_layer", "adaptive"}
        ``flat`` clips each unit's whole gradient to C; ``per_layer`` clips each
        layer's part to C_l (vectorized mode), and the noise uses sqrt(sum C_l^2);
        ``adaptive`` moves C toward a quantile of the norms (Andrew et al. 2021), within
        the same privacy guarantee.
    clipping_options : dict, optional
        For ``adaptive``: ``target_quantile`` (0.5), ``learning_rate`` (0.2) and
        ``count_noise`` (default expected_batch_size / 20), ``seed``.
    noise_seed : int, optional
        Seed of the noise generator (numpy SFC64, drawn one step ahead on a background
        thread). Leave it None in real training: then it is seeded from the OS. A seed
        raises a :class:`~mxprivacy.PrivacyWarning`: whoever knows it knows the noise.
    secure_mode : bool
        Noise (and the adaptive count's noise) from the operating system's
        cryptographic generator, robust to floating-point attacks (see
        :mod:`mxprivacy.gluon.noise`). Seeds are then an error.
    loss_reduction : {"sum", "mean"}
        ``"sum"`` (default): ``loss.backward()`` on the per-sample loss vector, as Gluon
        does. ``"mean"``: ``loss.mean().backward()``; each captured batch's per-sample
        gradients are multiplied by its size before clipping. A backward pass that does
        not match the declared reduction is refused at the step.
    ema_decay : float, optional
        Keep an exponential moving average of the weights (De et al. 2022; 0.9999 with
        warm-up ``min(decay, (1+t)/(10+t))``) in :attr:`average`; evaluate it inside
        ``with trainer.averaged():``. Post-processing of the private weights: free in
        privacy (see :mod:`mxprivacy.gluon.averaging`).
    """

    def __init__(self, params, optimizer, optimizer_params=None, kvstore="device",
                 compression_params=None, update_on_kvstore=None, *,
                 noise_multiplier: Optional[float] = None, max_grad_norm,
                 expected_batch_size: int,
                 sample_rate: Optional[float] = None, dataset_size: Optional[int] = None,
                 warn_epsilon: float = 10.0, warn_delta: Optional[float] = None,
                 accountant: "str | PrivacyAccountant" = "rdp",
                 noise_seed: Optional[int] = None, clipping: str = "flat",
                 clipping_options: Optional[dict] = None, secure_mode: bool = False,
                 loss_reduction: str = "sum", ema_decay: Optional[float] = None,
                 target_epsilon: Optional[float] = None, target_delta: Optional[float] = None,
                 epochs: Optional[float] = None, total_steps: Optional[int] = None,
                 sampling: str = "poisson", dist_timeout: Optional[float] = None,
                 dist_own_sampler: bool = False) -> None:
        check_options(kvstore, update_on_kvstore=update_on_kvstore, sampling=sampling,
                      clipping=clipping)
        guards.check_kvstore(kvstore)
        guards.check_compression(compression_params)
        self.expected_batch_size = guards.positive("expected_batch_size", expected_batch_size)
        self.step_sampling = guards.resolve_sampling(sampling, sample_rate, dataset_size,
                                                     self.expected_batch_size)
        self.sampling, self.sample_rate = sampling, self.step_sampling.sample_rate
        self.dataset_size = None if dataset_size is None else int(dataset_size)
        self.accountant = make_accountant(accountant, self.step_sampling.neighboring)
        self.noise_multiplier, self.privacy_plan = resolve_noise(
            noise_multiplier, self.step_sampling, accountant, target_epsilon=target_epsilon,
            target_delta=target_delta, epochs=epochs, total_steps=total_steps)
        self.warn_epsilon, self.warn_delta = guards.check_warn_options(
            warn_epsilon, warn_delta, dataset_size)
        self.secure_mode = guards.check_secure_options(secure_mode, noise_seed, clipping_options)
        self.loss_reduction = guards.check_loss_reduction(loss_reduction)
        kvstore = self._setup_distributed(kvstore, dist_timeout, dist_own_sampler)
        # Local batches are Poisson samples of the local shard: q N / W expected.
        self._size_check = guards.size_check(self.step_sampling,
                                             self.expected_batch_size / self.num_workers)
        super().__init__(params, optimizer, optimizer_params, kvstore, compression_params,
                         update_on_kvstore=False)
        self._block = guards.owning_block(self._trainable())
        self._init_average(ema_decay)
        if self.secure_mode:
            self._block.use_secure_randomness()
        self.clipping = clipping
        self._clipping_options = dict(clipping_options or {})
        if clipping == "adaptive":
            self._clipping_options.setdefault("count_noise", self.expected_batch_size / 20.0)
            self._clipping_options["secure"] = self.secure_mode
        self.max_grad_norm = max_grad_norm
        self._accumulated: Dict = {}
        self._accumulated_units = 0
        # A seed starts a family of streams: each new noise stream (first step, a change
        # of the trainable size, a resume) is keyed by (steps, streams made, loads), so
        # no stream ever replays another, even in a new trainer resumed from a checkpoint.
        self._noise_seed = noise_seed
        self._noise_streams = self._loads = 0
        self._noise = None
        self.steps = 0
        self.run_id = uuid.uuid4().hex  # lineage: checkpoints of other runs are composed
        self.nonfinite_count = 0
        self._privatized_batch: Optional[int] = None
        self._loader_examples: Optional[int] = None
        self._warned = False
        self._start_distributed()  # rank 0's weights and run id to every worker

    # -- privatization -----------------------------------------------------------------
    @property
    def max_grad_norm(self):
        """The clipping bound C (a dict of C_l for per-layer clipping; the current C
        for adaptive clipping)."""
        return getattr(self._clipping, "max_grad_norm", self._max_grad_norm)

    @property
    def gradient_noise_multiplier(self) -> float:
        """The gradient's noise multiplier: ``noise_multiplier``, except that adaptive
        clipping gives part of the total to its private count."""
        share = getattr(self._clipping, "gradient_noise_multiplier", None)
        return share(self.noise_multiplier) if share else self.noise_multiplier

    @max_grad_norm.setter
    def max_grad_norm(self, value) -> None:
        self._clipping = make_clipping(self.clipping, value, self._block,
                                       self._clipping_options)
        _ = self.gradient_noise_multiplier  # validates the count noise of adaptive clipping
        self._max_grad_norm = value

    @property
    def sensitivity(self) -> float:
        """L2 sensitivity of the clipped gradient sum (see
        :attr:`PrivateBlock.sensitivity_factor`)."""
        return self._block.sensitivity_factor * self._clipping.bound

    def allreduce_grads(self, batch_size: Optional[int] = None, *, example_ids=None) -> None:
        """Clip per unit, sum, reduce over contexts, and add noise once.

        Parameters
        ----------
        batch_size : int, optional
            When given, it must equal the number of captured examples (including those
            gathered by :meth:`accumulate` since the last step).
        example_ids : sequence of int arrays, optional
            Ties rows to examples when one example was forwarded more than once (see
            :meth:`step`).

        A call that raises leaves the captured batch in place, so a corrected call
        needs no new forward and backward pass.
        """
        self._refuse_while_averaged()
        self._check_plan()
        units, captured = self._capture_stage(batch_size, example_ids)   # 1. capture
        sums = self._merge(self._accumulated, self._clip_stage(units))   # 2. clip and sum
        self._size_check.observe(captured)
        self._check_workers_agree()  # dist kvstore: the same settings on every worker
        self._block.take_shards()  # from here on nothing raises: the step happens
        self._commit_clip()
        self._loader_examples = None
        self._accumulated, self._accumulated_units = {}, 0
        self._noise_stage(sums)                                          # 3. noise
        self._account_stage()                                            # 4. account
        self._privatized_batch = captured

    def _account_stage(self) -> None:
        """Record one step's event (and move an adaptive bound)."""
        if hasattr(self._clipping, "update"):
            self._clipping.update(self.expected_batch_size)
        self.accountant.compose(self.step_event())
        self._count_step_workers()  # W of this step, for server_epsilon

    def accumulate(self, *, example_ids=None) -> None:
        """Virtual steps: clip the physical batch just processed and keep its sum.

        Use it when a logical (sampled) batch is too large for memory. Run
        forward/backward on each physical part and call ``accumulate()`` after each.
        Then call ``step(total)`` after the last part, which may also be accumulated.
        Noise is added once per logical step, and one sampled step is accounted.
        """
        self._refuse_while_averaged()
        if not self._block.pending_shards():
            raise StaleGradientError(
                "accumulate() found no captured batch: run a recorded forward pass through "
                "the PrivateBlock and loss.backward() first.")
        units, count = self._units(example_ids)
        self._check_uncaptured_use(units)
        sums = self._clip_stage(units)
        self._block.take_shards()
        self._commit_clip()
        self._accumulated = self._merge(self._accumulated, sums)
        self._accumulated_units += count

    def _trainable(self) -> List:
        return [p for p in self._params if p.grad_req != "null"]

    # -- update ------------------------------------------------------------------------
    def update(self, batch_size: int, ignore_stale_grad: bool = False) -> None:
        """Apply the privatized gradient, divided by the expected batch size (the
        global q N with a dist kvstore), and fold the new weights into the average,
        with ``ema_decay``."""
        self._refuse_while_averaged()
        if self._privatized_batch is None:
            raise StaleGradientError(
                "update() needs a privatized gradient: call allreduce_grads() (or step()) "
                "after loss.backward().")
        if int(batch_size) != self._privatized_batch:
            raise BatchSizeMismatchError(
                f"update({batch_size}) but the privatized batch had {self._privatized_batch} "
                "samples.")
        self._check_and_rescale_grad(self._scale / self.expected_batch_size)
        self._average_before_update()
        self._update(ignore_stale_grad=False)
        self._average_after_update()
        self._privatized_batch = None
        self.steps += 1
        self._maybe_warn()

    def step(self, batch_size: int, ignore_stale_grad: bool = False, *,
             example_ids=None) -> None:
        """One DP-SGD step; ``batch_size`` must be the actual number of examples.

        ``example_ids`` is for an example forwarded more than once in one step (two
        augmented views, the two sides of a siamese pair): one int array per captured
        forward pass, in call order, giving the example (0 .. batch_size-1) of each of
        its rows. The views' gradients are summed per example before clipping, so each
        example moves the update by at most C. Two passes over the same batch:
        ``example_ids=[np.arange(B), np.arange(B)]``. Each example's loss terms must
        depend only on its own rows: losses with in-batch negatives (InfoNCE / NT-Xent,
        in-batch triplet mining) let one example move every other example's gradient,
        and are not covered.
        """
        if ignore_stale_grad:
            raise InvalidParameterError(
                "ignore_stale_grad is not supported: every parameter takes a noisy step.")
        self.allreduce_grads(batch_size, example_ids=example_ids)
        self.update(batch_size)
