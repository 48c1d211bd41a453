"""Plain PyTorch building blocks (encoders, heads, losses). Nothing here imports MMF."""
