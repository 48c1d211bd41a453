"""Retrieval metrics: pure ranking functions (ranking.py), two-stage re-ranking
(rerank.py) and the MMF metric classes registered under r@k_* (registered.py)."""
