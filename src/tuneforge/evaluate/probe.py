"""The baselines a tuned head is measured against: the majority class (the training split's class
frequencies, or its mean for regression) and a linear probe, a linear model trained on the frozen
pre-trained encoder's sentence embeddings (what the pre-trained model knows without fine-tuning)."""

import numpy as np

from tuneforge.tasks.labelled import MULTI, REGRESSION


def majority(problem: str, y_train: np.ndarray, n_test: int, classes: int) -> np.ndarray:
    """The same output for every test example: the training prior (or mean)."""
    if problem == REGRESSION:
        return np.full(n_test, y_train.mean())
    prior = y_train.mean(0) if problem == MULTI else np.bincount(y_train, minlength=classes) / len(y_train)
    return np.tile(prior, (n_test, 1))


def linear_probe(problem: str, train_features: np.ndarray, y_train: np.ndarray, test_features: np.ndarray,
                 classes: int, seed: int = 0) -> np.ndarray:
    """Standardised features, then logistic regression (one per class for multi-label) or ridge
    regression with its penalty chosen by cross-validation."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if problem == REGRESSION:
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        return model.fit(train_features, y_train).predict(test_features)
    logistic = LogisticRegression(max_iter=2000, random_state=seed)
    model = make_pipeline(StandardScaler(), OneVsRestClassifier(logistic) if problem == MULTI else logistic)
    model.fit(train_features, y_train)
    probs = model.predict_proba(test_features)
    if problem == MULTI:
        return probs
    out = np.zeros((len(test_features), classes))  # classes the training split lacks get probability 0
    out[:, model.classes_] = probs
    return out
