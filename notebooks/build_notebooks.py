"""Build (and execute) the notebooks from their cell sources: `python notebooks/build_notebooks.py`."""
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from audit_notebook import AUDIT  # notebooks/ is sys.path[0] when run as a script
from encrypted_notebook import ENCRYPTED
from federated_notebook import FEDERATED

HERE = Path(__file__).resolve().parent

QUICKSTART = [
    ("md", "# DP-SGD quickstart on digits\n\nTrain a small MLP on scikit-learn's digits with "
           "differential privacy, compare it with the same model trained without privacy, and "
           "watch ε grow over the steps. Sizes are small, so the notebook runs in seconds."),
    ("code", "import os\nimport matplotlib.pyplot as plt\nimport mxnet as mx\nfrom mxnet import autograd, gluon, nd\n"
             "from mxprivacy.train import TrainConfig, run_training, build_model, load_dataset\n\n"
             "EPOCHS = int(os.environ.get('MXPRIVACY_NB_EPOCHS', 30))\nDELTA = 1e-5"),
    ("md", "## Private training\n`run_training` uses the standard Gluon loop with `PrivateBlock` and "
           "`DPTrainer` (see the README). We record test accuracy and ε after every epoch."),
    ("code", "cfg = TrainConfig(dataset='digits', epochs=EPOCHS, batch_size=64, noise_multiplier=1.1,\n"
             "                  max_grad_norm=1.0, lr=0.5, delta=DELTA, progress=False, history=True)\n"
             "private = run_training(cfg)\n"
             "print(f'private: accuracy {private.test_accuracy:.3f} at epsilon {private.epsilon:.2f} '\n"
             "      f'(delta={DELTA}) after {private.steps} steps, mode={private.mode}')"),
    ("md", "## Non-private baseline\nThe same network, optimizer and number of steps with a plain "
           "`gluon.Trainer` and shuffled fixed-size batches."),
    ("code", "(xtr, ytr), (xte, yte) = load_dataset('digits')\nmx.random.seed(0)\n"
             "net = build_model('mlp'); net.initialize(mx.init.Xavier())\n"
             "trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.5})\n"
             "loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()\n"
             "loader = gluon.data.DataLoader(gluon.data.ArrayDataset(xtr, ytr), batch_size=64, shuffle=True)\n"
             "baseline_curve = []\nfor epoch in range(EPOCHS):\n    for x, y in loader:\n"
             "        with autograd.record():\n            loss = loss_fn(net(x), y)\n"
             "        loss.backward()\n        trainer.step(x.shape[0])\n"
             "    acc = float((net(nd.array(xte)).argmax(axis=1).asnumpy() == yte).mean())\n"
             "    baseline_curve.append(acc)\nprint(f'non-private: accuracy {baseline_curve[-1]:.3f}')"),
    ("md", "## Training curve and privacy spent"),
    ("code", "steps = [p['step'] for p in private.curve]\n"
             "fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))\n"
             "ax1.plot(range(1, EPOCHS + 1), [p['test_accuracy'] for p in private.curve], label='DP-SGD')\n"
             "ax1.plot(range(1, EPOCHS + 1), baseline_curve, label='non-private')\n"
             "ax1.set_xlabel('epoch'); ax1.set_ylabel('test accuracy'); ax1.legend()\nax1.set_title('Test accuracy: DP-SGD against non-private')\n"
             "ax2.plot(steps, [p['epsilon'] for p in private.curve])\n"
             "ax2.set_xlabel('step'); ax2.set_ylabel(f'epsilon at delta={DELTA}')\nax2.set_title('Privacy spent during training (RDP)')\nplt.tight_layout(); plt.show()"),
    ("code", "print(f'accuracy cost of privacy: {baseline_curve[-1] - private.test_accuracy:+.3f} '\n"
             "      f'for epsilon={private.epsilon:.2f}')"),
]

ACCOUNTING = [
    ("md", "# Privacy accounting: RDP against PLD, and noise calibration\n\n"
           "How ε grows with training for several noise multipliers σ (MNIST-sized: N = 60,000, "
           "expected batch 256, δ = 1e-5), how much tighter the PLD accountant is than the "
           "moments (RDP) accountant, and how to pick σ for a target ε. Everything here is "
           "pure numpy/scipy: no MXNet needed."),
    ("code", "import time\nimport matplotlib.pyplot as plt\nimport numpy as np\n"
             "from mxprivacy.accounting import (GaussianEvent, PLDAccountant, PoissonSampledEvent,\n"
             "                                  RDPAccountant, calibrate_noise_multiplier, epsilon_for)\n\n"
             "N, BATCH, DELTA = 60000, 256, 1e-5\nQ = BATCH / N\nSTEPS_PER_EPOCH = int(np.ceil(N / BATCH))\n"
             "EPOCHS = [1, 2, 5, 10, 20, 40, 60, 100]\nSIGMAS = [0.8, 1.1, 2.0]"),
    ("md", "## ε against epochs\nSolid lines: PLD (connect-the-dots discretization, FFT "
           "composition). Dashed: RDP with the improved conversion. Both are upper bounds: the "
           "lower curve is the better one."),
    ("code", "curves = {}\nfor sigma in SIGMAS:\n"
             "    curves[sigma] = {name: [epsilon_for(sigma, Q, e * STEPS_PER_EPOCH, DELTA, name) for e in EPOCHS]\n"
             "                     for name in ('rdp', 'pld')}\n"
             "fig, ax = plt.subplots(figsize=(6, 4))\n"
             "for sigma, color in zip(SIGMAS, ['C0', 'C1', 'C2']):\n"
             "    ax.plot(EPOCHS, curves[sigma]['pld'], color=color, label=f'PLD, sigma={sigma}')\n"
             "    ax.plot(EPOCHS, curves[sigma]['rdp'], color=color, ls='--', label=f'RDP, sigma={sigma}')\n"
             "ax.set_xlabel('epochs'); ax.set_ylabel(f'epsilon at delta={DELTA}'); ax.set_xscale('log')\n"
             "ax.set_yscale('log'); ax.legend(fontsize=8)\nax.set_title('Epsilon over training, MNIST (q = 256/60000)')\nplt.tight_layout(); plt.show()"),
    ("code", "print('sigma  epochs   RDP eps   PLD eps   PLD saves')\n"
             "for sigma in SIGMAS:\n    for i, e in enumerate(EPOCHS):\n"
             "        if e in (10, 60):\n            r, p = curves[sigma]['rdp'][i], curves[sigma]['pld'][i]\n"
             "            print(f'{sigma:5}  {e:6}  {r:8.3f}  {p:8.3f}  {1 - p / r:8.1%}')"),
    ("md", "## The cost of a query\nRDP is microseconds once the curve of an event is cached; PLD "
           "pays for an FFT over the composed distribution."),
    ("code", "event = PoissonSampledEvent(Q, GaussianEvent(1.1))\n"
             "for acc in (RDPAccountant(), PLDAccountant()):\n"
             "    acc.compose(event, 60 * STEPS_PER_EPOCH)\n"
             "    start = time.perf_counter(); eps = acc.get_epsilon(DELTA)\n"
             "    print(f'{type(acc).__name__}: epsilon {eps:.4f} in {1e3 * (time.perf_counter() - start):.1f} ms')"),
    ("md", "## Calibration for a target ε\n`calibrate_noise_multiplier` returns the smallest σ "
           "(within 0.5 %) whose ε does not exceed the target. PLD needs less noise for the "
           "same guarantee."),
    ("code", "targets = [0.5, 1.0, 2.0, 4.0, 8.0]\nsteps = 60 * STEPS_PER_EPOCH\n"
             "calibrated = {name: [calibrate_noise_multiplier(t, DELTA, Q, steps=steps, accountant=name)\n"
             "                     for t in targets] for name in ('rdp', 'pld')}\n"
             "for t, s_rdp, s_pld in zip(targets, calibrated['rdp'], calibrated['pld']):\n"
             "    achieved = epsilon_for(s_pld, Q, steps, DELTA, 'pld')\n"
             "    print(f'target {t:4}: sigma RDP {s_rdp:.3f}, PLD {s_pld:.3f} (PLD epsilon {achieved:.3f})')\n"
             "fig, ax = plt.subplots(figsize=(5, 3.5))\n"
             "ax.plot(targets, calibrated['rdp'], 'o--', label='RDP'); ax.plot(targets, calibrated['pld'], 'o-', label='PLD')\n"
             "ax.set_xlabel('target epsilon (60 epochs)'); ax.set_ylabel('noise multiplier'); ax.legend()\nax.set_title('Calibrated noise for a target epsilon')\n"
             "plt.tight_layout(); plt.show()"),
]

OUTPUT_NOISE = [
    ("md", "# Output noise with a privacy budget: `NoisyOutput`\n\n"
           "A trained classifier answers queries. `NoisyOutput` clips each answered row (its "
           "softmax scores) to a norm bound, adds noise calibrated to (ε, δ) at sensitivity "
           "2 × bound, and charges every row to a budget. Anything that moves a row within the "
           "bound is hidden: a different input, a different model, and so also the training "
           "data behind the model. Here: accuracy of noisy labels and noisy scores against ε, "
           "then a budget running out."),
    ("code", "import os\nimport matplotlib.pyplot as plt\nimport mxnet as mx\nimport numpy as np\n"
             "from mxnet import autograd, gluon, nd\n"
             "from mxprivacy import NoisyOutput, PrivacyBudgetExceeded\n"
             "from mxprivacy.mechanisms import ReportNoisyMax\n"
             "from mxprivacy.train import build_model, load_dataset\n\n"
             "EPOCHS = int(os.environ.get('MXPRIVACY_NB_EPOCHS', 20))\nmx.random.seed(0)"),
    ("md", "## A classifier to protect\nAn MLP on scikit-learn's digits, trained normally. The "
           "released rows are its softmax probabilities: L1 norm 1 and L2 norm at most 1."),
    ("code", "(xtr, ytr), (xte, yte) = load_dataset('digits')\n"
             "net = build_model('mlp'); net.initialize(mx.init.Xavier())\n"
             "trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.5})\n"
             "loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()\n"
             "loader = gluon.data.DataLoader(gluon.data.ArrayDataset(xtr, ytr), batch_size=64, shuffle=True)\n"
             "for epoch in range(EPOCHS):\n    for x, y in loader:\n"
             "        with autograd.record():\n            loss = loss_fn(net(x), y)\n"
             "        loss.backward(); trainer.step(x.shape[0])\n\n"
             "class Probabilities(gluon.Block):\n    def __init__(self, net):\n"
             "        super().__init__(); self.net = net\n"
             "    def forward(self, x):\n        return nd.softmax(self.net(x))\n\n"
             "model = Probabilities(net)\nX = nd.array(xte)\n"
             "clean = model(X).asnumpy()\nprint(f'clean test accuracy: {(clean.argmax(1) == yte).mean():.3f} on {len(yte)} rows')"),
    ("md", "## Utility against ε per answered row\nLabels: Gaussian (L2 bound 1, δ = 1e-6) "
           "and Laplace (L1 bound 1) noise on the scores, then arg-max (`mode='label'`); and the "
           "exponential mechanism (`ReportNoisyMax`; each score moves by at most 1). Scores: the "
           "L1 error of the noisy probability vector. The budget here is generous: this part "
           "measures utility."),
    ("code", "EPSILONS = [0.1, 0.3, 1.0, 3.0, 10.0, 30.0]\nrows = {k: [] for k in ('gaussian', 'laplace', 'exponential', 'score_error')}\n"
             "for eps in EPSILONS:\n"
             "    for mech, delta in (('gaussian', 1e-6), ('laplace', 0.0)):\n"
             "        wrapped = NoisyOutput(model, mechanism=mech, epsilon=eps, delta=delta, output_bound=1.0,\n"
             "                              budget_epsilon=1e6, budget_delta=1e-5, mode='label', accountant='rdp',\n"
             "                              random_state=0)\n"
             "        rows[mech].append(float((wrapped(X).asnumpy() == yte).mean()))\n"
             "    rnm = ReportNoisyMax(eps, sensitivity=1.0, random_state=0)\n"
             "    rows['exponential'].append(float((rnm(clean) == yte).mean()))\n"
             "    scores = NoisyOutput(model, epsilon=eps, delta=1e-6, output_bound=1.0, budget_epsilon=1e6,\n"
             "                         budget_delta=1e-5, accountant='rdp', random_state=0)(X).asnumpy()\n"
             "    rows['score_error'].append(float(np.abs(scores - clean).sum(axis=1).mean()))\n"
             "fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))\n"
             "for key, label in (('gaussian', 'Gaussian label'), ('laplace', 'Laplace label'), ('exponential', 'exponential mechanism')):\n"
             "    ax1.plot(EPSILONS, rows[key], 'o-', label=label)\n"
             "ax1.axhline((clean.argmax(1) == yte).mean(), color='k', ls=':', label='no noise')\n"
             "ax1.set_xscale('log'); ax1.set_xlabel('epsilon per row'); ax1.set_ylabel('accuracy'); ax1.legend(fontsize=8)\nax1.set_title('Label accuracy under output noise')\n"
             "ax2.plot(EPSILONS, rows['score_error'], 'o-'); ax2.set_xscale('log'); ax2.set_yscale('log')\n"
             "ax2.set_xlabel('epsilon per row'); ax2.set_ylabel('mean L1 error of noisy scores (Gaussian)')\nax2.set_title('Error of noisy scores')\n"
             "plt.tight_layout(); plt.show()\n"
             "for i, eps in enumerate(EPSILONS):\n"
             "    print(f\"eps={eps:5}: gaussian {rows['gaussian'][i]:.3f}  laplace {rows['laplace'][i]:.3f}  \"\n"
             "          f\"exponential {rows['exponential'][i]:.3f}  score L1 error {rows['score_error'][i]:.2f}\")"),
    ("md", "## A budget running out\nBudget ε = 8 at δ = 1e-5 and ε = 1 per row. Gaussian rows "
           "compose through the PLD accountant. That pays for more rows than the 8 (8 rows at ε = 1) "
           "that basic composition would allow. The first row over the budget is refused "
           "before the model runs."),
    ("code", "guarded = NoisyOutput(model, epsilon=1.0, delta=1e-6, output_bound=1.0, budget_epsilon=8.0,\n"
             "                      budget_delta=1e-5, mode='label', random_state=0)\n"
             "spent = []\nanswered = 0\ntry:\n    while True:\n"
             "        guarded(X[answered:answered + 1]); answered += 1\n"
             "        spent.append(guarded.spent()[0])\n"
             "except PrivacyBudgetExceeded as exc:\n    print('refused:', exc)\n"
             "print(f'answered {answered} rows; spent epsilon {guarded.spent()[0]:.3f} of 8 '\n"
             "      f'(basic composition would stop after 8 rows)')\n"
             "fig, ax = plt.subplots(figsize=(5, 3.5))\n"
             "ax.plot(range(1, answered + 1), spent, label='PLD composition')\n"
             "ax.plot(range(1, answered + 1), np.arange(1, answered + 1) * 1.0, ls='--', label='basic composition')\n"
             "ax.axhline(8.0, color='k', ls=':', label='budget'); ax.set_ylim(0, 12)\n"
             "ax.set_xlabel('rows answered'); ax.set_ylabel('epsilon spent'); ax.legend()\nax.set_title('Budget spent by NoisyOutput')\nplt.tight_layout(); plt.show()"),
]

FAST_TRAINING = [
    ("md", "# Fast DP training of the MNIST CNN\n\n"
           "Opacus' MNIST CNN trained with DP-SGD through the vectorized fast path. We look at "
           "three things: the per-sample gradient norms (to choose the clipping bound C), "
           "accuracy against ε for several noise multipliers σ, and the cost of a DP step "
           "against a hybridized non-private step. Sizes are small here (a subset of MNIST, "
           "a few epochs); `benchmarks/mnist_accuracy.py` runs the full 60 epochs."),
    ("code", "import os, time\nimport matplotlib.pyplot as plt\nimport mxnet as mx\nimport numpy as np\n"
             "from mxnet import autograd, gluon, nd\n"
             "import mxprivacy\nfrom mxprivacy import DPTrainer, PrivateBlock\n"
             "from mxprivacy.train import TrainConfig, build_model, load_dataset, run_training\n\n"
             "EPOCHS = int(os.environ.get('MXPRIVACY_NB_EPOCHS', 5))\n"
             "LIMIT = int(os.environ.get('MXPRIVACY_NB_LIMIT', 20000))  # training examples used\n"
             "(xtr, ytr), (xte, yte) = load_dataset('mnist', train_limit=LIMIT)\n"
             "print(f'{len(xtr)} training and {len(xte)} test images; {EPOCHS} epochs')"),
    ("md", "## Per-sample gradient norms, to choose C\n`mxprivacy.per_sample_grad_norms` "
           "gives one norm per example for a plain network (here at initialization and after "
           "one epoch of ordinary training). Clipping near the median keeps the direction of "
           "most gradients and bounds the rest."),
    ("code", "mx.random.seed(0)\nnet = build_model('cnn'); net.initialize(mx.init.Xavier())\n"
             "loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()\nx, y = nd.array(xtr[:512]), nd.array(ytr[:512])\n"
             "before = mxprivacy.per_sample_grad_norms(net, loss_fn, x, y).asnumpy()\n"
             "trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1})\n"
             "for start in range(0, len(xtr), 256):\n"
             "    xb, yb = nd.array(xtr[start:start + 256]), nd.array(ytr[start:start + 256])\n"
             "    with autograd.record():\n        loss = loss_fn(net(xb), yb)\n"
             "    loss.backward(); trainer.step(xb.shape[0])\n"
             "after = mxprivacy.per_sample_grad_norms(net, loss_fn, x, y).asnumpy()\n"
             "fig, ax = plt.subplots(figsize=(6, 3.5))\n"
             "bins = np.geomspace(1e-3, max(before.max(), after.max()), 50)\n"
             "ax.hist(before, bins=bins, alpha=0.6, label='at initialization')\n"
             "ax.hist(after, bins=bins, alpha=0.6, label='after one epoch')\n"
             "ax.axvline(1.0, color='k', ls=':', label='C = 1'); ax.set_xscale('log')\n"
             "ax.set_xlabel('per-sample gradient norm'); ax.set_ylabel('samples'); ax.legend()\nax.set_title('Per-sample gradient norms against the bound C')\nplt.tight_layout(); plt.show()\n"
             "print('median norm: at init %.2f, after one epoch %.2f' % (np.median(before), np.median(after)))"),
    ("md", "## Privacy against utility\nThe same CNN trained with DP-SGD (C = 1, expected "
           "batch 256, δ = 1e-5) for several σ. The RDP accountant gives ε."),
    ("code", "results = []\nfor sigma in (0.6, 0.8, 1.1, 2.0):\n"
             "    cfg = TrainConfig(dataset='mnist', model='cnn', epochs=EPOCHS, noise_multiplier=sigma,\n"
             "                      lr=0.5, batch_size=256, max_grad_norm=1.0, momentum=0.0,\n"
             "                      activation='relu', inputs='standardized', train_limit=LIMIT, progress=False)\n"
             "    r = run_training(cfg)\n"
             "    results.append((sigma, r.epsilon, r.test_accuracy, 1000 * r.seconds / r.steps))\n"
             "    print(f'sigma={sigma}: epsilon={r.epsilon:.2f}  accuracy={r.test_accuracy:.4f}  '\n"
             "          f'({1000 * r.seconds / r.steps:.1f} ms/step)')\n"
             "fig, ax = plt.subplots(figsize=(5, 3.5))\n"
             "ax.plot([r[1] for r in results], [r[2] for r in results], 'o-')\n"
             "for sigma, eps, acc, _ in results:\n    ax.annotate(f'sigma={sigma}', (eps, acc))\n"
             "ax.set_xlabel('epsilon (delta=1e-5)'); ax.set_ylabel('test accuracy'); ax.set_xscale('log')\nax.set_title('Privacy against utility, MNIST CNN')\n"
             "plt.tight_layout(); plt.show()"),
    ("md", "## Speed against non-private training\nOne step at batch 256, the median of 10, "
           "measured side by side: a hybridized `gluon.Trainer` step and a DP step "
           "(`PrivateBlock`, vectorized per-sample gradients, clipping and noise)."),
    ("code", "xb, yb = nd.array(xtr[:400]), nd.array(ytr[:400])\n"
             "rng = np.random.default_rng()  # DP steps take Poisson batch sizes, as DPDataLoader draws them\n\n"
             "def median_ms(step, repeats=10):\n    for _ in range(3):\n        step()\n    nd.waitall(); times = []\n"
             "    for _ in range(repeats):\n        start = time.perf_counter(); step(); nd.waitall()\n"
             "        times.append(time.perf_counter() - start)\n    return 1000 * float(np.median(times))\n\n"
             "plain = build_model('cnn'); plain.initialize(mx.init.Xavier()); plain.hybridize(static_alloc=True)\n"
             "plain_trainer = gluon.Trainer(plain.collect_params(), 'sgd', {'learning_rate': 0.1})\n"
             "private = build_model('cnn'); private.initialize(mx.init.Xavier()); private = PrivateBlock(private)\n"
             "dp_trainer = DPTrainer(private.collect_params(), 'sgd', {'learning_rate': 0.1}, noise_multiplier=1.1,\n"
             "                       max_grad_norm=1.0, expected_batch_size=256, dataset_size=60000)\n\n"
             "def plain_step():\n    with autograd.record():\n        loss = loss_fn(plain(xb[:256]), yb[:256])\n"
             "    loss.backward(); plain_trainer.step(256)\n\n"
             "def dp_step():\n    n = int(rng.binomial(60000, 256 / 60000))\n"
             "    with autograd.record():\n        loss = loss_fn(private(xb[:n]), yb[:n])\n"
             "    loss.backward(); dp_trainer.step(n)\n\n"
             "times = {'non-private (hybridized)': median_ms(plain_step), 'DP-SGD (vectorized)': median_ms(dp_step)}\n"
             "fig, ax = plt.subplots(figsize=(5, 2.5)); ax.barh(list(times), list(times.values()))\n"
             "ax.set_xlabel('ms per step (batch 256)'); ax.set_ylabel('training step')\nax.set_title('Step time, measured side by side')\nplt.tight_layout(); plt.show()\n"
             "ratio = times['DP-SGD (vectorized)'] / times['non-private (hybridized)']\n"
             "print({k: round(v, 2) for k, v in times.items()}, f'ratio {ratio:.2f}x')"),
]

ANONYMIZATION = [
    ("md", "# Anonymizing UCI Adult: k-anonymity, utility, and data minimization\n\n"
           "`KAnonymizer` (Mondrian) on the 8 usual quasi-identifiers. We show three things: "
           "the information loss (NCP) against k, the accuracy of a Gluon classifier trained "
           "on anonymized data against k, and a `DataMinimizer` report (which features a "
           "trained model does not need, at 99 % of its accuracy)."),
    ("code", "import os, time\nimport matplotlib.pyplot as plt\nimport mxnet as mx\nimport numpy as np\nimport pandas as pd\n"
             "from mxnet import autograd, gluon, nd\n"
             "from mxprivacy.datasets import load_adult\n"
             "from mxprivacy.preprocessing import DataMinimizer, KAnonymizer, check_k_anonymity\n\n"
             "EPOCHS = int(os.environ.get('MXPRIVACY_NB_EPOCHS', 5))\n"
             "QIS = ['age', 'education-num', 'marital-status', 'occupation', 'race', 'sex',\n"
             "       'hours-per-week', 'native-country']\n"
             "train, test = load_adult(), load_adult(split='test')\n"
             "print(len(train), 'training rows,', len(test), 'test rows')"),
    ("md", "## Information loss against k"),
    ("code", "KS = [2, 5, 10, 25, 50, 100]\nrows = []\nfor k in KS:\n"
             "    anon = KAnonymizer(QIS, k).fit(train)\n"
             "    rows.append(dict(k=k, ncp=anon.report_['ncp'], classes=anon.report_['classes'],\n"
             "                     seconds=anon.report_['seconds']))\n"
             "table = pd.DataFrame(rows); print(table.round(4).to_string(index=False))\n"
             "fig, ax = plt.subplots(figsize=(5, 3.5)); ax.plot(table.k, table.ncp, 'o-')\n"
             "ax.set_xscale('log'); ax.set_xlabel('k'); ax.set_ylabel('NCP (0 = original, 1 = all suppressed)')\nax.set_title('Information loss of k-anonymity (Mondrian)')\n"
             "plt.tight_layout(); plt.show()"),
    ("md", "## A Gluon classifier trained on anonymized data\nThe training quasi-identifiers "
           "are replaced by their class representatives (median or mode), "
           "`output='representative'`. The model is then evaluated on the original test "
           "rows, as it would be used in practice."),
    ("code", "NUMERIC = ['age', 'education-num', 'hours-per-week', 'capital-gain', 'capital-loss']\n"
             "CATEGORICAL = ['workclass', 'marital-status', 'occupation', 'relationship', 'race', 'sex', 'native-country']\n"
             "dummies = pd.get_dummies(train[CATEGORICAL]).columns\n"
             "mean, std = train[NUMERIC].mean(), train[NUMERIC].std()\n\n"
             "def encode(frame):\n"
             "    cats = pd.get_dummies(frame[CATEGORICAL]).reindex(columns=dummies, fill_value=0)\n"
             "    nums = (frame[NUMERIC].astype(float) - mean) / std\n"
             "    return np.hstack([nums.to_numpy(), cats.to_numpy(dtype=float)]).astype(np.float32)\n\n"
             "def fit_classifier(frame, seed=0):\n"
             "    mx.random.seed(seed)\n    x, y = encode(frame), (frame['income'] == '>50K').to_numpy().astype(np.float32)\n"
             "    net = gluon.nn.HybridSequential(); net.add(gluon.nn.Dense(64, activation='relu'), gluon.nn.Dense(2))\n"
             "    net.initialize(mx.init.Xavier()); net.hybridize()\n"
             "    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 0.003})\n"
             "    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()\n"
             "    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(x, y), batch_size=256, shuffle=True)\n"
             "    for _ in range(EPOCHS):\n        for xb, yb in loader:\n"
             "            with autograd.record():\n                loss = loss_fn(net(xb), yb)\n"
             "            loss.backward(); trainer.step(xb.shape[0])\n    return net\n\n"
             "def accuracy(net, frame):\n"
             "    pred = net(nd.array(encode(frame))).argmax(axis=1).asnumpy()\n"
             "    return float((pred == (frame['income'] == '>50K').to_numpy()).mean())\n\n"
             "results = [(1, accuracy(fit_classifier(train), test))]\n"
             "for k in [5, 10, 50, 100]:\n"
             "    anonymized = KAnonymizer(QIS, k, output='representative').fit_transform(train)\n"
             "    assert check_k_anonymity(anonymized, QIS) >= k\n"
             "    results.append((k, accuracy(fit_classifier(anonymized), test)))\n"
             "for k, acc in results:\n    print(f'k={k:4}: test accuracy {acc:.4f}')\n"
             "fig, ax = plt.subplots(figsize=(5, 3.5)); ax.plot([r[0] for r in results], [r[1] for r in results], 'o-')\n"
             "ax.set_xscale('log'); ax.set_xlabel('k (1 = original data)'); ax.set_ylabel('test accuracy')\nax.set_title('Classifier trained on k-anonymous data')\n"
             "plt.tight_layout(); plt.show()"),
    ("md", "## Data minimization at 99 % of the model's accuracy\nThe model trained on the "
           "original data is asked which features it needs, and how precisely. `drop` means "
           "the feature need not be collected: one representative value replaces it."),
    ("code", "model = fit_classifier(train)\n"
             "def predict(frame):\n    return net_predict(model, frame)\n"
             "def net_predict(net, frame):\n    return net(nd.array(encode(frame))).argmax(axis=1).asnumpy()\n\n"
             "features = NUMERIC + CATEGORICAL\nsample = train.sample(8000, random_state=0)\n"
             "minimizer = DataMinimizer(predict, target_accuracy=0.99, features=features)\n"
             "start = time.perf_counter(); minimizer.fit(sample, (sample['income'] == '>50K').to_numpy())\n"
             "print(f'{time.perf_counter() - start:.1f} s; accuracy {minimizer.accuracy_:.4f} of '\n"
             "      f'{minimizer.baseline_accuracy_:.4f} (target {0.99 * minimizer.baseline_accuracy_:.4f})')\n"
             "report = pd.DataFrame([dict(feature=f, action=d['action'],\n"
             "                            detail=len(d.get('ranges', d.get('groups', []))) or '',\n"
             "                            accuracy=round(d['accuracy'], 4))\n"
             "                       for f, d in minimizer.generalizations_.items()])\n"
             "print(report.to_string(index=False))\n"
             "print('test accuracy on minimized test data:', accuracy(model, minimizer.transform(test)))"),
]


def build(name, cells, execute=True):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    if execute:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(HERE)}}).execute()
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    execute = "--no-exec" not in sys.argv
    wanted = [a for a in sys.argv[1:] if not a.startswith("--")]
    for filename, cells in [("01_dp_sgd_quickstart.ipynb", QUICKSTART),
                            ("02_privacy_accounting.ipynb", ACCOUNTING),
                            ("03_fast_dp_training.ipynb", FAST_TRAINING),
                            ("04_anonymization.ipynb", ANONYMIZATION),
                            ("05_output_noise.ipynb", OUTPUT_NOISE),
                            ("06_privacy_audit.ipynb", AUDIT),
                            ("07_federated.ipynb", FEDERATED),
                            ("08_encrypted_inference.ipynb", ENCRYPTED)]:
        if not wanted or any(w in filename for w in wanted):
            build(filename, cells, execute=execute)
