"""EnergyEstimator: a spec as a scikit-learn estimator (hyper-parameters, fit, grid search, pipelines)."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline

from energydsl.errors import SpecError, UserError
from energydsl.sklearn import EnergyEstimator, EstimatorError

# No data line: the arrays given to fit are the data.  `lam2` depends on `lam`.
SPARSE = """
const lam = 0.1
const lam2 = 2 * lam
const steps = 60
input x[8]
latent z[12]
param W[8, 12] init samples(x) constrain col_norm == 1
energy
  recon  : 0.5 * sqerr(x, W @ z)
  sparse : lam * l1(z)
infer z by fista(steps = steps, tol = 1e-5)
train
  optimizer sgd(lr = 0.05, momentum = 0.9)
  batch 40
  epochs 2
"""

# DrSAE in miniature: a recurrent encoder with a classifier on its codes.
CLASSIFIER = """
const lam = 0.02
input x[6]
label y : 3 classes
latent z[12] >= 0
param D[6, 12]  init samples(x) constrain col_norm <= 1
param E[12, 6]  init 0.5 * D.T
param S[12, 12] init I - 0.5 * D.T @ D
param b[12]     init 0.01
param C[3, 12]  init normal(0.5) constrain row_norm <= 5
encoder z = recurrent(2) { relu(E @ x + S @ z - b) }
energy
  recon  : 0.5 * sqerr(x, D @ z)
  sparse : lam * l1(z)
  class  : xent(C @ normalize(z), y)
infer z by encoder
train
  optimizer adam(lr = 2e-2)
  batch 20
  epochs 20
"""


def gaussian_classes(count: int, dim: int, classes: int, seed: int, spread: float = 3.0):
    """Well separated Gaussian clusters: labels 0..classes-1 and the samples."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * spread
    labels = rng.integers(0, classes, size=count)
    return centres[labels] + rng.normal(size=(count, dim)), labels


@pytest.fixture(scope="module")
def unlabelled():
    return np.random.default_rng(0).normal(size=(120, 8))


@pytest.fixture(scope="module")
def fitted(unlabelled):
    return EnergyEstimator(SPARSE, seed=3, lam=0.2).fit(unlabelled)


# ---------------------------------------------------------------- hyper-parameters


def test_the_spec_constants_are_parameters_with_their_values():
    params = EnergyEstimator(SPARSE, lam=0.3).get_params()
    # lam as given, the others as the spec computes them
    assert params == {"spec": SPARSE, "seed": None, "lam": 0.3, "lam2": 0.2, "steps": 60.0}


def test_set_params_and_clone_round_trip_the_constants():
    estimator = EnergyEstimator(SPARSE, seed=5)
    assert estimator.set_params(lam=0.5, seed=7) is estimator
    copy = clone(estimator)
    assert copy is not estimator
    assert copy.get_params() == estimator.get_params()
    assert copy.get_params()["lam"] == 0.5 and copy.seed == 7


def test_an_unknown_constant_is_refused_with_a_suggestion():
    with pytest.raises(EstimatorError) as caught:
        EnergyEstimator(SPARSE).set_params(lamda=0.5)
    assert str(caught.value) == (
        "EnergyEstimator: the spec has no constant 'lamda' (did you mean 'lam'?); its constants: lam, lam2, steps"
    )
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)


def test_an_unknown_constant_given_to_the_constructor_fails_in_fit(unlabelled):
    with pytest.raises(EstimatorError, match=r"has no constant 'lamda' \(did you mean 'lam'\?\)"):
        EnergyEstimator(SPARSE, lamda=0.5).fit(unlabelled)


def test_pipeline_reaches_the_constants_by_step_name():
    pipeline = Pipeline([("code", EnergyEstimator(SPARSE)), ("clf", LogisticRegression())])
    assert pipeline.get_params()["code__lam2"] == 0.2
    pipeline.set_params(code__lam=0.4)
    assert pipeline.named_steps["code"].get_params()["lam"] == 0.4


def test_a_spec_file_works_and_the_arrays_replace_its_data_line(tmp_path):
    # The spec's data (16 values per sample) is not read: 'input x' takes 5 from the arrays.
    path = tmp_path / "sc.energy"
    path.write_text(SPARSE.replace("input x[8]", "data synthetic(dim = 16)\ninput x").replace("[8, 12]", "[5, 12]"))
    X = np.random.default_rng(1).normal(size=(40, 5))
    estimator = EnergyEstimator(str(path)).fit(X)
    assert estimator.n_features_in_ == 5 and estimator.transform(X).shape == (40, 12)
    assert estimator.model_.program.sample_shape == (5,)


def test_a_spec_error_is_reported_against_the_spec(unlabelled):
    with pytest.raises(SpecError, match="input 'x' has 8 values per sample, but the data gives samples of shape"):
        EnergyEstimator(SPARSE).fit(unlabelled[:, :5])


# ---------------------------------------------------------------- fit, transform, score


def test_fit_sets_the_fitted_attributes(fitted, unlabelled):
    assert fitted.n_features_in_ == 8
    assert fitted.constants_ == {"lam": 0.2, "lam2": 0.4, "steps": 60.0}
    assert [m["epoch"] for m in fitted.history_] == [1, 2]
    assert fitted.model_.program.constants["lam"] == 0.2
    assert not hasattr(fitted, "classes_")


def test_transform_is_the_models_inference(fitted, unlabelled):
    codes = fitted.transform(unlabelled)
    assert codes.shape == (120, 12) and codes.dtype == np.float32
    expected = fitted.model_.infer(torch.as_tensor(unlabelled, dtype=torch.float32))
    np.testing.assert_array_equal(codes, expected.numpy())
    assert 0 < np.count_nonzero(codes) < codes.size  # sparse, not empty


def test_score_is_minus_the_mean_energy(fitted, unlabelled):
    # The energy written out by hand from the spec: 0.5 ||x - W z||^2 + lam ||z||_1.
    W = fitted.model_.params["W"].detach().double().numpy()
    z = fitted.transform(unlabelled).astype(np.float64)
    x = unlabelled.astype(np.float32).astype(np.float64)
    energy = 0.5 * ((x - z @ W.T) ** 2).sum(axis=1) + 0.2 * np.abs(z).sum(axis=1)
    assert fitted.score(unlabelled) == pytest.approx(-energy.mean(), rel=1e-5)


def test_a_clone_refits_to_the_same_codes(fitted, unlabelled):
    refitted = clone(fitted).fit(unlabelled)
    np.testing.assert_array_equal(refitted.transform(unlabelled), fitted.transform(unlabelled))
    other_seed = clone(fitted).set_params(seed=4).fit(unlabelled)
    assert not np.array_equal(other_seed.transform(unlabelled), fitted.transform(unlabelled))


def test_transform_checks_the_number_of_features(fitted, unlabelled):
    with pytest.raises(EstimatorError, match="X has 5 features, but EnergyEstimator was fitted on 8 features"):
        fitted.transform(unlabelled[:, :5])


def test_feature_names_are_one_per_latent_unit(fitted):
    assert list(fitted.get_feature_names_out()) == [f"energyestimator{i}" for i in range(12)]


@pytest.mark.parametrize("method", ["transform", "predict", "score"])
def test_using_an_unfitted_estimator_raises_not_fitted(method, unlabelled):
    with pytest.raises(NotFittedError):
        getattr(EnergyEstimator(SPARSE), method)(unlabelled)


def test_predict_needs_a_classifier_term(fitted, unlabelled):
    with pytest.raises(EstimatorError, match=r"has no classifier term \(xent\), so it cannot predict"):
        fitted.predict(unlabelled)


# ---------------------------------------------------------------- model selection


def test_grid_search_prefers_a_sensible_lam_to_one_that_zeroes_every_code(unlabelled):
    search = GridSearchCV(EnergyEstimator(SPARSE, steps=30), {"lam": [50.0, 0.1]}, cv=2).fit(unlabelled)
    assert search.best_params_ == {"lam": 0.1}
    # lam = 50 gives z = 0, so the energy is 0.5 ||x||^2: the score is its mean per held-out fold.
    x = unlabelled.astype(np.float32).astype(np.float64)
    folds = [-0.5 * (half**2).sum(axis=1).mean() for half in (x[60:], x[:60])]
    assert search.cv_results_["split0_test_score"][0] == pytest.approx(folds[1], rel=1e-5)
    assert search.cv_results_["split1_test_score"][0] == pytest.approx(folds[0], rel=1e-5)
    assert search.best_estimator_.get_params()["lam"] == 0.1


def test_pipeline_with_logistic_regression_on_the_codes():
    X, y = gaussian_classes(160, 8, classes=2, seed=2)
    pipeline = Pipeline([("code", EnergyEstimator(SPARSE, steps=30)), ("clf", LogisticRegression())])
    search = GridSearchCV(pipeline, {"code__lam": [50.0, 0.1]}, cv=KFold(2)).fit(X[:120], y[:120])
    assert search.best_params_ == {"code__lam": 0.1}
    # lam = 50 zeroes every code, so the classifier can only predict its training fold's majority class.
    for split, (train, test) in enumerate([(y[60:120], y[:60]), (y[:60], y[60:120])]):
        majority = np.bincount(train).argmax()
        assert search.cv_results_[f"split{split}_test_score"][0] == np.mean(test == majority)
    assert search.cv_results_["mean_test_score"][1] >= 0.9
    assert search.score(X[120:], y[120:]) >= 0.9


# ---------------------------------------------------------------- a spec that classifies


@pytest.fixture(scope="module")
def classes():
    X, labels = gaussian_classes(180, 6, classes=3, seed=4)
    names = np.array(["cat", "dog", "eel"])[labels]  # labels need not be integers
    return X, names


@pytest.fixture(scope="module")
def classifier(classes):
    X, y = classes
    return EnergyEstimator(CLASSIFIER, seed=0).fit(X[:120], y[:120])


def test_predict_beats_chance_and_score_is_its_accuracy(classifier, classes):
    X, y = classes
    assert list(classifier.classes_) == ["cat", "dog", "eel"]
    predicted = classifier.predict(X[120:])
    assert set(predicted) <= {"cat", "dog", "eel"}
    accuracy = np.mean(predicted == y[120:])
    assert accuracy >= 0.9  # chance is about 1/3
    assert classifier.score(X[120:], y[120:]) == accuracy


def test_predict_is_the_models_prediction_mapped_to_the_labels(classifier, classes):
    X, _ = classes
    indices = classifier.model_.predict(torch.as_tensor(X, dtype=torch.float32)).numpy()
    np.testing.assert_array_equal(classifier.predict(X), classifier.classes_[indices])


def test_a_spec_with_a_label_needs_y(classes):
    with pytest.raises(EstimatorError, match="the spec declares label 'y', so fit needs y"):
        EnergyEstimator(CLASSIFIER).fit(classes[0])
