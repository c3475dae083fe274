"""Metrics of a head's predictions on the test split, each with a bootstrap 95% interval over examples:
classification (accuracy, macro / weighted F1, per-class precision / recall / F1, expected calibration
error, top-k accuracy, the confusion matrix; multi-label: exact match, micro / macro F1), regression
(RMSE, MAE, R^2, Spearman). scikit-learn computes them; the resampling is ours (sklearn has none)."""

import numpy as np

from tuneforge.evaluate.metrics import BOOTSTRAP_SAMPLES

CALIBRATION_BINS = 15


def classification_metrics(y: np.ndarray, probs: np.ndarray, names: list[str], seed: int = 0) -> dict:
    """y: class index per example; probs: examples x classes."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predicted = probs.argmax(1)

    def headline(rows: np.ndarray) -> dict[str, float]:
        out = {"accuracy": float((predicted[rows] == y[rows]).mean()),
               "macro_f1": _f1(y[rows], predicted[rows], len(names), "macro"),
               "weighted_f1": _f1(y[rows], predicted[rows], len(names), "weighted"),
               "ece": expected_calibration_error(probs[rows], y[rows])}
        if len(names) > 3:
            out["top3_accuracy"] = float(_top_k(probs[rows], y[rows], 3).mean())
        return out

    scores = _with_intervals(headline, len(y), seed)
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=range(len(names)),
                                                                     zero_division=0)
    return {"scores": scores,
            "per_class": {name: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
                                 "f1": round(float(f1[i]), 4), "support": int(support[i])}
                          for i, name in enumerate(names)},
            "confusion": confusion_matrix(y, predicted, labels=range(len(names))).tolist(),
            "calibration": reliability(probs, y)}


def multi_label_metrics(y: np.ndarray, probs: np.ndarray, names: list[str], threshold: float, seed: int = 0) -> dict:
    """y and probs: examples x classes (0 / 1 targets, independent probabilities)."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    predicted = (probs > threshold).astype(int)

    def headline(rows: np.ndarray) -> dict[str, float]:
        return {"exact_match": float((predicted[rows] == y[rows]).all(1).mean()),
                "micro_f1": float(f1_score(y[rows], predicted[rows], average="micro", zero_division=0)),
                "macro_f1": float(f1_score(y[rows], predicted[rows], average="macro", zero_division=0))}

    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, zero_division=0)
    return {"scores": _with_intervals(headline, len(y), seed),
            "per_class": {name: {"precision": round(float(precision[i]), 4), "recall": round(float(recall[i]), 4),
                                 "f1": round(float(f1[i]), 4), "support": int(support[i])}
                          for i, name in enumerate(names)}}


def regression_metrics(y: np.ndarray, predicted: np.ndarray, seed: int = 0) -> dict:
    from scipy.stats import spearmanr

    def headline(rows: np.ndarray) -> dict[str, float]:
        error = predicted[rows] - y[rows]
        spread = ((y[rows] - y[rows].mean()) ** 2).sum()
        rho = spearmanr(y[rows], predicted[rows]).statistic if np.ptp(predicted[rows]) > 0 else 0.0
        return {"rmse": float(np.sqrt((error ** 2).mean())), "mae": float(np.abs(error).mean()),
                "r2": float(1 - (error ** 2).sum() / spread) if spread > 0 else 0.0,
                "spearman": float(np.nan_to_num(rho))}

    return {"scores": _with_intervals(headline, len(y), seed)}


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """How far confidence is from accuracy: the example-weighted mean gap over confidence bins."""
    confidence, right = probs.max(1), probs.argmax(1) == y
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gaps = [abs(right[which == b].mean() - confidence[which == b].mean()) * (which == b).sum()
            for b in range(bins) if (which == b).any()]
    return float(sum(gaps) / len(y))


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per confidence bin: mean confidence, accuracy and examples (the reliability plot's points)."""
    confidence, right = probs.max(1), probs.argmax(1) == y
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return [{"confidence": round(float(confidence[which == b].mean()), 4),
             "accuracy": round(float(right[which == b].mean()), 4), "examples": int((which == b).sum())}
            for b in range(bins) if (which == b).any()]


def per_example_scores(task_problem: str, y: np.ndarray, outputs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """A score per example, higher is better, for paired comparisons: right (1) or wrong (0) for a class,
    the share of labels right for multi-label, minus the absolute error for regression."""
    if task_problem == "regression":
        return -np.abs(outputs - y)
    if task_problem == "multi_label_classification":
        return ((outputs > threshold) == (y > 0.5)).mean(1)
    return (outputs.argmax(1) == y).astype(float)


def _f1(y: np.ndarray, predicted: np.ndarray, classes: int, average: str) -> float:
    """sklearn's f1_score(labels=range(classes), zero_division=0) from one bincount: the bootstrap calls
    it thousands of times, where sklearn's checks take ~1 ms a call."""
    confusion = np.bincount(y * classes + predicted, minlength=classes * classes).reshape(classes, classes)
    support, guessed = confusion.sum(1), confusion.sum(0)
    f1 = np.divide(2 * np.diag(confusion), support + guessed, out=np.zeros(classes), where=support + guessed > 0)
    return float(f1.mean() if average == "macro" else (f1 * support).sum() / max(support.sum(), 1))


def _top_k(probs: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    return (np.argsort(-probs, axis=1)[:, :k] == y[:, None]).any(1)


def _with_intervals(headline, n: int, seed: int, samples: int = BOOTSTRAP_SAMPLES) -> dict[str, dict]:
    """Each headline metric on all examples, with the 2.5 / 97.5 percentiles over resampled examples."""
    full = headline(np.arange(n))
    picks = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    resampled = [headline(rows) for rows in picks]
    out = {}
    for name, value in full.items():
        low, high = np.percentile([r[name] for r in resampled], [2.5, 97.5])
        out[name] = {"value": round(value, 4), "low": round(float(low), 4), "high": round(float(high), 4)}
    return out
