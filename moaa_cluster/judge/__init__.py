"""The MoA judge: prompts (paper K.2-K.4), output parsing, and candidate ranking."""
