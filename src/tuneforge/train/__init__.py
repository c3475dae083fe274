"""Stage 3: tokens become gradients. setup -> load -> fit -> save, one readable loop."""
