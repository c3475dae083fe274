"""Generation with a run's model: batched greedy answers for evaluation, one-off and chat replies."""
