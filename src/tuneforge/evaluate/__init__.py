"""Stage 4: is the tuned model better than the base? Perplexity, ROUGE-L, BLEU on the test split."""
