"""Run comparison over the MLflow store: selection, table, plots, HTML report, and the `compare`/`ui` commands
(`mimo_ds.compare.cli`)."""
