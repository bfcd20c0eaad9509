"""fsq-ref: Finite Scalar Quantization (Mentzer et al., ICLR 2024) in JAX + Equinox."""
