"""Registered MMF losses (thin wrappers around mmf_fashion.modules.losses)."""
