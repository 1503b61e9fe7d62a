"""Model, data, engine, sampling, evaluation, checkpoint and tracking for one generation."""
