"""Features, forecasters, backtests, predicted profiles and the MLflow adapter."""
