"""Trainers registered into MMF (fashion_trainer)."""
