"""Commands that read a finished run: attack, explain, cross-validation, sample, and bench (which times one)."""
