"""tapper: TAP-PER personalization (user-state + temporal attentive query prefixes) for any HF causal LM."""

__version__ = "0.1.0"
