"""DP-SGD for Gluon: PrivateBlock, DPTrainer, rules, validators and Poisson sampling."""
from . import rules
from .rules import conv as _conv_rules  # noqa: F401  (explicit rule registration)
from .rules import dense as _dense_rules  # noqa: F401
from .rules import embedding as _embedding_rules  # noqa: F401
from .rules import norm as _norm_rules  # noqa: F401
from .rules import affine as _affine_rules  # noqa: F401
from .rules import poly as _poly_rules  # noqa: F401
from .affine import ChannelAffine
from .averaging import ParameterAverage
from .devices import split_and_load
from .fixer import fix
from .norms import per_sample_grad_norms, per_sample_grads
from .private_block import PrivateBlock
from .rules import GradRule, register_grad_rule
from .sampling import DPDataLoader, FixedSizeBatchSampler, PoissonBatchSampler
from .rnn import DPGRU, DPLSTM, DPRNN
from .trainer import DPTrainer
from .poly import PolyActivation
from .noisy_output import NoisyOutput  # noqa: F401  (also mxprivacy.NoisyOutput)
from .validators import validate

__all__ = ["PrivateBlock", "DPTrainer", "GradRule", "register_grad_rule", "rules",
           "per_sample_grad_norms", "per_sample_grads", "DPDataLoader",
           "PoissonBatchSampler", "FixedSizeBatchSampler", "validate", "fix", "DPLSTM", "DPGRU", "DPRNN",
           "ParameterAverage", "ChannelAffine", "split_and_load", "PolyActivation"]
