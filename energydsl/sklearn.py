"""A scikit-learn estimator around a spec: fit on arrays, transform to codes, tune constants.

    from sklearn.model_selection import GridSearchCV
    from energydsl.sklearn import EnergyEstimator

    search = GridSearchCV(EnergyEstimator("specs/mine.energy"), {"lam": [0.05, 0.2]}, cv=3)
    search.fit(X)                                  # X: (samples, features) array
    codes = search.best_estimator_.transform(X)    # (samples, latent size)

The spec's constants are the estimator's hyper-parameters: ``get_params`` lists every
``const`` of the spec with its value, ``set_params(lam=...)`` and ``clone`` work, so grid
searches and pipelines (``Pipeline([("code", EnergyEstimator(spec)), ("clf", ...)])``)
see them like any other parameter.  ``fit`` replaces the spec's data source by the arrays
(a spec used here needs no ``data`` line) and trains through the spec's phases; the number
of epochs is the spec's, so write it with a constant (``const E = 5`` … ``epochs E``) to
tune it.

scikit-learn is an optional dependency (``pip install energydsl[sklearn]``): only this
module imports it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.metrics import accuracy_score
from sklearn.utils.validation import check_array, check_consistent_length, check_is_fitted, column_or_1d

from energydsl.api import load, read_spec, train
from energydsl.data import Dataset
from energydsl.errors import WHOLE_SPEC, SpecError, UserError, did_you_mean
from energydsl.expr.compiler import ExprCompiler, Symbol, Value
from energydsl.lang import spec as S

__all__ = ["EnergyEstimator", "EstimatorError"]

# The source name a spec's data line gets when the arrays given to ``fit`` replace it.
ARRAYS_SOURCE = "arrays"


class EstimatorError(UserError, ValueError):
    """A misuse of :class:`EnergyEstimator` (a ValueError too, as scikit-learn expects)."""


class EnergyEstimator(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """A spec as a scikit-learn transformer (and classifier, when the spec has an ``xent`` term).

    Args:
        spec: a path to a ``.energy`` file, or the spec's source text (any string with a
            line break).
        seed: the seed of initialisation and shuffling (default: the spec's ``seed``).
        **constants: values for the spec's constants, e.g. ``lam=0.1``; each constant is a
            hyper-parameter (``get_params``/``set_params``).

    Fitted attributes: ``model_`` (the trained :class:`~energydsl.model.EnergyModel`),
    ``history_`` (one metrics dict per epoch, measured on the training arrays),
    ``n_features_in_``, ``constants_`` (every constant's value in the fitted model) and,
    for a spec with a label, ``classes_`` (the label values, in the order of the
    classifier's outputs).
    """

    def __init__(self, spec: str | Path, *, seed: int | None = None, **constants):
        self.spec = spec
        self.seed = seed
        # Kept as given (no copies, no conversion): ``clone`` checks that the values it
        # passes come back from get_params as the same objects.
        self._constants = constants

    # ------------------------------------------------------------ hyper-parameters

    def get_params(self, deep: bool = True) -> dict:
        """``spec``, ``seed`` and every constant of the spec (its value here, or the spec's)."""
        params = super().get_params(deep=False)
        defaults = {k: v for k, v in self._spec_constants().items() if k not in params}
        return {**params, **defaults, **self._constants}

    def set_params(self, **params) -> EnergyEstimator:
        """Set ``spec``, ``seed`` or any constant of the spec; an unknown name is an error."""
        own = self._get_param_names()
        for name in own:  # the spec first: it decides which constants exist
            if name in params:
                setattr(self, name, params[name])
        constants = self._spec_constants()
        for name, value in params.items():
            if name in own:
                continue
            if name not in constants:
                raise EstimatorError(self._unknown_constant(name, constants))
            self._constants[name] = value
        return self

    def _parsed_spec(self) -> S.Spec:
        if not isinstance(self.spec, (str, Path)):
            raise EstimatorError(f"EnergyEstimator: spec must be a path or the spec's text, got {self.spec!r}")
        return read_spec(self.spec)

    def _spec_constants(self) -> dict[str, float]:
        return spec_constants(self._parsed_spec())

    def _unknown_constant(self, name: str, constants) -> str:
        names = sorted(constants)
        hint = did_you_mean(name, names)
        known = f"its constants: {', '.join(names)}" if names else "it has no constants"
        return (f"EnergyEstimator: the spec has no constant '{name}'"
                f"{f' ({hint})' if hint else ''}; {known}")  # fmt: skip

    # ------------------------------------------------------------ fitting

    def fit(self, X, y=None) -> EnergyEstimator:
        """Train the spec on the rows of ``X`` (and labels ``y`` if the spec declares a label)."""
        parsed = self._parsed_spec()
        self._check_constants(parsed)
        X = check_array(X, dtype=np.float32)
        labels, classes = self._encoded_labels(parsed, X, y)
        dataset = _arrays_dataset(X, labels, len(classes) if classes is not None else None)
        model = load(_with_array_source(parsed), set=self._constants, data=dataset, seed=self.seed)
        self.history_ = train(model, seed=self.seed)
        self.model_ = model
        self.n_features_in_ = X.shape[1]
        self.constants_ = dict(model.program.constants)
        if classes is not None:
            self.classes_ = classes
        return self

    def _check_constants(self, parsed: S.Spec) -> None:
        constants = spec_constants(parsed)
        for name in self._constants:
            if name not in constants:
                raise EstimatorError(self._unknown_constant(name, constants))
        clashing = sorted(set(constants) & set(self._get_param_names()))
        if clashing:
            raise EstimatorError(f"EnergyEstimator: the spec's constant '{clashing[0]}' has the name of an "
                                 "estimator parameter and cannot be set; rename it")  # fmt: skip

    def _encoded_labels(self, parsed: S.Spec, X: np.ndarray, y) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Labels as class indices and the label values, for a spec that declares a label."""
        if not parsed.labels:
            return None, None  # e.g. a Pipeline passing y to every step: unused here
        if y is None:
            raise EstimatorError(f"EnergyEstimator: the spec declares label '{parsed.labels[0].name.name}', "
                                 "so fit needs y")  # fmt: skip
        y = column_or_1d(y, warn=True)
        check_consistent_length(X, y)
        classes, indices = np.unique(y, return_inverse=True)
        return indices, classes

    # ------------------------------------------------------------ using the fitted model

    def transform(self, X) -> np.ndarray:
        """The inferred codes z*, shape ``(samples, latent size)``."""
        return self._codes(self._checked_input(X)).cpu().numpy()

    def predict(self, X) -> np.ndarray:
        """The predicted label of each row (specs with a classifier term, ``xent``)."""
        X = self._checked_input(X)
        self._require_classifier("predict")
        # Only the classes seen in fit have a label value; a spec may declare more outputs.
        logits = self.model_.logits(torch.from_numpy(X))[:, : len(self.classes_)]
        return self.classes_[logits.argmax(dim=1).cpu().numpy()]

    def score(self, X, y=None) -> float:
        """Accuracy for a spec with a classifier; otherwise minus the mean energy of (x, z*).

        Higher is better either way.  Energies of models with different term weights
        are not comparable as fits of the data: smaller weights give smaller energies, so
        to choose such constants score a downstream task (a Pipeline) instead.
        """
        X = self._checked_input(X)
        if self.model_.program.classifier is not None:
            if y is None:
                raise EstimatorError("EnergyEstimator: the spec classifies, so score needs y")
            return float(accuracy_score(y, self.predict(X)))
        x = torch.from_numpy(X)
        with torch.no_grad():
            return -float(self.model_.energy(x, self._codes(X)).mean())

    def _checked_input(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = check_array(X, dtype=np.float32)
        if X.shape[1] != self.n_features_in_:
            raise EstimatorError(f"X has {X.shape[1]} features, but EnergyEstimator was fitted on "
                                 f"{self.n_features_in_} features")  # fmt: skip
        return X

    def _codes(self, X: np.ndarray) -> torch.Tensor:
        return self.model_.infer(torch.from_numpy(X))

    def _require_classifier(self, what: str) -> None:
        if self.model_.program.classifier is None:
            raise EstimatorError(f"EnergyEstimator: spec '{self.model_.name}' has no classifier term (xent), "
                                 f"so it cannot {what}; transform gives its codes")  # fmt: skip

    @property
    def _n_features_out(self) -> int:
        """The latent size, for ``get_feature_names_out`` (names ``energyestimator0``, ...)."""
        return self.model_.program.latent.shape[0]


def spec_constants(parsed: S.Spec) -> dict[str, float]:
    """The value of every ``const`` of a spec, in declaration order, without its data.

    ``compile_program`` would give them too, but it needs the data's sample shape, which an
    estimator only learns in ``fit``; constants depend on nothing but earlier constants.
    """
    scope: dict[str, Symbol] = {}
    compiler = ExprCompiler(scope, "const")
    values = {}
    try:
        for decl in parsed.consts:
            value = compiler.constant(decl.value)
            values[decl.name.name] = value
            scope[decl.name.name] = Symbol("const", Value((), const=value), lambda env, v=value: v)
    except SpecError as error:
        raise error.located(parsed.path, parsed.source) from None
    return values


def _with_array_source(parsed: S.Spec) -> S.Spec:
    """The spec with a placeholder data line if it has none: the arrays replace it anyway."""
    if parsed.data is not None:
        return parsed
    call = S.Call(span=WHOLE_SPEC, func=ARRAYS_SOURCE, func_span=WHOLE_SPEC)
    return parsed.model_copy(update={"data": S.SourceDecl(span=WHOLE_SPEC, call=call)})


def _arrays_dataset(X: np.ndarray, labels: np.ndarray | None, num_classes: int | None) -> Dataset:
    """All rows for training; an empty test split (evaluation then measures the training rows)."""
    x_train = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    y_train = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    return Dataset(
        name=ARRAYS_SOURCE,
        x_train=x_train,
        x_test=x_train[:0],
        y_train=y_train,
        y_test=None if y_train is None else y_train[:0],
        num_classes=num_classes,
    )
