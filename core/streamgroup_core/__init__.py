"""Streamgroup's core: what the sidecar, the operator and the CLI share, defined once.

The StreamGroup's typed spec and its defaults (:mod:`.spec`), connecting to Redis (:mod:`.connecting`),
the consumer-group commands both the sidecar and the operator issue (:mod:`.groups`), dead-letter keys
and fields (:mod:`.deadletters`), entry IDs and times (:mod:`.ids`), durations (:mod:`.durations`),
keeping secrets out of text (:mod:`.redaction`), JSON logs (:mod:`.logs`) and the health and metrics
endpoint (:mod:`.serving`). It imports none of the parts that use it; import-linter checks that.
"""

__version__ = "0.1.0"
