"""Plan steps (plaintext weights, evaluated on CKKS vectors) and Gluon layer conversion.

Each step knows its multiplicative depth (the rescales it consumes, measured on TenSEAL
0.3.18 from the ciphertext's level before and after) and evaluates both
on a TenSEAL ``CKKSVector`` and on a numpy vector (the plaintext reference the plan is
checked against). Activations are kept in Gluon's NCHW order, flattened: the first
convolution's channels come one after another, each in row-major window order, which is
exactly what ``Flatten`` gives in Gluon. On ciphertexts a multi-channel convolution
gives one vector per channel (a list): elementwise steps (square, polynomials) run on
each, and the next linear step multiplies each by its rows of the matrix and sums, so
the channels are never packed into one vector (TenSEAL's ``pack_vectors`` would cost a
level). Only when no linear step follows does a final :class:`PackStep` pack them.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UnsupportedLayerError

__all__ = ["ConvStep", "LinearStep", "SquareStep", "PolyStep", "PackStep", "Evaluation",
           "convert_layers", "poly_depth"]

_POLY = ("PolyActivation('square'), or PolyActivation.fit('relu' | 'tanh' | 'sigmoid', "
         "degree, input_range); mxprivacy.encrypted.to_he_friendly(net) swaps them")
_RECURRENT = ("no HE-friendly equivalent: use Dense layers with PolyActivation on a "
              "fixed-length input")
REPLACEMENTS = {
    "Activation": _POLY, "LeakyReLU": _POLY, "PReLU": _POLY, "ELU": _POLY,
    "SELU": _POLY, "GELU": _POLY, "Swish": _POLY, "BatchNormReLU": _POLY,
    "MaxPool2D": "nn.AvgPool2D with the same pool_size and strides",
    "GlobalMaxPool2D": "nn.GlobalAvgPool2D",
    "BatchNorm": ("fold it into the preceding Conv2D or Dense (at inference it is an "
                  "affine map) or remove it; to_he_friendly(net) reports it"),
    "LayerNorm": "remove it (dividing by a standard deviation is not a polynomial)",
    "InstanceNorm": "remove it (dividing by a standard deviation is not a polynomial)",
    "GroupNorm": "remove it (dividing by a standard deviation is not a polynomial)",
    "LSTM": _RECURRENT, "GRU": _RECURRENT, "RNN": _RECURRENT,
    "Embedding": "one-hot inputs and a Dense layer",
}
_SUPPORTED = ("Conv2D (first layer), Dense, Flatten, AvgPool2D, GlobalAvgPool2D, "
              "PolyActivation, Dropout (dropped at inference), nested HybridSequential")


def poly_depth(degree: int) -> int:
    """Rescales TenSEAL's ``polyval`` consumes for a polynomial of ``degree`` (measured:
    1 -> 1, 2-3 -> 2, 4-7 -> 3, i.e. ceil(log2(degree + 1)))."""
    return max(1, math.ceil(math.log2(degree + 1)))


def add_bias(vector, bias: np.ndarray):
    """``vector + bias``, the bias encrypted with the public key.

    Adding it as a plaintext list corrupts TenSEAL 0.3.18's later ``pack_vectors`` and
    ``mm`` (measured: errors of the size of the bias; the list is encoded into the slots
    those operations assume hold zeros); an encrypted bias has the vector's layout.
    """
    import tenseal as ts

    if not np.any(bias):
        return vector
    return vector + ts.ckks_vector(vector.context(), bias.tolist())


class Evaluation:
    """What the steps share while evaluating one row: the convolution's window count
    and the row's ``gain`` (decrypted value / true value).

    TenSEAL resets a ciphertext's scale to the global scale after each rescale, while
    the true scale is ``scale * scale / q`` for the prime ``q`` dropped: every rescale
    multiplies the decrypted values by ``scale / q`` (measured at degree 8192 and 29-bit
    primes: 1.00034 per rescale, 0.4 % on the MNIST logits). Conv and linear steps
    divide their plaintext weights by that factor and by the input's gain, so their
    outputs are exact; a square multiplies the gain by it (the next linear step absorbs
    it); a polynomial absorbs its input's gain in its coefficients (its own rescales
    are not corrected); the client divides the final gain out (``meta["gain"]``).
    """

    def __init__(self, ts_context, windows: Optional[int], primes) -> None:
        self.windows = windows
        self.gain = 1.0
        self._scale = float(ts_context.global_scale)
        self._data = ts_context.seal_context().data
        self._primes = primes

    def factor(self, vector) -> float:
        """``scale / q``: the gain the next rescale of ``vector`` multiplies in."""
        first = vector[0] if isinstance(vector, list) else vector
        level = self._data.get_context_data(first.ciphertext()[0].parms_id()).chain_index()
        return self._scale / self._primes[level]


class _AbsorbsGain:
    """A step whose encryption absorbs its input's gain (in its weights or
    coefficients): its output's gain is 1."""

    @staticmethod
    def next_gain(gain: float, factor) -> float:
        """The gain after this step, given the input's and the rescale's ``factor``."""
        return 1.0


def _each(vector, operation):
    """``operation`` on a vector, or on each channel's vector of a list."""
    if isinstance(vector, list):
        return [operation(channel) for channel in vector]
    return operation(vector)


class ConvStep(_AbsorbsGain):
    """First-layer Conv2D on an im2col-encoded image (one input channel). Depth 1 (the
    im2col product). Several channels give a list of vectors, one per channel."""

    depth = 1

    def __init__(self, weight: np.ndarray, bias: np.ndarray, stride: int,
                 in_hw: Tuple[int, int]) -> None:
        self.weight, self.bias, self.stride = weight, bias, stride
        kh, kw = weight.shape[1:]
        self.out_hw = ((in_hw[0] - kh) // stride + 1, (in_hw[1] - kw) // stride + 1)
        self.in_hw = in_hw

    @property
    def windows(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    def encrypted(self, vector, run: Evaluation):
        weight = self.weight / (run.factor(vector) * run.gain)
        channels = [add_bias(vector.conv2d_im2col(kernel.tolist(), run.windows),
                             np.full(run.windows, bias))
                    for kernel, bias in zip(weight, self.bias)]
        run.gain = self.next_gain(run.gain, None)
        return channels[0] if len(channels) == 1 else channels

    def plain(self, image: np.ndarray) -> np.ndarray:
        kh, kw = self.weight.shape[1:]
        (oh, ow), s = self.out_hw, self.stride
        patches = np.stack([image[0, i * s:i * s + kh, j * s:j * s + kw].reshape(-1)
                            for i in range(oh) for j in range(ow)])      # (windows, kh*kw)
        out = patches @ self.weight.reshape(len(self.weight), -1).T + self.bias
        return out.T.reshape(-1)                                          # channel-major

    def __repr__(self) -> str:
        return (f"Conv(im2col, {len(self.weight)} channels, kernel "
                f"{self.weight.shape[1:]}, stride {self.stride})")


class LinearStep(_AbsorbsGain):
    """``y = x @ matrix + bias`` with plaintext weights (Dense, average pooling, or
    several of them merged)."""

    depth = 1

    def __init__(self, matrix: np.ndarray, bias: Optional[np.ndarray], name: str) -> None:
        self.matrix = matrix
        self.bias = np.zeros(matrix.shape[1]) if bias is None else bias
        self.name = name

    def then(self, other: "LinearStep") -> "LinearStep":
        """One step for ``self`` followed by ``other`` (saves a level)."""
        return LinearStep(self.matrix @ other.matrix, self.bias @ other.matrix + other.bias,
                          f"{self.name}+{other.name}")

    def encrypted(self, vector, run: Evaluation):
        matrix = self.matrix / (run.factor(vector) * run.gain)
        run.gain = self.next_gain(run.gain, None)
        if not isinstance(vector, list):
            return add_bias(vector.mm(matrix.tolist()), self.bias)
        rows = len(matrix) // len(vector)      # one block of rows per channel
        total = None
        for index, channel in enumerate(vector):
            part = channel.mm(matrix[index * rows:(index + 1) * rows].tolist())
            total = part if total is None else total + part
        return add_bias(total, self.bias)

    def plain(self, x: np.ndarray) -> np.ndarray:
        return x @ self.matrix + self.bias

    def __repr__(self) -> str:
        return f"Linear({self.name}: {self.matrix.shape[0]} -> {self.matrix.shape[1]})"


class SquareStep:
    depth = 1

    @staticmethod
    def next_gain(gain: float, factor: float) -> float:
        return gain ** 2 * factor

    def encrypted(self, vector, run: Evaluation):
        run.gain = self.next_gain(run.gain, run.factor(vector))
        return _each(vector, lambda channel: channel.square())

    def plain(self, x: np.ndarray) -> np.ndarray:
        return x * x

    def __repr__(self) -> str:
        return "Square"


class PolyStep(_AbsorbsGain):
    def __init__(self, coefficients: Sequence[float]) -> None:
        self.coefficients = [float(c) for c in coefficients]
        self.depth = poly_depth(len(self.coefficients) - 1)

    def encrypted(self, vector, run: Evaluation):
        coefficients = [c / run.gain ** i for i, c in enumerate(self.coefficients)]
        run.gain = self.next_gain(run.gain, None)
        return _each(vector, lambda channel: channel.polyval(coefficients))

    def plain(self, x: np.ndarray) -> np.ndarray:
        return np.polynomial.polynomial.polyval(x, self.coefficients)

    def __repr__(self) -> str:
        return f"Poly(degree {len(self.coefficients) - 1})"


class PackStep:
    """The channels' vectors packed into one (TenSEAL's ``pack_vectors``, which
    multiplies by masks: depth 1, measured). Ends a plan whose multi-channel
    convolution no linear step follows."""

    depth = 1

    @staticmethod
    def next_gain(gain: float, factor: float) -> float:
        return gain * factor

    def encrypted(self, vector, run: Evaluation):
        import tenseal as ts

        if not isinstance(vector, list):
            return vector
        run.gain = self.next_gain(run.gain, run.factor(vector))
        return ts.CKKSVector.pack_vectors(vector)

    def plain(self, x: np.ndarray) -> np.ndarray:
        return x

    def __repr__(self) -> str:
        return "Pack"


def _unsupported(layer, position: int, reason: str = "") -> UnsupportedLayerError:
    name = type(layer).__name__
    fix = REPLACEMENTS.get(name)
    text = f"Layer {position} ({name}: {layer!r}) cannot be evaluated on ciphertexts"
    text += f": {reason}" if reason else ""
    if fix:
        return UnsupportedLayerError(f"{text}. Replace it by {fix}.")
    return UnsupportedLayerError(f"{text}. Supported layers: {_SUPPORTED}.")


def flatten_layers(net) -> List:
    """The leaf layers of ``net`` in call order (Sequential containers are opened)."""
    from mxnet.gluon import nn

    if isinstance(net, (nn.HybridSequential, nn.Sequential)):
        return [leaf for child in net._children.values() for leaf in flatten_layers(child)]
    return [net]


def convert_layers(net, input_shape: Tuple[int, ...]) -> Tuple[List, Tuple[int, ...]]:
    """Plan steps for ``net`` on rows of ``input_shape``, and the output shape.
    UnsupportedLayerError names the first layer that cannot be evaluated."""
    steps: List = []
    shape = tuple(input_shape)
    for position, layer in enumerate(flatten_layers(net)):
        new_steps, shape = _convert_one(layer, position, shape, steps)
        for step in new_steps:
            if isinstance(step, LinearStep) and steps and isinstance(steps[-1], LinearStep):
                steps[-1] = steps[-1].then(step)
            else:
                steps.append(step)
    if steps and isinstance(steps[0], ConvStep) and len(steps[0].weight) > 1 and \
            not any(isinstance(step, LinearStep) for step in steps):
        steps.append(PackStep())
    return steps, shape


def _poly_step(layer):
    coefficients = tuple(layer.coefficients)
    return SquareStep() if coefficients == (0.0, 0.0, 1.0) else PolyStep(coefficients)


def _fused_activation(layer, position) -> List:
    """The step of a fused ``act`` (Dense/Conv2D ``activation=``): a PolyActivation
    (what ``to_he_friendly`` puts there) is evaluated after the layer; anything else is
    refused."""
    from ..gluon.poly import PolyActivation

    act = getattr(layer, "act", None)
    if act is None:
        return []
    if isinstance(act, PolyActivation):
        return [_poly_step(act)]
    raise _unsupported(layer, position, f"a built-in activation ({act!r}): run "
                       "mxprivacy.encrypted.to_he_friendly(net) to make it a "
                       "PolyActivation, or use activation=None and a PolyActivation "
                       f"layer after it; replace the activation by {_POLY}")


def _convert_one(layer, position: int, shape, steps) -> Tuple[List, Tuple[int, ...]]:
    from mxnet.gluon import nn

    from ..gluon.poly import PolyActivation

    if isinstance(layer, nn.Dropout):
        return [], shape
    if isinstance(layer, nn.Flatten):
        return [], (int(np.prod(shape)),)
    if isinstance(layer, PolyActivation):
        return [_poly_step(layer)], shape
    if isinstance(layer, nn.Conv2D):
        step, shape = _conv(layer, position, shape, steps)
    elif isinstance(layer, nn.Dense):
        step, shape = _dense(layer, position, shape)
    elif type(layer) in (nn.AvgPool2D, nn.GlobalAvgPool2D):
        step, shape = _avg_pool(layer, position, shape)
    else:
        raise _unsupported(layer, position)
    return [step] + _fused_activation(layer, position), shape


def _conv(layer, position, shape, steps):
    kw_ = layer._kwargs
    if steps:
        raise _unsupported(layer, position, "only the first layer can be a Conv2D (the "
                           "im2col encoding of the input). Replace later convolutions by "
                           "Dense layers")
    problems = []
    if kw_["layout"] != "NCHW":
        problems.append(f"layout {kw_['layout']} (use NCHW)")
    if tuple(kw_["pad"]) != (0, 0):
        problems.append(f"padding {kw_['pad']} (pad the images before encrypting, and "
                        "use padding=0)")
    if tuple(kw_["dilate"]) != (1, 1) or kw_["num_group"] != 1:
        problems.append("dilation or groups (use dilation=1, groups=1)")
    if kw_["stride"][0] != kw_["stride"][1]:
        problems.append(f"unequal strides {kw_['stride']} (use one stride for both axes)")
    if len(shape) != 3 or shape[0] != 1:
        problems.append(f"input shape {shape} (the im2col encoding takes one channel: "
                        "(1, height, width))")
    if problems:
        raise _unsupported(layer, position, "; ".join(problems))
    weight = layer.weight.data().asnumpy().astype(np.float64)[:, 0]
    bias = (np.zeros(len(weight)) if layer.bias is None
            else layer.bias.data().asnumpy().astype(np.float64))
    step = ConvStep(weight, bias, int(kw_["stride"][0]), shape[1:])
    if min(step.out_hw) < 1:
        raise _unsupported(layer, position, f"the kernel is larger than the input {shape}")
    return step, (len(weight),) + step.out_hw


def _dense(layer, position, shape):
    if not layer._flatten and len(shape) != 1:
        raise _unsupported(layer, position, f"flatten=False on an input of shape {shape} "
                           "(use flatten=True, or a Flatten layer before it)")
    weight = layer.weight.data().asnumpy().astype(np.float64)        # (units, in)
    bias = None if layer.bias is None else layer.bias.data().asnumpy().astype(np.float64)
    return LinearStep(weight.T, bias, "Dense"), (weight.shape[0],)


def _avg_pool(layer, position, shape):
    kw_ = layer._kwargs
    if len(shape) != 3:
        raise _unsupported(layer, position, f"average pooling needs a (C, H, W) input, "
                           f"got {shape}")
    channels, height, width = shape
    if kw_["global_pool"]:
        (kh, kw), (sh, sw) = (height, width), (1, 1)
    else:
        (kh, kw), (sh, sw) = kw_["kernel"], kw_["stride"]
        if tuple(kw_["pad"]) != (0, 0) or kw_["layout"] != "NCHW":
            raise _unsupported(layer, position, "padding or a non-NCHW layout (use "
                               "padding=0, layout='NCHW')")
        if kw_["pooling_convention"] != "valid" and ((height - kh) % sh or (width - kw) % sw):
            raise _unsupported(layer, position, "ceil_mode=True with a partial window "
                               "(use ceil_mode=False)")
    oh, ow = (height - kh) // sh + 1, (width - kw) // sw + 1
    matrix = np.zeros((channels * height * width, channels * oh * ow))
    for c in range(channels):
        for i in range(oh):
            for j in range(ow):
                out = (c * oh + i) * ow + j
                for a in range(kh):
                    row = (c * height + i * sh + a) * width + j * sw
                    matrix[row:row + kw, out] = 1.0 / (kh * kw)
    return LinearStep(matrix, None, "AvgPool"), (channels, oh, ow)
