"""head.init: probe - start a new head from a linear probe (LP-FT: Kumar et al., "Fine-Tuning can Distort
Pretrained Features and Underperform Out-of-Distribution", 2022): the features the head reads are
computed once by the pre-trained model for the training rows, a logistic regression (ridge for
regression) is fitted on them, and its weights become the head's before fine-tuning starts, so the
first steps refine a good head instead of pulling the encoder towards a random one."""

import numpy as np
import torch

from tuneforge.errors import UserError
from tuneforge.methods.model_parts import final_linear
from tuneforge.tasks.labelled import MULTI, REGRESSION

ROWS_PER_BATCH = 32


@torch.no_grad()
def init_head_from_probe(model, train: list, collate, pad_id: int, device: str, autocast, seed: int = 0) -> dict:
    """Fit the probe on the head's input features and copy it into the head; returns what it fitted.
    `autocast` is the training's (frozen weights may be stored in its dtype)."""
    try:
        head = final_linear(model)
    except UserError as e:
        raise UserError(f"head.init: probe: {e} Set head.init: random.") from None
    features = []
    hook = head.register_forward_hook(lambda _module, inputs, _out: features.append(inputs[0].float().cpu()))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(train), ROWS_PER_BATCH):
            batch = collate(train[i:i + ROWS_PER_BATCH], pad_id)
            batch.pop("labels")
            with autocast():
                model(**{k: v.to(device) for k, v in batch.items()})
    finally:
        hook.remove()
        model.train(was_training)
    x = torch.cat(features).numpy()
    problem = model.config.problem_type
    weight, bias, score = _fit(problem, x, np.array([e.target for e in train]), seed)
    head.weight.copy_(torch.from_numpy(weight).to(head.weight))
    head.bias.copy_(torch.from_numpy(bias).to(head.bias))
    return {"rows": len(train), "features": x.shape[1], "train_score": round(score, 4)}


def _fit(problem: str, x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression, Ridge

    if problem == REGRESSION:
        ridge = Ridge(alpha=1.0).fit(x, y)
        return ridge.coef_[None, :], np.atleast_1d(ridge.intercept_), ridge.score(x, y)
    if problem == MULTI:
        fits = [LogisticRegression(max_iter=2000, random_state=seed).fit(x, y[:, j]) for j in range(y.shape[1])]
        return (np.concatenate([f.coef_ for f in fits]), np.concatenate([f.intercept_ for f in fits]),
                float(np.mean([f.score(x, y[:, j]) for j, f in enumerate(fits)])))
    fit = LogisticRegression(max_iter=2000, random_state=seed).fit(x, y)
    if fit.coef_.shape[0] == 1:  # two classes: one logit w.x + b, the same softmax as [-(w.x + b)/2, (w.x + b)/2]
        return np.concatenate([-fit.coef_, fit.coef_]) / 2, np.concatenate([-fit.intercept_, fit.intercept_]) / 2, \
            fit.score(x, y)
    return fit.coef_, fit.intercept_, fit.score(x, y)
