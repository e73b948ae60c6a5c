"""The wire format, below every other layer: frames, events, close codes, input rules
(:mod:`.protocol`) and origins (:mod:`.origin`). Imports nothing of roomhub."""
