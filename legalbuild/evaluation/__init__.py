"""Evaluation of a build: rows (`rows`), answers from models (`generate`), the regex baseline
(`baseline`), figures with bootstrap intervals (`scoring`) and the comparison table (`table`).
`legalbuild.stages.eval` runs them in order."""
