"""Building blocks of the decoder: norms, MLPs, embeddings, positions, self-attention."""
