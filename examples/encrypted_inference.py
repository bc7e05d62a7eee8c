"""Encrypted MNIST inference: the server scores images it never sees.

The server owns an HE-friendly Gluon model (TenSEAL's tutorial network, trained here on
MNIST, or loaded from MXNet ``.params`` with ``--model``). The client owns the images and
the secret key. Everything that crosses between them is bytes:

1. client -> server: the public context (no secret key) and the encrypted images;
2. server -> client: the encrypted logits, which only the client can decrypt.

Prints, per image, the plaintext prediction (the model run in the clear, for
comparison) against the decrypted one, then latency and sizes. ``--json`` prints one
JSON object instead. MNIST is read from ``MXPRIVACY_DATA`` (or ~/.mxprivacy/data).

    python examples/encrypted_inference.py --images 4
    python examples/encrypted_inference.py --model mnist_he.params --json
"""
import argparse
import json
import sys
import time

import mxnet as mx
import numpy as np

from mxprivacy.encrypted import (EncryptedBatch, EncryptedModel, PublicContext,
                                 he_friendly_mnist_net, train_he_friendly)
from mxprivacy.encrypted.models import RECIPE, accuracy
from mxprivacy.train import load_dataset


def server_model(args, train, test):
    """The server's trained network (Gluon) and its plaintext test accuracy."""
    mx.random.seed(args.seed)
    net = he_friendly_mnist_net()
    if args.model:
        net.load_parameters(args.model)     # MXNet's own format; never unpickle input
        return net, accuracy(net, *test)
    result = train_he_friendly(net, train, test, seed=args.seed,
                               **dict(RECIPE, epochs=args.epochs))
    if args.save:
        net.save_parameters(args.save)
    return net, result.test_accuracy


def server_predict(plan, server_ctx, batch_bytes: bytes) -> bytes:
    """The server: bytes in, bytes out. It never holds the secret key."""
    batch = EncryptedBatch.from_bytes(batch_bytes, "input")  # refuses tampered bytes
    return plan.predict(batch, context=server_ctx).serialize()


def run(args) -> dict:
    train, test = load_dataset("mnist", inputs="unit")
    net, test_accuracy = server_model(args, train, test)
    plan = EncryptedModel.from_gluon(net, input_shape=(1, 28, 28))  # checks layers, depth

    # client: a key pair sized for the plan (the server publishes its depth, slots and
    # input encoding, not its weights); the secret key stays here
    start = time.perf_counter()
    client = plan.create_context()
    context_bytes = client.public().serialize()
    images, labels = test[0][:args.images], test[1][:args.images].astype(int)
    encrypt_start = time.perf_counter()
    batch_bytes = client.encrypt(images).serialize()
    encrypted = time.perf_counter()

    server_ctx = PublicContext.from_bytes(context_bytes)   # once; refuses a secret key
    sent = time.perf_counter()
    result_bytes = server_predict(plan, server_ctx, batch_bytes)
    returned = time.perf_counter()

    logits = client.decrypt(EncryptedBatch.from_bytes(result_bytes, "output"))
    done = time.perf_counter()

    plain = net(mx.nd.array(images)).asnumpy().astype(np.float64)   # for comparison only
    relative = np.abs(logits - plain).max(axis=1) / np.abs(plain).max(axis=1)
    return {
        "images": len(images), "labels": labels.tolist(),
        "plaintext_predictions": plain.argmax(1).tolist(),
        "encrypted_predictions": logits.argmax(1).tolist(),
        "max_relative_error": float(relative.max()),
        "plaintext_test_accuracy": test_accuracy,
        "ms": {"keys_and_public_context": 1e3 * (encrypt_start - start),
               "encrypt_per_image": 1e3 * (encrypted - encrypt_start) / len(images),
               "server_loads_public_context": 1e3 * (sent - encrypted),
               "server_per_image": 1e3 * (returned - sent) / len(images),
               "decrypt_per_image": 1e3 * (done - returned) / len(images)},
        "bytes": {"public_context": len(context_bytes),
                  "encrypted_input_per_image": len(batch_bytes) / len(images),
                  "encrypted_output_per_image": len(result_bytes) / len(images)},
    }


def print_report(report: dict) -> None:
    print(f"plaintext test accuracy of the model: {report['plaintext_test_accuracy']:.4f}")
    print("image  label  plaintext  decrypted")
    for i, (label, p, e) in enumerate(zip(report["labels"], report["plaintext_predictions"],
                                          report["encrypted_predictions"])):
        print(f"{i:5}  {label:5}  {p:9}  {e:9}")
    print(f"largest relative error of the decrypted logits: "
          f"{report['max_relative_error']:.2e} (|a - b| / max|b| per image)")
    ms, size = report["ms"], report["bytes"]
    print(f"ms per image: encrypt {ms['encrypt_per_image']:.0f}, server "
          f"{ms['server_per_image']:.0f}, decrypt {ms['decrypt_per_image']:.1f} "
          f"(once: keys and public context {ms['keys_and_public_context']:.0f} ms, the "
          f"server loads it in {ms['server_loads_public_context']:.0f} ms)")
    print(f"bytes: public context {size['public_context']:,} (sent once), per image "
          f"{size['encrypted_input_per_image']:,.0f} in, {size['encrypted_output_per_image']:,.0f} out")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=4, help="test images to score")
    parser.add_argument("--epochs", type=float, default=RECIPE["epochs"])
    parser.add_argument("--model", help="load these MXNet .params instead of training")
    parser.add_argument("--save", help="save the trained parameters (.params)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.images < 1 or args.epochs <= 0:
        parser.error("--images must be >= 1 and --epochs > 0")
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
