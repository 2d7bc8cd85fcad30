"""A fitted head as torch operations, and the backbone and head as one module to export to ONNX.

The head's preprocessing (dead columns dropped, standardisation or L2 normalisation), its decision values (an affine
map, the mlp's two layers, the RBF svm's kernel against its support vectors, or knn's weighted votes of its nearest
training vectors), its own decision (the sign of a binary score, else the argmax, or the svm's one-against-one vote:
never the argmax of calibrated probabilities) and its probabilities (a softmax, one-against-rest logistic units,
knn's votes, or the calibrator's Platt or isotonic maps) are written out from the fitted estimators' arrays, in
float32, so the graph computes what the head computes (scikit-learn's float64 to float rounding). A head of a kind
tlcache does not fit is refused in one line.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from tlcache.errors import UserError
from tlcache.kernel_svm import rbf_pairs


def _tensor(values) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float32))


class _Scores(torch.nn.Module):
    """Decision values: one affine layer, or the mlp's hidden ReLU layer and its output layer."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]]):
        super().__init__()
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(_tensor(w), requires_grad=False) for w, _ in layers])
        self.biases = torch.nn.ParameterList([torch.nn.Parameter(_tensor(b), requires_grad=False) for _, b in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = x @ weight + bias
            if i < last:
                x = torch.relu(x)
        return x


class _RBFVotes(torch.nn.Module):
    """An RBF ``SVC``: the kernel against its support vectors, its one-against-one decision values, and (for more
    than two classes) scikit-learn's one-against-rest shape of them, the values its calibrator was fitted on;
    the label is libsvm's vote (the first class of the most votes), as ``SVC.predict`` gives it."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.vectors = _tensor(spec["support_vectors"])
        self.squared = (self.vectors * self.vectors).sum(dim=1)
        self.gamma = float(spec["gamma"])
        self.pair_weights = _tensor(spec["pair_weights"])  # (support vectors, pairs)
        self.intercepts = _tensor(spec["intercepts"])
        self.first, self.second = _tensor(spec["first"]), _tensor(spec["second"])  # (pairs, classes) one-hot

    def forward(self, x: torch.Tensor):
        distance = (x * x).sum(dim=1, keepdim=True) + self.squared - 2 * x @ self.vectors.T
        decision = torch.exp(-self.gamma * distance.clamp(min=0)) @ self.pair_weights + self.intercepts
        if self.first.shape[1] == 2:  # two classes: one decision value, positive for the second
            return decision, (decision[:, 0] > 0).long()
        won = (decision > 0).float()
        votes = won @ self.first + (1 - won) @ self.second
        confidence = decision @ (self.first - self.second)
        return votes + confidence / (3 * (confidence.abs() + 1)), votes.argmax(dim=1)


class _Neighbours(torch.nn.Module):
    """A cosine, distance-weighted ``KNeighborsClassifier``: the k most similar training vectors, each voting with
    the inverse of its cosine distance (only the exact matches, where there are any), as scikit-learn weighs them;
    the votes normalised are its probabilities (and the values its calibrator maps), their argmax its label."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        vectors = _tensor(spec["neighbours"])
        self.vectors = vectors / vectors.norm(dim=1, keepdim=True).clamp(min=1e-30)
        self.one_hot = _tensor(np.eye(spec["n_classes"])[spec["neighbour_codes"]])  # (training rows, classes)
        self.k = int(spec["k"])

    def forward(self, x: torch.Tensor):
        x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-30)
        similarity, index = torch.topk(x @ self.vectors.T, self.k, dim=1)
        distance = (1 - similarity).clamp(min=0)
        exact = distance == 0
        any_exact = exact.any(dim=1, keepdim=True)
        weight = torch.where(any_exact, exact.float(), 1 / torch.where(exact, torch.ones_like(distance), distance))
        votes = (weight.unsqueeze(2) * self.one_hot[index]).sum(dim=1)
        total = votes.sum(dim=1, keepdim=True)
        proba = votes / torch.where(total > 0, total, torch.ones_like(total))
        return proba, proba.argmax(dim=1)


class HeadModule(torch.nn.Module):
    """Features (B, D) -> (scores (B, K or 1), probabilities (B, K), label (B,) as an index into the classes)."""

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.kept = None if spec["kept"] is None else torch.as_tensor(spec["kept"], dtype=torch.int64)
        self.center = None if spec["center"] is None else _tensor(spec["center"])
        self.scale = None if spec["scale"] is None else _tensor(spec["scale"])
        self.l2 = spec["l2"]
        if "support_vectors" in spec:
            self.scores = _RBFVotes(spec)
        elif "neighbours" in spec:
            self.scores = _Neighbours(spec)
        else:
            self.scores = _Scores(spec["layers"])
        self.probability = spec["probability"]  # softmax, ovr-logistic, platt or isotonic
        self.n_classes = spec["n_classes"]
        if self.probability == "platt":
            self.platt = _tensor(spec["maps"])  # (maps, 2): a and b of each class's map
        if self.probability == "isotonic":  # each map a piecewise linear curve over its own knots, padded alike
            self.knots_x, self.knots_y = _tensor(spec["maps"][0]), _tensor(spec["maps"][1])

    def forward(self, x: torch.Tensor):
        if self.kept is not None:
            x = x.index_select(1, self.kept)
        if self.center is not None:
            x = x - self.center
        if self.scale is not None:
            x = x / self.scale
        if self.l2:
            norm = x.norm(dim=1, keepdim=True)
            x = x / torch.where(norm == 0, torch.ones_like(norm), norm)
        scores = self.scores(x)
        label = None
        if isinstance(scores, tuple):  # the model's own decision, not an argmax of its scores
            scores, label = scores
        binary = scores.shape[1] == 1
        if label is None:
            label = (scores[:, 0] > 0).long() if binary else scores.argmax(dim=1)
        return scores, self._probabilities(scores, binary), label

    def _probabilities(self, scores: torch.Tensor, binary: bool) -> torch.Tensor:
        if self.probability == "votes":  # knn: its scores are its probabilities
            return scores
        if self.probability == "softmax":
            if binary:
                positive = torch.sigmoid(scores)
                return torch.cat([1 - positive, positive], dim=1)
            return torch.softmax(scores, dim=1)
        if self.probability == "ovr-logistic" and not binary:  # SGD's log loss: a logistic unit per class,
            return torch.softmax(-torch.nn.functional.softplus(-scores), dim=1)  # normalised (in log space)
        if self.probability == "ovr-logistic":
            columns = torch.sigmoid(scores)
        elif self.probability == "platt":
            columns = torch.sigmoid(-(self.platt[:, 0] * scores + self.platt[:, 1]))
        else:
            columns = self._isotonic(scores)
        if binary:
            return torch.cat([1 - columns, columns], dim=1)
        total = columns.sum(dim=1, keepdim=True)
        uniform = torch.full_like(columns, 1.0 / self.n_classes)
        return torch.where(total > 0, columns / torch.where(total > 0, total, torch.ones_like(total)), uniform)

    def _isotonic(self, scores: torch.Tensor) -> torch.Tensor:
        """np.interp of each column over its knots, clipped at the ends (IsotonicRegression's out_of_bounds)."""
        low, high = self.knots_x[:, :-1], self.knots_x[:, 1:]  # (maps, knots - 1)
        width = high - low
        slope = torch.where(width > 0, (self.knots_y[:, 1:] - self.knots_y[:, :-1]) / width.clamp(min=1e-30), 0.0)
        value = scores.unsqueeze(2)  # (B, maps, 1)
        inside = torch.minimum(torch.maximum(value, low), high) - low
        return self.knots_y[:, 0] + (inside * slope).sum(dim=2)


def head_spec(pipeline) -> dict[str, Any]:
    """The arrays of a fitted head pipeline, as :class:`HeadModule` takes them; UserError for a head it cannot hold."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import Normalizer, StandardScaler
    from sklearn.svm import SVC

    from tlcache.linear import SweptLogisticRegression
    from tlcache.linear_svm import LinearSVM
    from tlcache.mlp import MLPHead
    from tlcache.scaling import DropDeadFeatures

    spec: dict[str, Any] = {"kept": None, "center": None, "scale": None, "l2": False}
    for _, step in pipeline.steps[:-1]:
        if isinstance(step, DropDeadFeatures):
            spec["kept"] = step.kept_
        elif isinstance(step, StandardScaler):
            spec["center"] = step.mean_ if step.with_mean else None
            spec["scale"] = step.scale_ if step.with_std else None
        elif isinstance(step, Normalizer) and step.norm == "l2":
            spec["l2"] = True
        else:
            raise UserError(f"the head's step {type(step).__name__} cannot be exported yet")
    final = pipeline.steps[-1][1]
    model = getattr(final, "model_", final)  # a swept head's refitted model
    spec["n_classes"] = len(final.classes_)
    if isinstance(model, (SweptLogisticRegression, LinearSVM, SGDClassifier)):
        spec["layers"] = [(model.coef_.T, model.intercept_)]
        own = "ovr-logistic" if isinstance(model, SGDClassifier) else "softmax"
    elif isinstance(model, MLPHead):
        spec["layers"] = list(zip(model.coefs_, model.intercepts_))
        own = "softmax"
    elif isinstance(model, KNeighborsClassifier) and model.metric == "cosine" and model.weights == "distance":
        spec |= {"neighbours": model._fit_X, "neighbour_codes": model._y, "k": model.n_neighbors}
        own = "votes"
    elif isinstance(model, SVC) and model.kernel == "rbf":
        spec |= rbf_pairs(model)
        own = None  # an SVC's probabilities are always its calibrator's
    else:
        raise UserError(f"a {type(model).__name__} head cannot be exported; tlcache's heads can (fit-head --head ...)")
    calibrator = getattr(final, "calibrator_", None)
    if calibrator is None:
        if own is None or isinstance(model, LinearSVM):
            raise UserError("this svm head has no calibrator (an older tlcache fitted it); fit it again")
        spec["probability"] = own
        return spec
    spec["probability"] = "platt" if calibrator.method == "sigmoid" else "isotonic"
    if calibrator.method == "sigmoid":
        spec["maps"] = np.asarray(calibrator.maps_, dtype=np.float64)
    else:
        spec["maps"] = _isotonic_knots(calibrator.maps_)
    return spec


def _isotonic_knots(maps: list) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) knots of each isotonic map, each padded to the longest by repeating its last knot (a zero-width
    piece adds nothing)."""
    xs = [np.asarray(one.X_thresholds_, dtype=np.float64) for one in maps]
    ys = [np.asarray(one.y_thresholds_, dtype=np.float64) for one in maps]
    longest = max(max(len(x) for x in xs), 2)
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], longest - len(a))])  # noqa: E731
    return np.stack([pad(x) for x in xs]), np.stack([pad(y) for y in ys])


class ExportModule(torch.nn.Module):
    """The backbone (its own forward: layer, pooling, normalisation) then the head, on named inputs."""

    def __init__(self, backbone, head: HeadModule, input_names: list[str]):
        super().__init__()
        self.model = backbone.model  # registered here, so the export sees its weights as the module's
        self.backbone = backbone
        self.head = head
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor):
        if self.backbone.modality == "image":
            features = self.backbone.forward(inputs[0])
        else:
            features = self.backbone.forward(dict(zip(self.input_names, inputs)))
        features = features.float()
        scores, probabilities, label = self.head(features)
        return features, scores, probabilities, label
