"""Exception and warning classes of mxprivacy.

Every path that could weaken the privacy guarantee raises one of these, with a message
that says what to do. Nothing here imports MXNet.
"""

__all__ = [
    "MXPrivacyError",
    "InvalidParameterError",
    "UnsupportedLayerError",
    "UnsupportedEventError",
    "HybridizedCaptureError",
    "PerSampleGradientError",
    "StaleGradientError",
    "BatchSizeMismatchError",
    "ScalarLossError",
    "ForeignParameterError",
    "EmptyBatchError",
    "CheckpointError",
    "PrivacyBudgetExceeded",
    "UnreachableTargetError",
    "DatasetError",
    "SamplingError",
    "TiedParameterError",
    "UnknownValueError",
    "NonFiniteGradientWarning",
    "PrivacyWarning",
    "NonFiniteOutputWarning",
    "AveragingError",
    "ConflictingParametersError",
    "PlainTrainerError",
    "MicrobatchFallbackWarning",
    "UnknownChannelsError",
    "AuditInputError",
]


class MXPrivacyError(Exception):
    """Base class of all mxprivacy errors."""


class InvalidParameterError(MXPrivacyError, ValueError):
    """A user-supplied option is out of its valid range."""


class UnsupportedLayerError(MXPrivacyError, TypeError):
    """A layer cannot be trained privately in the requested mode."""


class UnsupportedEventError(MXPrivacyError, TypeError):
    """An accountant was given an event it cannot count."""


class PerSampleGradientError(MXPrivacyError, RuntimeError):
    """Per-sample gradients are missing, incomplete or inconsistent."""


class HybridizedCaptureError(PerSampleGradientError):
    """A hybridized graph skipped the per-sample capture of a layer."""


class StaleGradientError(PerSampleGradientError):
    """`step` was called without a fresh forward and backward pass."""


class BatchSizeMismatchError(PerSampleGradientError):
    """`step(n)` got an `n` different from the number of captured samples."""


class ScalarLossError(PerSampleGradientError):
    """The loss was reduced to a scalar, so per-sample gradients are impossible."""


class ForeignParameterError(MXPrivacyError, ValueError):
    """The trainer was given parameters that no PrivateBlock captures."""


class EmptyBatchError(MXPrivacyError, RuntimeError):
    """Poisson sampling drew an empty batch and no trainer was given to step on it."""


class CheckpointError(MXPrivacyError, RuntimeError):
    """A trainer checkpoint is unreadable or does not match this trainer."""


class PrivacyBudgetExceeded(MXPrivacyError, RuntimeError):
    """Answering would spend more privacy budget than allowed."""


class UnreachableTargetError(MXPrivacyError, ValueError):
    """No noise level reaches the requested privacy target."""


class SamplingError(MXPrivacyError, RuntimeError):
    """The batches do not match the sampling the accountant assumes."""


class TiedParameterError(PerSampleGradientError):
    """A captured parameter is also used outside its layer (weight tying)."""


class DatasetError(MXPrivacyError, OSError):
    """A data set could not be found, read or downloaded."""


class PrivacyWarning(UserWarning):
    """The guarantee is weaker than a user probably expects (for example a large epsilon)."""


class NonFiniteGradientWarning(UserWarning):
    """Some per-sample gradients were not finite and were zeroed."""


class UnknownValueError(InvalidParameterError):
    """A value at transform time lies outside what the fitted anonymizer can generalize."""


class NonFiniteOutputWarning(UserWarning):
    """NoisyOutput replaced non-finite output rows by zeros before noising them."""


class AveragingError(MXPrivacyError, RuntimeError):
    """Parameter averaging was used out of order (before it started, or training while the
    averaged weights are swapped in)."""


class ConflictingParametersError(InvalidParameterError):
    """Two options that each determine the same quantity were given together (for example
    ``noise_multiplier`` and ``target_epsilon``)."""


class PlainTrainerError(ForeignParameterError, TypeError):
    """A plain ``gluon.Trainer`` was given parameters that a PrivateBlock captures: it
    would apply raw gradients. Use ``DPTrainer``."""


class MicrobatchFallbackWarning(UserWarning):
    """``PrivateBlock(mode="auto")`` chose microbatch mode (one forward and backward pass
    per sample) because some layer has no vectorized rule."""


class UnknownChannelsError(MXPrivacyError, RuntimeError):
    """A layer that ``fix()`` put in place of BatchNorm chooses its number of groups from
    its channel count, which no batch has shown yet, and a symbolic graph needs it now.
    Run the net once on a batch first, or give the BatchNorm ``in_channels``."""


class AuditInputError(InvalidParameterError):
    """Scores, labels or settings given to ``mxprivacy.audit`` are unusable: empty, not
    finite, of mismatched lengths, or a significance or delta outside (0, 1)."""


class WorkerMismatchError(MXPrivacyError, RuntimeError):
    """The workers of a distributed DPTrainer (``kvstore="dist_sync"``) run different
    DP-SGD settings (noise, clipping, sampling rate, batch size, optimizer...). Raised on
    every worker at the same step, before any gradient is pushed."""


__all__.append("WorkerMismatchError")


class WorkersOutOfStepError(WorkerMismatchError):
    """Some workers of a distributed DPTrainer ended their process while the others
    began one more step (for example a loop left with ``break`` after a number of its
    iterations: DPDataLoader takes the steps of empty local batches by itself, so the
    workers' loops do not count the same steps). Raised at once on the workers that
    began the step, before any gradient is pushed; the others print one line on exit."""


__all__.append("WorkersOutOfStepError")


class NondeterministicDatasetError(InvalidParameterError):
    """A gluon Dataset given to a sharded DPDataLoader returned different items at two
    reads of one index (a random augmentation inside ``__getitem__``): records could not
    be assigned to workers by their content, and one could be trained on by two workers.
    Apply the augmentation with ``dataset.transform_first(fn)`` (the loader then hashes
    the untransformed records) or after the loader."""


__all__.append("NondeterministicDatasetError")


class KVStoreReleasedError(MXPrivacyError, RuntimeError):
    """A distributed kvstore was used after it was released at the process's exit (its
    C++ object, and ps-lite, are shut down)."""


__all__.append("KVStoreReleasedError")


class FederatedError(MXPrivacyError, RuntimeError):
    """A federated run (``mxprivacy.federated``) cannot go on as configured: a client,
    the strategy or the Flower runtime is in a state that would break the round or its
    privacy guarantee. The message says what to change."""


__all__.append("FederatedError")


class InvalidUpdateError(FederatedError, ValueError):
    """A client's parameter arrays (weights or update) do not match the global model:
    wrong number of arrays, wrong shape, a non-floating dtype, or NaN/inf values. The
    message names the array (index and parameter) and what was expected. A strategy
    counts such a client as rejected (it contributes zero) instead of failing the run."""


__all__.append("InvalidUpdateError")


class SecureAggregationSettingsError(InvalidParameterError):
    """Secure aggregation (SecAgg+) settings that would break the privacy guarantee or
    the protocol: a quantization too coarse for the clip norm (the client-side clip norm
    would lose more than 1 % to the quantization slack), a modulus too small for the sum
    of the clients' quantized vectors (it would wrap around), fewer than 3 clients, or a
    reconstruction threshold outside [2, num_shares). The message says which value to
    change."""


__all__.append("SecureAggregationSettingsError")


class EncryptionError(MXPrivacyError, RuntimeError):
    """Encrypted inference (``mxprivacy.encrypted``) cannot go on: a context, a plan or
    an encrypted batch does not fit the operation asked for. The message says what to
    change."""


__all__.append("EncryptionError")


class DepthError(EncryptionError, ValueError):
    """A model's multiplicative depth exceeds what a CKKS context's coefficient modulus
    chain can evaluate (each multiplication consumes one prime of the chain). Create the
    context from the plan (``plan.create_context()``) or with a larger ``depth``, or use
    fewer polynomial activations."""


__all__.append("DepthError")


class CiphertextError(EncryptionError, ValueError):
    """Bytes given as an encrypted batch, a public context or a result are not a valid
    mxprivacy envelope of that kind: tampered (digest mismatch), truncated, of another
    kind, or of another version. Nothing was parsed; ask the sender to send them
    again."""


__all__.append("CiphertextError")


class PublicContextError(EncryptionError):
    """A context given to the server side still holds the secret key, or lacks the
    Galois or relinearization keys the evaluation needs. Send ``client.public()``
    (made from a context that generated those keys)."""


__all__.append("PublicContextError")


class EncryptionWarning(UserWarning):
    """Encrypted inference may return inaccurate results: CKKS parameters leave too
    little room for the model's values (results may wrap around the modulus), or too
    little precision (a low scale). The message says which parameter to raise."""


__all__.append("EncryptionWarning")
