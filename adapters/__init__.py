"""Framework adapters for crfcore. ``adapters.tf`` holds the Keras 3 (TensorFlow) layer."""
