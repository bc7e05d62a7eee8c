"""Full-MNIST DP-SGD accuracy benchmark: MLP 784-256-10, sigma=1.1, C=1, B=256, 60 epochs.

Prints JSON (with --json, the last line) with test accuracy and the RDP epsilon at
delta=1e-5, using the defaults of `mxprivacy train` (no tuning flags).
"""
import argparse
import json

from mxprivacy.train import TrainConfig, run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=float, default=60)
    parser.add_argument("--data-dir")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cfg = TrainConfig(dataset="mnist", data_dir=args.data_dir, model="mlp", epochs=args.epochs,
                      progress=not args.json)
    result = run_training(cfg).to_dict()
    result.update({"benchmark": "mnist_mlp", "goal_accuracy": 0.921,
                   "ms_per_step": 1000 * result["seconds"] / result["steps"]})
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
