"""Per-sample gradient norms of a plain network, to choose the clipping bound C."""
from __future__ import annotations

from mxnet import autograd, nd

from ..errors import ScalarLossError
from .private_block import PrivateBlock
from .shards import check_no_raw_gradient

__all__ = ["per_sample_grad_norms", "per_sample_grads"]


def _capture(net, loss_fn, data, label, mode: str):
    wrapped = PrivateBlock(net, mode=mode)
    saved = {p: [g.copy() for g in p.list_grad()] for p in net.collect_params().values()
             if p.grad_req != "null" and p._data is not None}
    try:
        with autograd.record():
            loss = loss_fn(wrapped(data), label)
        if loss.ndim != 1 or loss.shape[0] != data.shape[0]:
            raise ScalarLossError(
                f"The loss has shape {loss.shape}, but per-sample gradients need one loss per "
                f"sample, shape ({data.shape[0]},). Do not reduce it with mean() or sum().")
        loss.backward()
        (shard,) = wrapped.take_shards()
        shard.check_fresh()
        check_no_raw_gradient(shard)
        return shard
    finally:
        wrapped.release()
        for param, grads in saved.items():
            for grad, old in zip(param.list_grad(), grads):
                grad[:] = old


def per_sample_grad_norms(net, loss_fn, data, label, *, mode: str = "auto") -> nd.NDArray:
    """L2 norm of each sample's whole gradient, shape (B,).

    Parameters
    ----------
    net : gluon.Block
        A plain initialized network (not wrapped); it is left as it was.
    loss_fn : callable
        ``loss_fn(output, label)`` returning one loss per sample, shape (B,).
    data, label : NDArray
    mode : {"auto", "vectorized", "microbatch"}
    """
    return nd.sqrt(_capture(net, loss_fn, data, label, mode).unit_sq_norms())


def per_sample_grads(net, loss_fn, data, label, *, mode: str = "auto") -> dict:
    """Dict Parameter name -> (B, *shape) per-sample gradients (diagnostics, tests)."""
    shard = _capture(net, loss_fn, data, label, mode)
    return {p.name: g for p, g in shard.per_unit_grads().items()}
