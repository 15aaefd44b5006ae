"""lstmd: a streaming online-learning daemon (Kafka in, keyed stateful LSTM, predictions out)."""

__version__ = "0.1.0"
