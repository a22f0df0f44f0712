"""The one-pass processor: identity, fold and tags of a raw micro-batch in one step."""
