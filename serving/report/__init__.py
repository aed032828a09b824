"""serving.report.build."""
