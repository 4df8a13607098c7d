"""Low-rank factorization: truncated SVD of Linear layers (plain and activation-aware), Tucker-2
and CP decompositions of convolutions, and LoRA adapters that merge back into the weights."""
