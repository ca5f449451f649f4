"""Analysis of stored results: findings, scaling fits and run comparisons. Pure pandas, no torch."""
