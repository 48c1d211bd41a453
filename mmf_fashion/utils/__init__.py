"""Small helpers shared by the models and modules (no MMF registrations here)."""
