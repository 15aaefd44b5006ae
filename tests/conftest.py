"""Process options that must be set before TensorFlow is imported by any test."""

from daemon.model.environment import configure_tensorflow

configure_tensorflow()
