"""Process options that must be set before TensorFlow is imported by any test."""

from daemon.app import configure_tensorflow

configure_tensorflow()
