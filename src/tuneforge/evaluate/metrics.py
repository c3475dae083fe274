"""Text metrics from the well-kept libraries: ROUGE-L (rouge-score), BLEU (sacrebleu)."""

import math

import sacrebleu
from rouge_score import rouge_scorer

_ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(predictions: list[str], references: list[str]) -> list[float]:
    """Per-example ROUGE-L F-measure, 0-100. An empty prediction or reference scores 0."""
    return [100 * _ROUGE.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU, 0-100."""
    return sacrebleu.corpus_bleu(predictions, [references]).score


def perplexity(mean_loss: float) -> float:
    return math.exp(mean_loss)
