"""`mxprivacy federated-demo` options: bad arguments are one-line errors with exit code 2,
the parser stays light, and the options reach DemoConfig (no Flower run here: see
test_demo.py for the end-to-end runs)."""
import dataclasses
import subprocess
import sys

import pytest

from mxprivacy.cli import build_parser, main
from mxprivacy.federated import cli as fed_cli
from mxprivacy.federated.demo import DEFAULT_NOISE_MULTIPLIER, DemoConfig

BAD = [
    (["--clients", "1"], "--clients: expected an integer >= 2"),
    (["--clients", "ten"], "--clients: expected an integer >= 2"),
    (["--rounds", "0"], "--rounds: expected an integer >= 1"),
    (["--rounds", "2.5"], "--rounds: expected an integer >= 1"),
    (["--sample-rate", "0"], "--sample-rate: expected a rate in (0, 1]"),
    (["--sample-rate", "1.5"], "--sample-rate: expected a rate in (0, 1]"),
    (["--sample-rate", "nan"], "--sample-rate: expected a rate in (0, 1]"),
    (["--clip-norm", "0"], "--clip-norm: expected a finite number > 0"),
    (["--clip-norm", "inf"], "--clip-norm: expected a finite number > 0"),
    (["--noise-multiplier", "-1"], "--noise-multiplier: expected a finite number >= 0"),
    (["--target-epsilon", "0"], "--target-epsilon: expected a finite number > 0"),
    (["--noise-multiplier", "1", "--target-epsilon", "3"],
     "--target-epsilon: not allowed with argument --noise-multiplier"),
    (["--delta", "1"], "--delta: expected a delta in (0, 1)"),
    (["--delta", "0"], "--delta: expected a delta in (0, 1)"),
    (["--classes-per-client", "0"], "--classes-per-client: expected an integer >= 1"),
    (["--local-epochs", "0"], "--local-epochs: expected an integer >= 1"),
    (["--lr", "-0.1"], "--lr: expected a finite number > 0"),
    (["--dataset", "cifar"], "--dataset: invalid choice: 'cifar'"),
    (["--accountant", "gdp"], "--accountant: invalid choice: 'gdp'"),
    (["--no-dp", "--noise-multiplier", "1"],
     "--no-dp) trains without privacy, so noise_multiplier (--noise-multiplier) would be "
     "ignored"),
    (["--no-dp", "--target-epsilon", "1"], "so target_epsilon (--target-epsilon) would be"),
    (["--no-dp", "--secure-aggregation"],
     "so secure_aggregation (--secure-aggregation) would be ignored"),
    (["--unknown-flag"], "unrecognized arguments: --unknown-flag"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys, monkeypatch):
    def no_run(cfg, print_fn=print):  # a bad argument must fail before anything runs
        raise AssertionError("run_demo called with a bad argument")
    monkeypatch.setattr("mxprivacy.federated.demo.run_demo", no_run)
    assert main(["federated-demo"] + argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("mxprivacy: error: ") and err.count("\n") == 1
    assert message in err


def test_options_reach_the_config(monkeypatch, capsys):
    args = build_parser().parse_args(
        ["federated-demo", "--dataset", "mnist", "--clients", "12", "--rounds", "7",
         "--sample-rate", "0.25", "--clip-norm", "2", "--target-epsilon", "4", "--delta",
         "1e-6", "--secure-aggregation", "--iid", "--classes-per-client", "3",
         "--local-epochs", "4", "--batch-size", "8", "--lr", "0.05",
         "--server-learning-rate", "0.7", "--accountant", "pld", "--partition-seed", "5",
         "--seed", "6", "--no-progress"])
    cfg = fed_cli._config(args)
    assert cfg == DemoConfig(dataset="mnist", clients=12, rounds=7, sample_rate=0.25,
                             clip_norm=2.0, target_epsilon=4.0, delta=1e-6,
                             secure_aggregation=True, iid=True, classes_per_client=3,
                             local_epochs=4, batch_size=8, lr=0.05, server_learning_rate=0.7,
                             accountant="pld", partition_seed=5, seed=6, progress=False)
    assert cfg.sigma() is None  # calibrated by DPFedAvg from target_epsilon


def test_defaults_are_the_demo_configs():
    args = build_parser().parse_args(["federated-demo"])
    cfg = fed_cli._config(args)
    assert cfg == DemoConfig()
    assert cfg.dp and not cfg.iid and not cfg.secure_aggregation and cfg.clients >= 10
    assert cfg.sigma() == DEFAULT_NOISE_MULTIPLIER > 0  # private by default


def test_parser_imports_neither_mxnet_nor_flower():
    code = ("import sys; from mxprivacy.cli import build_parser; "
            "build_parser().parse_args(['federated-demo', '--rounds', '2']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'mxnet', 'flwr', 'ray'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


BAD_CONFIGS = [
    (dict(clients=1), "clients must be an integer >= 2"),
    (dict(clients=True), "clients must be an integer >= 2"),
    (dict(rounds=0), "rounds must be an integer >= 1"),
    (dict(sample_rate=0.0), "sample_rate must be a finite number in (0, 1]"),
    (dict(clip_norm=float("nan")), "clip_norm must be a finite number > 0"),
    (dict(noise_multiplier=-0.5), "noise_multiplier must be a finite number >= 0"),
    (dict(noise_multiplier=1.0, target_epsilon=2.0), "not both"),
    (dict(delta=0.0), "delta must be a finite number in (0, 1)"),
    (dict(dataset="cifar"), "dataset must be one of"),
    (dict(accountant="gdp"), "accountant must be one of"),
    (dict(partition_seed=-1), "partition_seed must be an integer >= 0"),
    (dict(dp=False, secure_aggregation=True), "would be ignored"),
]


@pytest.mark.parametrize("kwargs, message", BAD_CONFIGS,
                         ids=[str(k) for k, _ in BAD_CONFIGS])
def test_demo_config_validation(kwargs, message):
    from mxprivacy.errors import InvalidParameterError

    with pytest.raises(InvalidParameterError, match=message.replace("(", r"\(").replace(
            ")", r"\)").replace("[", r"\[")):
        DemoConfig(**kwargs).validate()


def test_help_shows_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["federated-demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = {f.name: f.default for f in dataclasses.fields(DemoConfig)}
    assert f"(default {defaults['clip_norm']:g})" in text
    assert f"sigma (default {DEFAULT_NOISE_MULTIPLIER:g})" in text
