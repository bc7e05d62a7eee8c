"""Encrypted inference for Gluon models with CKKS homomorphic encryption (TenSEAL).

The client holds the secret key; the server evaluates the model on ciphertexts with a
public context (no secret key) and returns encrypted logits only the client can read::

    plan = EncryptedModel.from_gluon(net, input_shape=(1, 28, 28))  # support + depth checked
    client = plan.create_context()          # client: CKKS parameters from plan.depth
    server_ctx = client.public()            # bytes-serializable, no secret key
    enc = client.encrypt(x)
    enc_out = plan.predict(enc, context=server_ctx)   # server side
    logits = client.decrypt(enc_out)

- ``EncryptedModel`` (:mod:`.plan`, steps in :mod:`._layers`): first ``Conv2D`` by
  im2col, ``Dense``, ``Flatten``, average pooling, ``PolyActivation``.
- ``EncryptionContext``, ``PublicContext``, ``choose_parameters`` (:mod:`.context`).
- ``EncryptedBatch`` (:mod:`.serialize`): checksummed, versioned bytes; never pickled.
- ``to_he_friendly`` (:mod:`.convert`): swap ReLU/tanh/sigmoid and max pooling for
  ``PolyActivation`` and average pooling, with a report.
- ``he_friendly_mnist_net``, ``train_he_friendly`` (:mod:`.models`): TenSEAL's tutorial
  network in Gluon, trained in plaintext or with DP-SGD.

Encryption protects the *input* from the server. The client still learns the model's
outputs: DP training (``PrivateBlock`` + ``DPTrainer``, which support
``PolyActivation``) protects the training data in them.

Importing this package loads neither TenSEAL nor MXNet: names load on first use.
"""
from __future__ import annotations

from .._lazy import lazy_names

_LAZY = {
    "EncryptedModel": "plan",
    "EncryptionContext": "context",
    "PublicContext": "context",
    "CKKSParameters": "context",
    "choose_parameters": "context",
    "EncryptedBatch": "serialize",
    "to_he_friendly": "convert",
    "LayerFix": "convert",
    "he_friendly_mnist_net": "models",
    "train_he_friendly": "models",
    "HETrainResult": "models",
}

__all__, __getattr__, __dir__ = lazy_names(__name__, _LAZY)
