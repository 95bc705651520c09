"""Distribution: recall, ranking, capacity-aware assignment, the claim pool, search (issue #6)."""
