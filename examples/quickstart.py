"""The README quickstart on scikit-learn's digits: two changed lines make the loop private."""
import mxnet as mx
from mxnet import autograd, gluon

import mxprivacy
from mxprivacy.train import load_dataset

(x_train, y_train), (x_test, y_test) = load_dataset("digits")
net = gluon.nn.HybridSequential()
net.add(gluon.nn.Dense(256, activation="relu"), gluon.nn.Dense(10))
net.initialize(mx.init.Xavier())

net = mxprivacy.PrivateBlock(net)                                   # changed line 1
trainer = mxprivacy.DPTrainer(net.collect_params(), "sgd", {"learning_rate": 0.5},  # line 2
                              noise_multiplier=1.1, max_grad_norm=1.0,
                              expected_batch_size=64, dataset_size=len(x_train))
loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
for epoch in range(10):
    loader = mxprivacy.DPDataLoader((x_train, y_train), expected_batch_size=64, trainer=trainer)
    for x, y in loader:
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(x.shape[0])
accuracy = (net(mx.nd.array(x_test)).argmax(axis=1).asnumpy() == y_test).mean()
print(f"test accuracy {accuracy:.3f} at epsilon {trainer.epsilon(delta=1e-5):.2f} (delta=1e-5)")
