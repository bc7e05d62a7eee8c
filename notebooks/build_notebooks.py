"""Build (and execute) the notebooks from their cell sources: `python notebooks/build_notebooks.py`."""
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent

QUICKSTART = [
    ("md", "# DP-SGD quickstart on digits\n\nTrain a small MLP on scikit-learn's digits with "
           "differential privacy, compare it with the same model trained without privacy, and "
           "watch ε grow over the steps. Sizes are small, so the notebook runs in seconds."),
    ("code", "import os\nimport matplotlib.pyplot as plt\nimport mxnet as mx\nfrom mxnet import autograd, gluon, nd\n"
             "import mxprivacy\nfrom mxprivacy.train import TrainConfig, run_training, build_model, load_dataset\n\n"
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
             "ax1.set_xlabel('epoch'); ax1.set_ylabel('test accuracy'); ax1.legend()\n"
             "ax2.plot(steps, [p['epsilon'] for p in private.curve])\n"
             "ax2.set_xlabel('step'); ax2.set_ylabel(f'epsilon at delta={DELTA}')\nplt.tight_layout(); plt.show()"),
    ("code", "print(f'accuracy cost of privacy: {baseline_curve[-1] - private.test_accuracy:+.3f} '\n"
             "      f'for epsilon={private.epsilon:.2f}')"),
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
    build("01_dp_sgd_quickstart.ipynb", QUICKSTART, execute="--no-exec" not in sys.argv)
