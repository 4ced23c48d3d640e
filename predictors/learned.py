"""Learned predictors: models fitted on ``(encoding, measured value)`` pairs.

Kinds: ``ridge`` (linear), ``gbdt`` and ``rf`` (tree ensembles), ``mlp`` (a small neural network) and
``ensemble`` (a bootstrap ensemble of one of these, the only kind with an uncertainty estimate).
scikit-learn fits every model; the fitted model is exported to plain numpy arrays and predictions are
computed from those arrays with vectorised numpy, so a saved file needs no pickle and a loaded
predictor does not depend on scikit-learn's internals.

Every kind fits ``log(y)`` and predicts ``exp`` when ``log_target`` is set (the default for targets
whose name starts with ``latency``): latencies are positive, span orders of magnitude, and are judged
by relative error.
"""

from __future__ import annotations

import abc
import warnings
from typing import Any, ClassVar

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.neural_network import MLPRegressor

from predictors.base import Predictor, PredictorError, create, register
from search_spaces import SearchSpace

#: ``trees * samples`` per chunk of a tree traversal (measured fastest around 2**16..2**17).
_TRAVERSAL_CELLS = 1 << 17


class LearnedPredictor(Predictor):
    """Shared plumbing: hyper-parameter defaults, features, and the optional log transform of the target.

    Subclasses declare ``defaults`` (every hyper-parameter they accept, JSON-serialisable) and work on
    features and transformed targets only, through ``_fit_transformed``/``_predict_transformed``. The
    latter returns one row per member model, so single models and ensembles share ``_predict``.
    """

    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, space: SearchSpace, target: str, device: str | None = None, **hyper: Any):
        accepted = {**self.defaults, "log_target": target.startswith("latency")}
        unknown = sorted(set(hyper) - set(accepted))
        if unknown:
            raise PredictorError(f"the {self.kind} predictor has no hyper-parameter {', '.join(map(repr, unknown))}; "
                                 f"it takes {', '.join(sorted(accepted))}")
        super().__init__(space, target, device, **{**accepted, **hyper})

    def _fit(self, vectors: np.ndarray, values: np.ndarray) -> None:
        self._fit_transformed(self.features(vectors), self._transform(values))

    def _predict(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        each = self._untransform(self._predict_transformed(self.features(vectors)))
        return each.mean(axis=0), (each.std(axis=0) if len(each) > 1 else None)

    def _transform(self, values: np.ndarray) -> np.ndarray:
        if not self.hyper["log_target"]:
            return values
        if np.any(values <= 0):
            raise PredictorError(f"log_target needs positive {self.target} values; "
                                 f"got a minimum of {values.min():g} (pass log_target=False)")
        return np.log(values)

    def _untransform(self, z: np.ndarray) -> np.ndarray:
        return np.exp(z) if self.hyper["log_target"] else z

    @abc.abstractmethod
    def _fit_transformed(self, x: np.ndarray, z: np.ndarray) -> None:
        """Fit on features ``x`` ``(n, F)`` and transformed targets ``z`` ``(n,)``."""

    @abc.abstractmethod
    def _predict_transformed(self, x: np.ndarray) -> np.ndarray:
        """Transformed-target predictions ``(models, n)`` for features ``x``: one row per member model."""


def _standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and scales; constant columns get scale 1 so unseen values stay finite."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(scale > 0, scale, 1.0)


# ----------------------------------------------------------------------------- linear
@register("ridge")
class RidgePredictor(LearnedPredictor):
    """L2-regularised linear model on standardised features."""

    defaults = {"alpha": 1.0}
    min_samples = 5

    def _fit_transformed(self, x: np.ndarray, z: np.ndarray) -> None:
        self.mean, self.scale = _standardiser(x.astype(np.float64))
        model = Ridge(alpha=self.hyper["alpha"]).fit((x - self.mean) / self.scale, z)
        self.coef, self.intercept = model.coef_, float(model.intercept_)

    def _predict_transformed(self, x: np.ndarray) -> np.ndarray:
        return (((x - self.mean) / self.scale) @ self.coef + self.intercept)[None, :]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"coef": self.coef, "intercept": np.asarray(self.intercept), "mean": self.mean, "scale": self.scale}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.coef, self.intercept = arrays["coef"], float(arrays["intercept"])
        self.mean, self.scale = arrays["mean"], arrays["scale"]


# ----------------------------------------------------------------------------- trees
def export_trees(estimators: list) -> dict[str, np.ndarray]:
    """Fitted scikit-learn regression trees as ``(trees, nodes)`` arrays, padded to a common node count.

    Leaves (and padding) point to themselves, so a traversal of ``depth`` steps from the root ends on
    every sample's leaf whatever the depth of that leaf.
    """
    trees = [e.tree_ for e in estimators]
    n_nodes = max(t.node_count for t in trees)
    own = np.broadcast_to(np.arange(n_nodes), (len(trees), n_nodes))
    left, right = own.copy(), own.copy()
    feature = np.zeros((len(trees), n_nodes), dtype=np.int64)
    threshold, value = np.zeros((len(trees), n_nodes)), np.zeros((len(trees), n_nodes))
    for i, t in enumerate(trees):
        split = np.flatnonzero(t.children_left >= 0)
        left[i, split], right[i, split] = t.children_left[split], t.children_right[split]
        feature[i, split], threshold[i, split] = t.feature[split], t.threshold[split]
        value[i, :t.node_count] = t.value[:, 0, 0]
    return {"left": left, "right": right, "feature": feature, "threshold": threshold, "value": value,
            "depth": np.asarray(max(t.max_depth for t in trees))}


def tree_leaf_values(trees: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Leaf value of every tree for every sample, ``(trees, n)``; vectorised over trees and samples.

    Compares ``float32`` features with the ``float64`` thresholds exactly as scikit-learn does. Samples
    go in chunks of ``_TRAVERSAL_CELLS // trees``: small enough for the index arrays to stay in cache.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_trees, n_nodes = trees["left"].shape
    root = (np.arange(n_trees, dtype=np.int32) * n_nodes)[:, None]      # flat index of each tree's root
    flat = {"children": (np.stack([trees["left"], trees["right"]], axis=-1) + root[:, :, None]).astype(np.int32),
            "feature": trees["feature"].astype(np.int32), "threshold": trees["threshold"], "value": trees["value"]}
    flat = {name: a.ravel() for name, a in flat.items()}
    chunk = max(1, _TRAVERSAL_CELLS // n_trees)
    return np.hstack([_traverse(flat, root, int(trees["depth"]), x[start:start + chunk])
                      for start in range(0, max(len(x), 1), chunk)])


def _traverse(flat: dict[str, np.ndarray], root: np.ndarray, depth: int, x: np.ndarray) -> np.ndarray:
    """``depth`` steps down every tree at once; ``node`` holds flat node indices, ``(trees, samples)``."""
    row = (np.arange(len(x), dtype=np.int32) * x.shape[1])[None, :]
    x_flat, node = x.ravel(), np.repeat(root, len(x), axis=1)
    for _ in range(depth):
        go_right = np.take(x_flat, row + np.take(flat["feature"], node)) > np.take(flat["threshold"], node)
        node = np.take(flat["children"], 2 * node + go_right)
    return np.take(flat["value"], node)


class TreePredictor(LearnedPredictor):
    """Predicts ``offset + weight * sum of the trees' leaf values``, from exported tree arrays."""

    def _fit_transformed(self, x: np.ndarray, z: np.ndarray) -> None:
        model = self._model().fit(x, z)
        self.trees = export_trees(self._estimators(model))
        self.offset, self.weight = self._combination(model)

    def _predict_transformed(self, x: np.ndarray) -> np.ndarray:
        return (self.offset + self.weight * tree_leaf_values(self.trees, x).sum(axis=0))[None, :]

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.trees, "offset": np.asarray(self.offset), "weight": np.asarray(self.weight)}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.offset, self.weight = float(arrays["offset"]), float(arrays["weight"])
        self.trees = {k: v for k, v in arrays.items() if k not in ("offset", "weight")}

    @abc.abstractmethod
    def _model(self) -> GradientBoostingRegressor | RandomForestRegressor:
        """The unfitted scikit-learn model."""

    @abc.abstractmethod
    def _estimators(self, model) -> list:
        """The fitted model's regression trees."""

    @abc.abstractmethod
    def _combination(self, model) -> tuple[float, float]:
        """``(offset, weight)`` turning the sum of leaf values into the model's prediction."""


@register("gbdt")
class GBDTPredictor(TreePredictor):
    """Gradient-boosted regression trees (squared error); row subsampling makes ``seed`` matter."""

    defaults = {"n_estimators": 300, "learning_rate": 0.05, "max_depth": 3, "subsample": 0.8, "seed": 0}
    min_samples = 10

    def _model(self) -> GradientBoostingRegressor:
        h = self.hyper
        return GradientBoostingRegressor(n_estimators=h["n_estimators"], learning_rate=h["learning_rate"],
                                         max_depth=h["max_depth"], subsample=h["subsample"], random_state=h["seed"])

    def _estimators(self, model: GradientBoostingRegressor) -> list:
        return list(model.estimators_[:, 0])

    def _combination(self, model: GradientBoostingRegressor) -> tuple[float, float]:
        return float(model.init_.constant_[0, 0]), float(model.learning_rate)


@register("rf")
class RandomForestPredictor(TreePredictor):
    """Random forest: the mean of bootstrapped, feature-subsampled regression trees."""

    defaults = {"n_estimators": 100, "max_features": 0.5, "min_samples_leaf": 1, "seed": 0}
    min_samples = 5

    def _model(self) -> RandomForestRegressor:
        h = self.hyper
        return RandomForestRegressor(n_estimators=h["n_estimators"], max_features=h["max_features"],
                                     min_samples_leaf=h["min_samples_leaf"], random_state=h["seed"])

    def _estimators(self, model: RandomForestRegressor) -> list:
        return list(model.estimators_)

    def _combination(self, model: RandomForestRegressor) -> tuple[float, float]:
        return 0.0, 1.0 / len(model.estimators_)

    def _predict(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The forest's mean, and the spread of its trees' predictions (in target units) as uncertainty:
        as cheap as the prediction itself, which is what predictor-guided search needs every round."""
        leaves = tree_leaf_values(self.trees, self.features(vectors))          # (trees, n)
        return self._untransform(leaves.mean(axis=0)), self._untransform(leaves).std(axis=0)


# ----------------------------------------------------------------------------- neural network
@register("mlp")
class MLPPredictor(LearnedPredictor):
    """A ReLU multi-layer perceptron on standardised features and a standardised target.

    Fitted with L-BFGS (full batch, deterministic for a given ``seed``); ``max_iter`` caps the fit, and
    stopping there is expected, not a failure.
    """

    defaults = {"hidden": [64], "alpha": 1.0, "max_iter": 300, "seed": 0}
    min_samples = 20

    def _fit_transformed(self, x: np.ndarray, z: np.ndarray) -> None:
        self.mean, self.scale = _standardiser(x.astype(np.float64))
        self.z_mean, self.z_scale = float(z.mean()), float(z.std()) or 1.0
        h = self.hyper
        model = MLPRegressor(hidden_layer_sizes=tuple(h["hidden"]), alpha=h["alpha"], solver="lbfgs",
                             max_iter=h["max_iter"], random_state=h["seed"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit((x - self.mean) / self.scale, (z - self.z_mean) / self.z_scale)
        self.weights, self.biases = list(model.coefs_), list(model.intercepts_)

    def _predict_transformed(self, x: np.ndarray) -> np.ndarray:
        h = (x - self.mean) / self.scale
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = np.maximum(h @ w + b, 0.0)
        out = h @ self.weights[-1] + self.biases[-1]
        return out.T * self.z_scale + self.z_mean

    def arrays(self) -> dict[str, np.ndarray]:
        layers = {f"{name}{i}": a for i, (w, b) in enumerate(zip(self.weights, self.biases))
                  for name, a in (("w", w), ("b", b))}
        return {**layers, "mean": self.mean, "scale": self.scale, "z": np.array([self.z_mean, self.z_scale])}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        n_layers = len(self.hyper["hidden"]) + 1
        self.weights = [arrays[f"w{i}"] for i in range(n_layers)]
        self.biases = [arrays[f"b{i}"] for i in range(n_layers)]
        self.mean, self.scale = arrays["mean"], arrays["scale"]
        self.z_mean, self.z_scale = (float(v) for v in arrays["z"])


# ----------------------------------------------------------------------------- uncertainty
@register("ensemble")
class EnsemblePredictor(LearnedPredictor):
    """``members`` models of kind ``base`` (with ``base_hyper``), each fitted on a bootstrap resample.

    The prediction is the members' mean and its uncertainty their standard deviation, both in target
    units. MLP members are the default: their random initialisation and bootstrap sample disagree most
    away from the training data, which is where an acquisition function needs a large std (trees
    extrapolate flat and agree there).
    """

    defaults = {"base": "mlp", "members": 5, "base_hyper": {}, "seed": 0}
    min_samples = 20

    def __init__(self, space: SearchSpace, target: str, device: str | None = None, **hyper: Any):
        super().__init__(space, target, device, **hyper)
        h = self.hyper
        if h["base"] == self.kind:
            raise PredictorError("an ensemble's base kind cannot itself be 'ensemble'")
        if h["members"] < 2:
            raise PredictorError(f"an ensemble needs at least 2 members to estimate a std; got {h['members']}")
        self.streams = np.random.SeedSequence(h["seed"]).spawn(h["members"])
        self.members = [self._member(int(s.generate_state(1)[0])) for s in self.streams]

    def _member(self, seed: int) -> LearnedPredictor:
        base_hyper = {**self.hyper["base_hyper"], "log_target": self.hyper["log_target"]}
        member = create(self.hyper["base"], self.space, self.target, self.device, **base_hyper)
        if not isinstance(member, LearnedPredictor):
            raise PredictorError(f"an ensemble's base must be a learned kind; {self.hyper['base']!r} is not")
        if "seed" in member.defaults and "seed" not in base_hyper:
            member.hyper["seed"] = seed
        return member

    def _fit_transformed(self, x: np.ndarray, z: np.ndarray) -> None:
        for member, stream in zip(self.members, self.streams):
            rows = np.random.default_rng(stream).integers(0, len(x), size=len(x))
            member._fit_transformed(x[rows], z[rows])

    def _predict_transformed(self, x: np.ndarray) -> np.ndarray:
        return np.vstack([m._predict_transformed(x) for m in self.members])

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"m{i}.{name}": a for i, m in enumerate(self.members) for name, a in m.arrays().items()}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for i, member in enumerate(self.members):
            prefix = f"m{i}."
            member.load_arrays({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
