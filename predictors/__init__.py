"""Cheap models of costly measurements: latency lookup tables, learned latency and accuracy
predictors. Every predictor works on batches of canonical encodings with numpy."""
