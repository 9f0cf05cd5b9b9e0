"""`llavakit ablate`: the papers' design findings rerun at toy scale (studies, runs, report, command)."""
