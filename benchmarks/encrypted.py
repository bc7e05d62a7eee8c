"""Encrypted MNIST inference (CKKS, TenSEAL): cost per image, sizes, and agreement.

The model is :func:`mxprivacy.encrypted.he_friendly_mnist_net` (TenSEAL's tutorial net:
Conv2D 4x7x7 stride 3 -> square -> Dense 64 -> square -> Dense 10) trained with
``RECIPE`` on MNIST (inputs in [0, 1]; ``MXPRIVACY_DATA`` for the files), or loaded with
``--model PATH`` (MXNet ``.params``, as ``--save PATH`` writes them). The CKKS parameters are ``plan.create_context()``'s
defaults (degree 16384, 40-bit scale for this depth-6 plan) unless ``--degree``,
``--scale-bits``, ``--integer-bits`` are given: ``--degree 8192 --scale-bits 26
--integer-bits 5`` is the chain of TenSEAL's MNIST tutorial ([31, 26 x 6, 31]).

Every ciphertext crosses the client-server boundary as bytes (``serialize`` /
``from_bytes``), as in ``examples/encrypted_inference.py``. Measured, on this machine:

- ``one_image``: one image per batch: ms to encrypt (client), evaluate (server, with the
  public context parsed from bytes beforehand), decrypt (client); bytes of the input and
  output ciphertexts and of the public context;
- ``batch``: a batch of ``--batch`` rows (default 64). The plan puts one image per
  ciphertext (im2col fills the slots with one image's windows), so a batch costs about
  ``rows`` times one image: reported per image;
- ``agreement`` (``--images N``, the first N MNIST test images, in batches of
  ``--batch``): the largest relative error ``max_j |a_j - b_j| / max_j |b_j|`` per row
  (a decrypted, b plaintext logits), how many arg-maxes agree, and the accuracy of both
  on those N images; the plaintext accuracy on the whole test set is always reported.

For comparison (``reference`` in the output), TenSEAL's published figures for the same
network: its "Tutorial 4 - Encrypted Convolution on MNIST" (degree 8192, chain [31, 26 x 6,
31], scale 2^26) reports 2 s per encrypted inference on an Intel i7-3612QM, an encrypted
input of about 476 KB and a result of about 70 KB, and 97.48 % (9748/10000) encrypted
test accuracy; the TenSEAL paper (Benaissa et al. 2021, arXiv:2104.03152) says an
encrypted CNN on MNIST "can be evaluated in less than a second, using less than half a
megabyte of communication". Our default context (degree 16384, 40-bit scale) doubles the
ring and carries more bits per prime, for the 1e-3 agreement.

Prints a table, or one JSON object with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

TENSEAL_TUTORIAL = {
    "source": "OpenMined/TenSEAL, tutorials/Tutorial 4 - Encrypted Convolution on MNIST.ipynb",
    "poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [31] + [26] * 6 + [31],
    "seconds_per_image": 2.0, "cpu": "Intel i7-3612QM",
    "encrypted_input_bytes": 476e3, "encrypted_output_bytes": 70e3,
    "encrypted_test_accuracy": 0.9748}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def relative_errors(decrypted: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """Per row: ``max |a - b| / max |b|``."""
    return np.abs(decrypted - plain).max(axis=1) / np.abs(plain).max(axis=1)


def load_model(args, train, test):
    import mxnet as mx

    from mxprivacy.encrypted import he_friendly_mnist_net, train_he_friendly
    from mxprivacy.encrypted.models import RECIPE, accuracy

    mx.random.seed(args.seed)
    net = he_friendly_mnist_net()
    if args.model:
        net.load_parameters(args.model)     # MXNet's own format, never a pickle
        return net, {"loaded": args.model, "test_accuracy": accuracy(net, *test)}
    recipe = dict(RECIPE, epochs=args.epochs if args.epochs is not None else RECIPE["epochs"])
    result = train_he_friendly(net, train, test, seed=args.seed, **recipe)
    if args.save:
        net.save_parameters(args.save)
    return net, {"trained_seconds": result.seconds, "epochs": recipe["epochs"],
                 "test_accuracy": result.test_accuracy}


def round_trip(plan, client, server_ctx, x: np.ndarray) -> dict:
    """Encrypt, evaluate and decrypt ``x`` through bytes; times in seconds."""
    from mxprivacy.encrypted import EncryptedBatch

    t0 = time.perf_counter()
    sent = client.encrypt(x).serialize()
    t1 = time.perf_counter()
    result = plan.predict(EncryptedBatch.from_bytes(sent, "input"), context=server_ctx)
    returned = result.serialize()
    t2 = time.perf_counter()
    logits = client.decrypt(EncryptedBatch.from_bytes(returned, "output"))
    t3 = time.perf_counter()
    return {"logits": logits, "encrypt": t1 - t0, "evaluate": t2 - t1, "decrypt": t3 - t2,
            "input_bytes": len(sent), "output_bytes": len(returned)}


def _per_image(run: dict, rows: int) -> dict:
    return {"rows": rows,
            **{f"{k}_ms_per_image": 1e3 * run[k] / rows for k in ("encrypt", "evaluate",
                                                                  "decrypt")},
            "input_bytes_per_image": run["input_bytes"] / rows,
            "output_bytes_per_image": run["output_bytes"] / rows}


def agreement(net, plan, client, server_ctx, x, y, batch: int) -> dict:
    import mxnet as mx

    decrypted, runs = [], []
    for start in range(0, len(x), batch):
        run = round_trip(plan, client, server_ctx, x[start:start + batch])
        decrypted.append(run.pop("logits"))
        runs.append(run)
        print(f"  {start + len(decrypted[-1])}/{len(x)} images", file=sys.stderr, flush=True)
    decrypted = np.concatenate(decrypted)
    plain = net(mx.nd.array(x)).asnumpy().astype(np.float64)
    errors = relative_errors(decrypted, plain)
    agree = int((decrypted.argmax(1) == plain.argmax(1)).sum())
    total = {k: sum(r[k] for r in runs) for k in runs[0]}
    return {"images": len(x), "max_relative_error": float(errors.max()),
            "median_relative_error": float(np.median(errors)),
            "argmax_agree": agree, "argmax_agree_fraction": agree / len(x),
            "plaintext_accuracy": float((plain.argmax(1) == y).mean()),
            "encrypted_accuracy": float((decrypted.argmax(1) == y).mean()),
            "per_image": _per_image(total, len(x))}


def run(args) -> dict:
    from mxprivacy.encrypted import EncryptedModel, PublicContext
    from mxprivacy.train import load_dataset

    train, test = load_dataset("mnist", inputs="unit")
    net, model = load_model(args, train, test)
    plan = EncryptedModel.from_gluon(net, input_shape=(1, 28, 28))
    t0 = time.perf_counter()
    options = {"poly_modulus_degree": args.degree, "scale_bits": args.scale_bits,
               "integer_bits": args.integer_bits}
    client = plan.create_context(**{k: v for k, v in options.items() if v is not None})
    context_bytes = client.public().serialize()
    t1 = time.perf_counter()
    server_ctx = PublicContext.from_bytes(context_bytes)
    t2 = time.perf_counter()
    x_test, y_test = test
    one = round_trip(plan, client, server_ctx, x_test[:1])
    report = {
        "model": model, "depth": plan.depth,
        "context": {"poly_modulus_degree": client.poly_modulus_degree,
                    "coeff_mod_bit_sizes": list(client.parameters.coeff_mod_bit_sizes),
                    "scale_bits": client.parameters.scale_bits,
                    "public_context_bytes": len(context_bytes),
                    "create_and_serialize_ms": 1e3 * (t1 - t0),
                    "server_load_ms": 1e3 * (t2 - t1)},
        "one_image": _per_image(one, 1),
        "reference": TENSEAL_TUTORIAL,
    }
    if args.images:
        report["agreement"] = agreement(net, plan, client, server_ctx, x_test[:args.images],
                                        y_test[:args.images], args.batch)
        if args.images >= args.batch:
            report["batch"] = dict(report["agreement"]["per_image"], rows=args.batch)
    if "batch" not in report and args.batch > 1:
        batch = round_trip(plan, client, server_ctx, x_test[:args.batch])
        report["batch"] = _per_image(batch, args.batch)
    return report


def print_table(report: dict) -> None:
    ctx, model = report["context"], report["model"]
    print(f"model: plaintext test accuracy {model['test_accuracy']:.4f}; depth "
          f"{report['depth']}; degree {ctx['poly_modulus_degree']}, chain "
          f"{ctx['coeff_mod_bit_sizes']}; public context {ctx['public_context_bytes']:,} bytes")
    print(f"{'rows/batch':>10}  {'encrypt ms':>10}  {'server ms':>10}  {'decrypt ms':>10}  "
          f"{'in bytes':>11}  {'out bytes':>10}   (per image)")
    for key in ("one_image", "batch"):
        if key in report:
            r = report[key]
            print(f"{r['rows']:>10}  {r['encrypt_ms_per_image']:10.1f}  "
                  f"{r['evaluate_ms_per_image']:10.1f}  {r['decrypt_ms_per_image']:10.1f}  "
                  f"{r['input_bytes_per_image']:11,.0f}  {r['output_bytes_per_image']:10,.0f}")
    ref = report["reference"]
    print(f"TenSEAL's tutorial (degree {ref['poly_modulus_degree']}, chain "
          f"{ref['coeff_mod_bit_sizes']}, {ref['cpu']}): {1e3 * ref['seconds_per_image']:.0f} "
          f"ms per image, {ref['encrypted_input_bytes']:,.0f} bytes in, "
          f"{ref['encrypted_output_bytes']:,.0f} out")
    if "agreement" in report:
        a = report["agreement"]
        print(f"agreement on {a['images']} test images: max relative error "
              f"{a['max_relative_error']:.2e}, arg-max {a['argmax_agree']}/{a['images']}, "
              f"accuracy plaintext {a['plaintext_accuracy']:.4f} / encrypted "
              f"{a['encrypted_accuracy']:.4f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=0,
                        help="agreement on the first N MNIST test images (about 5 s each)")
    parser.add_argument("--batch", type=int, default=64, help="rows per encrypted batch")
    parser.add_argument("--epochs", type=float, default=None, help="default: RECIPE's")
    parser.add_argument("--model", help="load MXNet .params instead of training")
    parser.add_argument("--save", help="save the trained parameters (.params)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--degree", type=int, help="poly_modulus_degree (default: chosen)")
    parser.add_argument("--scale-bits", type=int, help="CKKS scale, bits (default 40)")
    parser.add_argument("--integer-bits", type=int, help="bits above the scale (default 20)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.images < 0 or args.batch < 1 or (args.epochs is not None and args.epochs <= 0):
        parser.error("--images must be >= 0, --batch >= 1 and --epochs > 0")
    sys.path.insert(0, ROOT)
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
