"""Analysis of stored results: findings and scaling fits (run comparisons: txbench.gate). Pure pandas, no torch."""
