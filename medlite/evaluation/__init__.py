"""Evaluation: one evaluator (predictions -> per-sample table -> metrics with subject
bootstrap intervals -> metrics.json and report) and evaluation of runs on other data."""
