"""The mlp head: a one-hidden-layer perceptron trained in torch, all values of a sweep's stage side by side.

The recipe is scikit-learn's ``MLPClassifier`` with its defaults: ReLU, Glorot-uniform initialisation, Adam (step
1e-3), minibatches of min(200, n) rows reshuffled every epoch, the L2 penalty ``alpha`` / 2 * ||W||^2 divided by the
minibatch's size, a single logistic output unit for two classes (else a softmax), at most 300 epochs; with early
stopping, 10% of the rows (stratified) are held out, the weights of the best held-out accuracy are kept and training
stops after ``n_iter_no_change`` epochs (10) without a gain of 1e-4; without it, it stops after as many epochs in
which the training loss fell by less than 1e-4.

What differs is how it runs. The products run in bfloat16 where the hardware has it (the weights, Adam and the
loss stay in float32; scikit-learn's fit runs in float64), on a CUDA GPU when one is visible, forward and backward
written out for the two layers. :func:`fit_many` trains one model per value of ``alpha`` from the same initial
weights on the same minibatches (as separate fits with one seed would), epoch by epoch, each model through a whole
epoch at a time so that its weights and optimiser state stay in the CPU's cache; a model that stops leaves. A
fitted model predicts with numpy, in float32, from its weights.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from tlcache.sweep import SweptClassifier
from tlcache.threads import adaptive_threads, one_thread

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class MLPHead(ClassifierMixin, BaseEstimator):
    """One hidden layer of ``hidden`` ReLU units; a logistic output unit for two classes, else a softmax. See the
    module's docstring for the recipe."""

    def __init__(
        self,
        hidden: int = 512,
        alpha: float = 1e-4,
        early_stopping: bool = True,
        max_iter: int = 300,
        batch_size: int = 200,
        learning_rate: float = 1e-3,
        tol: float = 1e-4,
        n_iter_no_change: int = 10,
        validation_fraction: float = 0.1,
        device: str = "auto",
        random_state: int | None = 0,
    ):
        self.hidden = hidden
        self.alpha = alpha
        self.early_stopping = early_stopping
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state

    def fit(self, X, y) -> MLPHead:
        fitted = fit_many(self, X, y, [self.alpha])[0]
        self.__dict__.update({name: value for name, value in vars(fitted).items() if name.endswith("_")})
        return self

    def decision_function(self, X) -> np.ndarray:
        """The output layer's logits, (n, K); (n,) for two classes (the logit of the second)."""
        check_is_fitted(self, "coefs_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        logits = _forward(self.coefs_, self.intercepts_, X)
        return logits[:, 0] if len(self.classes_) == 2 else logits

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "coefs_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        logits = _forward(self.coefs_, self.intercepts_, X).astype(np.float64)
        if len(self.classes_) == 2:
            logits = np.hstack([np.zeros_like(logits), logits])  # a logistic unit: softmax of (0, z) is sigmoid(z)
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        return probabilities / probabilities.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        check_is_fitted(self, "coefs_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        return self.classes_[_codes(_forward(self.coefs_, self.intercepts_, X))]


def _codes(logits):
    """Class indices from logits (numpy or torch): the argmax, or the sign of a single logistic unit."""
    return (logits[:, 0] > 0) * 1 if logits.shape[1] == 1 else logits.argmax(1)


def _forward(coefs, intercepts, X) -> np.ndarray:
    hidden = np.maximum(X @ coefs[0] + intercepts[0], 0.0)
    return hidden @ coefs[1] + intercepts[1]


def fit_many(template: MLPHead, X, y, alphas) -> list[MLPHead]:
    """One fitted copy of ``template`` per value of ``alphas``, trained together (see the module's docstring):
    the same models, to float rounding, as fitting each copy on its own."""
    import torch
    from sklearn.base import clone

    X, y = validate_data(clone(template), X, y, dtype=np.float32)
    check_classification_targets(y)
    classes, codes = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"this model needs samples of at least 2 classes; the data has one class: {classes[0]!r}")
    from tlcache.backbones.base import resolve_device, resolve_precision

    device = resolve_device(template.device)
    compute = torch.bfloat16 if resolve_precision("auto", device) == "bf16" else torch.float32
    seed = 0 if template.random_state is None else int(template.random_state)
    trained = _train(template, X, codes, len(classes), alphas, device, compute, seed)
    models = []
    for alpha, result in zip(alphas, trained):
        model = clone(template).set_params(alpha=float(alpha))
        model.classes_ = classes
        model.n_features_in_ = X.shape[1]
        W1, b1, W2, b2 = result.final()
        model.coefs_, model.intercepts_ = [W1, W2], [b1, b2]
        model.n_iter_ = result.epochs
        model.compute_dtype_ = str(compute).removeprefix("torch.")
        models.append(model)
    return models


def _train(template: MLPHead, X, codes, n_classes: int, alphas, device, compute, seed: int) -> list[_Model]:
    """One trained :class:`_Model` per value of ``alphas``."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    fit_rows, valid_rows = _early_stopping_split(template, codes, seed)
    X_all = torch.from_numpy(X).to(device=device, dtype=compute)
    y_all = torch.from_numpy(codes.astype(np.int64)).to(device)
    fitting = (X_all[fit_rows], y_all[fit_rows])
    held_out = (X_all[valid_rows], y_all[valid_rows]) if valid_rows is not None else None
    # Every model starts from the same weights, as separate fits with one seed would: the sweep sees alpha alone.
    # Made on one thread: torch's threads meet after each of these small steps, and beside another busy process
    # every meeting waited for a core (8 ms a tensor measured: a second of a sweep's 4.5 s on 25 rows).
    with one_thread(enabled=device.type == "cpu"):
        start = _initial_weights(X.shape[1], template.hidden, n_classes, seed, device)
        models = [_Model(start, alpha, template) for alpha in alphas]
    with adaptive_threads(enabled=device.type == "cpu") as threads:
        for _ in range(template.max_iter):
            if not _epoch(models, template.batch_size, fitting, held_out, generator, compute, threads):
                break
    return models


def _epoch(models: list[_Model], batch_size: int, fitting, held_out, generator, compute, threads) -> bool:
    """One epoch of every model not stopped yet, then each one's early-stopping check; whether any goes on."""
    import torch

    X_fit, y_fit = fitting
    n = len(y_fit)
    batch = min(batch_size, n)
    order = torch.randperm(n, generator=generator).to(X_fit.device)
    # The epoch's minibatches gathered once for every model (a gather per model and step: 5-15% of the time).
    batches = [(X_fit[rows], y_fit[rows]) for rows in order.split(batch)]
    active = [model for model in models if not model.stopped]
    losses = []
    for model in active:  # model by model, each through the whole epoch: its weights stay in the CPU's cache
        if held_out is None:  # the training loss decides when to stop
            losses.append(float(sum(model.step(X_b, y_b, compute, True) * len(y_b) for X_b, y_b in batches)))
        else:  # the held-out accuracy does: the loss itself is not computed
            for X_b, y_b in batches:
                model.step(X_b, y_b, compute, False)
        if threads is not None:
            threads.tick()  # as many threads as the cores this process gets (tlcache.threads)
    if held_out is not None:
        scores = _accuracies(active, *held_out, compute)
    else:  # higher is better: the negated training loss, penalty included
        scores = [-(loss / n + model.penalty() / batch) for model, loss in zip(active, losses)]
    for model, score in zip(active, scores):
        model.epoch_ended(float(score), keep_best=held_out is not None)
    return any(not model.stopped for model in active)


def _initial_weights(d: int, hidden: int, n_classes: int, seed: int, device) -> list:
    """W1, b1, W2, b2 in scikit-learn's (Glorot-uniform) initialisation."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)

    def glorot(shape, fan_in, fan_out):
        bound = float(np.sqrt(6.0 / (fan_in + fan_out)))
        weights = (torch.rand(shape, generator=generator) * 2 - 1) * bound
        return weights.to(device)

    outputs = 1 if n_classes == 2 else n_classes  # a single logistic unit for two classes, as scikit-learn's
    return [
        glorot((d, hidden), d, hidden),
        glorot((hidden,), d, hidden),
        glorot((hidden, outputs), hidden, outputs),
        glorot((outputs,), hidden, outputs),
    ]


class _Model:
    """One model of a sweep's stage, from its own copy of the ``start`` weights: float32 weights, Adam's moments
    (the L2 penalty as weight decay on the weights, not the biases), and its early-stopping state."""

    def __init__(self, start: list, alpha: float, template: MLPHead):
        import torch

        self.W1, self.b1, self.W2, self.b2 = (w.clone() for w in start)
        device = self.W1.device
        self.alpha = float(alpha)
        self.learning_rate = template.learning_rate
        self.moments = [(torch.zeros_like(w), torch.zeros_like(w)) for w in self.weights]
        self.t = torch.zeros((), dtype=torch.float32, device=device)
        self.tol, self.patience = template.tol, template.n_iter_no_change
        self.best_score, self.stale, self.epochs, self.stopped = -np.inf, 0, 0, False
        self.kept: list | None = None

    @property
    def weights(self) -> list:
        return [self.W1, self.b1, self.W2, self.b2]

    def logits(self, X, compute):
        hidden = _addmm(self.b1, X, self.W1, compute).relu()
        return _addmm(self.b2, hidden, self.W2, compute).float()

    def step(self, X, y, compute, with_loss: bool):
        """Forward and backward by hand (the products in ``compute``, the gradients in float32), then Adam; the
        minibatch's mean loss (before the step) when ``with_loss``, else None."""
        import torch

        W1, W2 = self.W1.to(compute), self.W2.to(compute)
        pre = torch.addmm(self.b1.to(compute), X, W1)
        hidden = pre.relu()
        logits = torch.addmm(self.b2.to(compute), hidden, W2).float()
        loss, d_logits = _loss_and_gradient(logits, y, with_loss)
        d_logits_c = d_logits.to(compute)
        # ReLU's backward: the gradient where pre > 0, else 0, in one pass (a product with the mask `pre > 0` took a
        # compare, a cast and a multiply: a tenth of the mlp's time on Rotten Tomatoes; the same numbers).
        d_pre = torch.ops.aten.threshold_backward(d_logits_c @ W2.T, pre, 0)
        grads = [
            (X.T @ d_pre).float(),
            d_pre.sum(dim=0, dtype=torch.float32),
            (hidden.T @ d_logits_c).float(),
            d_logits.sum(dim=0),
        ]
        self.t += 1
        # Adam in one pass over each tensor (the kernel torch.optim.Adam(fused=True) runs, without the optimiser
        # class, whose first use imports torch._dynamo: 2 s a process); the penalty as L2 weight decay.
        for pick, decay in (((0, 2), self.alpha / len(X)), ((1, 3), 0.0)):
            torch._fused_adam_(
                [self.weights[i] for i in pick],
                [grads[i] for i in pick],
                [self.moments[i][0] for i in pick],
                [self.moments[i][1] for i in pick],
                [],
                [self.t for _ in pick],
                lr=self.learning_rate,
                beta1=ADAM_BETAS[0],
                beta2=ADAM_BETAS[1],
                weight_decay=decay,
                eps=ADAM_EPS,
                amsgrad=False,
                maximize=False,
            )
        return loss

    def penalty(self) -> float:
        """alpha / 2 * ||W||^2 over the weights (not the biases)."""
        return 0.5 * self.alpha * float(self.W1.detach().square().sum() + self.W2.detach().square().sum())

    def epoch_ended(self, score: float, keep_best: bool) -> None:
        """Count the epoch, keep the best weights (early stopping) or the last (stopping on the training loss)."""
        self.epochs += 1
        self.stale = self.stale + 1 if score < self.best_score + self.tol else 0
        if score > self.best_score:
            self.best_score = score
            if keep_best:
                self.kept = [w.detach().clone() for w in self.weights]
        self.stopped = self.stale > self.patience
        if not keep_best and self.stopped:
            self.kept = [w.detach().clone() for w in self.weights]

    def final(self) -> list[np.ndarray]:
        return [w.detach().float().cpu().numpy() for w in (self.kept or self.weights)]


def _accuracies(models: list[_Model], X, y, compute) -> list[float]:
    import torch

    with torch.no_grad():
        return [float((_codes(model.logits(X, compute)) == y).double().mean()) for model in models]


def _addmm(bias, X, W, compute):
    import torch

    return torch.addmm(bias.to(compute), X, W.to(compute))


def _loss_and_gradient(logits, y, with_loss: bool = True):
    """Mean cross-entropy (of the softmax, or of a single logistic unit; None unless ``with_loss``) and its
    gradient by the logits."""
    import torch.nn.functional as F

    B = len(y)
    if logits.shape[1] == 1:
        target = y.to(logits.dtype)[:, None]
        loss = F.binary_cross_entropy_with_logits(logits, target) if with_loss else None
        return loss, (logits.sigmoid() - target) / B
    # The softmax as exp(log_softmax): softmax() rounds otherwise, and a digit's difference moves a trained model's
    # test accuracy by as much as a point (measured: MNIST-5k's mlp 0.937 -> 0.930).
    log_p = logits.log_softmax(dim=1)
    loss = -log_p.gather(1, y[:, None]).mean() if with_loss else None
    gradient = log_p.exp()
    gradient[range(B), y] -= 1.0
    return loss, gradient / B


def _early_stopping_split(template: MLPHead, codes: np.ndarray, seed: int):
    """(rows to fit, held-out rows or None): a stratified ``validation_fraction`` when stopping early."""
    rows = np.arange(len(codes))
    if not template.early_stopping:
        return rows, None
    try:
        fit, valid = train_test_split(rows, test_size=template.validation_fraction, random_state=seed, stratify=codes)
    except ValueError:  # a class too small to stratify on
        fit, valid = train_test_split(rows, test_size=template.validation_fraction, random_state=seed)
    return fit, valid


class SweptMLP(SweptClassifier):
    """:class:`SweptClassifier` for :class:`MLPHead` over ``alpha``, coarse to fine (every other value of the grid,
    then the neighbours of the best; see sweep_grid): each stage's values are trained together on each split
    (:func:`fit_many`); the calibrator's folds and the refit on all rows are single fits."""

    grid_stride = 2

    _scratch = ("_prepared",)

    def _fit(self, X, y) -> SweptMLP:
        # numpy's products here (each split's predictions) on one thread: OpenBLAS's threads spin a while after
        # each product, and torch's next epochs ran at half their speed beside them (Rotten Tomatoes: a single
        # fit after a split's predictions took 15 ms an epoch, 8 ms without them).
        with threadpool_limits(1, user_api="blas"):
            return super()._fit(X, y)

    def _begin_fit(self) -> None:
        self._prepared: dict = {}  # (id(training rows), alpha) -> a model fitted with the others of its stage

    def _prepare(self, values: list, X, codes, splits) -> None:
        for train, _ in splits:
            for value, model in zip(values, fit_many(self.estimator, X[train], codes[train], values)):
                self._prepared[(id(train), value)] = model

    def _fold_fit(self, value, X, codes, train):
        prepared = self._prepared.pop((id(train), value), None)
        return prepared if prepared is not None else super()._fold_fit(value, X, codes, train)
