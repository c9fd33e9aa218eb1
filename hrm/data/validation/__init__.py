"""hrm.data.validation: checking the data: the checks and the score (compliance), the validate stage (validate)."""
