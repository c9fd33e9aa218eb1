"""hrm.data.validation: checking the data: schemas, cross-file invariants, compliance, audit, consistency, the validate stage."""
